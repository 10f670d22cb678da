"""The Microscope's data: every channel of a layer with its visualization and its top dataset exemplars.

* :func:`top_exemplars` scans a set of images once per batch and keeps, for *every* channel of each
  layer at once, the ``k`` images where it is most active: by its spatial maximum, with the position
  of that maximum and the input box its receptive field covers there (:mod:`.receptive`, computed
  from the network's geometry), for crops of photos; or by its spatial mean, for whole small images
  (Fashion-MNIST test images, as the feature-visualization study's exemplars). Each image counts once
  per channel (its best position), so one photo cannot fill a channel's strip.
* :func:`exemplar_crops` cuts those boxes out of the images (grey beyond the image's border, where a
  deep layer's field reaches past it) at one tile size.
* :func:`render_channels` renders every channel of a layer with the report's default regularisation,
  in batches (one image per channel).

Both read the tensor feature visualization maximises for the layer (:func:`objectives.pre_activation`),
so a channel's exemplars and its visualization describe the same thing. :func:`unit_anchor` is the one
spelling of a unit's id (``blocks.3-c17``) that the book's anchors and the semantic dictionary share.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import XaiError
from ..layers import fast_layout
from . import objectives as O
from . import param as P
from . import transforms as T
from .receptive import ReceptiveField, crop, receptive_fields
from .render import DEFAULT_LR, Rendering, activations, render_chunked

REDUCTIONS = ("max", "mean")


def unit_anchor(layer: str, channel: int) -> str:
    """A unit's id in links and anchors: ``"blocks.3-c17"``."""
    return f"{layer}-c{int(channel)}"


@dataclass
class Exemplars:
    layer: str
    objective_layer: str
    reduce: str  # "max" (with positions and boxes) or "mean"
    indices: torch.Tensor  # [C, k] image indices, most active first
    values: torch.Tensor  # [C, k]
    positions: torch.Tensor | None  # [C, k, 2] (row, column) on the layer's map, for "max"
    boxes: torch.Tensor | None  # [C, k, 4] (top, left, bottom, right) input pixels, inclusive, unclipped
    field: ReceptiveField | None

    @property
    def channels(self) -> int:
        return self.indices.shape[0]

    def to_json(self) -> dict:
        out = {"layer": self.layer, "objective_layer": self.objective_layer, "reduce": self.reduce,
               "channels": self.channels, "indices": self.indices.tolist(),
               "values": [[round(float(v), 5) for v in row] for row in self.values]}
        if self.positions is not None:
            out["positions"] = self.positions.tolist()
            out["boxes"] = self.boxes.tolist()
            out["receptive_field"] = {"size": list(self.field.size), "jump": list(self.field.jump)}
        return out


def top_exemplars(model: nn.Module, images: torch.Tensor, layers: Sequence[str], *, k: int = 9, reduce: str = "max",
                  batch: int = 32) -> dict[str, Exemplars]:
    """For every channel of each of ``layers``, the ``k`` of ``images`` (``[N, C, H, W]`` at the model's
    input size) where it is most active (see the module docstring)."""
    if reduce not in REDUCTIONS:
        raise XaiError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    n = images.shape[0]
    if not 1 <= k <= n:
        raise XaiError(f"k must be between 1 and the number of images ({n}), got {k}")
    targets = {layer: O.pre_activation(model, layer) for layer in layers}
    best: dict[str, list[torch.Tensor]] = {t: [] for t in targets.values()}
    where: dict[str, list[torch.Tensor]] = {t: [] for t in targets.values()}
    shapes: dict[str, tuple[int, int]] = {}
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with torch.no_grad(), fast_layout(model):
        for chunk in images.split(batch):
            acts = activations(model, chunk.to(device), list(targets.values()))
            for t in targets.values():
                a = acts.layer(t).float()
                shapes[t] = tuple(a.shape[2:])
                if reduce == "mean":
                    best[t].append(a.mean((2, 3)).cpu())
                else:
                    v, i = a.flatten(2).max(2)
                    best[t].append(v.cpu())
                    where[t].append(i.cpu())
    fields = receptive_fields(model, list(dict.fromkeys(targets.values())), tuple(images.shape[1:])) \
        if reduce == "max" else {}
    out = {}
    for layer, t in targets.items():
        vals = torch.cat(best[t])  # [N, C]
        top_v, top_i = vals.topk(k, dim=0)  # [k, C]
        ex = Exemplars(layer, t, reduce, top_i.T.contiguous(), top_v.T.contiguous(), None, None, None)
        if reduce == "max":
            flat = torch.cat(where[t]).gather(0, top_i).T  # [C, k] flat position of each image's maximum
            w = shapes[t][1]
            pos = torch.stack([flat // w, flat % w], -1)
            f = fields[t]
            boxes = torch.tensor([[f.box(int(r), int(c), clip=False) for r, c in row] for row in pos.tolist()])
            ex.positions, ex.boxes, ex.field = pos, boxes, f
        out[layer] = ex
    return out


def inside(box: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """The square of ``box``'s side (at most the image's shorter side) centred on it and moved inside the
    ``h`` x ``w`` image: a deep layer's field, larger than the photo, becomes the whole photo rather than a
    small photo in a grey frame."""
    top, left, bottom, right = box
    side = min(bottom - top + 1, right - left + 1, h, w)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    t = int(min(max(round(cy - (side - 1) / 2), 0), h - side))
    l_ = int(min(max(round(cx - (side - 1) / 2), 0), w - side))
    return t, l_, t + side - 1, l_ + side - 1


def exemplar_crops(images: torch.Tensor, exemplars: Exemplars, size: int, channels: Sequence[int] | None = None,
                   fill: float = 0.5, *, within: bool = False, mark: bool = False) -> torch.Tensor:
    """``[len(channels), k, C, size, size]``: each exemplar's receptive-field box cut from its image
    (``reduce="max"``); for ``"mean"`` exemplars, the whole images resized.

    ``within``: the box squared inside the image (:func:`inside`) instead of padded with ``fill``.
    ``mark``: the cell of the maximum (one stride of the layer, ``jump`` pixels, around the position's
    centre) outlined in yellow, so that a crop as large as the photo still says where the unit fired."""
    chans = list(range(exemplars.channels)) if channels is None else list(channels)
    idx = exemplars.indices[chans]  # [n, k]
    if exemplars.boxes is None:
        flat = images[idx.flatten()]
        flat = torch.nn.functional.interpolate(flat.float(), size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False) if tuple(flat.shape[2:]) != (size, size) else flat
        return flat.view(len(chans), idx.shape[1], *flat.shape[1:])
    h, w = images.shape[2:]
    boxes = exemplars.boxes[chans].reshape(-1, 4)
    if within:
        boxes = torch.tensor([inside(tuple(b), h, w) for b in boxes.tolist()]).reshape(-1, 4)
    tiles = crop(images[idx.flatten()], boxes, size, fill=fill)
    if mark:
        f = exemplars.field
        for tile, box, (r, c) in zip(tiles, boxes.tolist(), exemplars.positions[chans].reshape(-1, 2).tolist()):
            cy, cx = f.centre(r, c)
            scale = size / (box[2] - box[0] + 1)
            half = max(f.jump[0], 2) / 2
            y0, y1 = (int(round((v - box[0]) * scale)) for v in (cy - half, cy + half))
            x0, x1 = (int(round((v - box[1]) * scale)) for v in (cx - half, cx + half))
            y0, x0 = max(0, min(size - 2, y0)), max(0, min(size - 2, x0))
            y1, x1 = max(y0 + 1, min(size - 1, y1)), max(x0 + 1, min(size - 1, x1))
            colour = torch.tensor([1.0, 0.85, 0.0][:tile.shape[0]] if tile.shape[0] == 3 else [1.0])[:, None]
            tile[:, y0, x0:x1 + 1] = colour
            tile[:, y1, x0:x1 + 1] = colour
            tile[:, y0:y1 + 1, x0] = colour
            tile[:, y0:y1 + 1, x1] = colour
    return tiles.view(len(chans), idx.shape[1], *tiles.shape[1:])


def render_channels(model: nn.Module, layer: str, channels: Sequence[int] | None = None, *, size: int = 128,
                    steps: int = 128, seed: int = 0, batch: int | None = 64, channels_in: int = 3,
                    lr: float = DEFAULT_LR) -> Rendering:
    """Every channel (or the given ones) of ``layer``, one image each, channel objective on the tensor
    feature visualization maximises, the report's default regularisation, seeds ``seed + channel``."""
    target = O.pre_activation(model, layer)
    if channels is None:
        p = next(model.parameters(), None)
        with torch.no_grad():
            probe = torch.zeros(1, channels_in, size, size, device=p.device if p is not None else "cpu")
            channels = list(range(activations(model, probe, [target]).layer(target).shape[1]))
    chans = list(channels)
    seeds = [seed + c for c in chans]
    return render_chunked(
        model, lambda idx: O.channel(target, [chans[i] for i in idx]),
        lambda idx: P.FFTParam(len(idx), channels_in, size, seed=[seeds[i] for i in idx]),
        T.default_transforms(size), steps, seeds, batch, lr=lr)
