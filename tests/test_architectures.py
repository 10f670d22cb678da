"""The architecture matrix: every attribution method, and one feature-visualization objective per layer
of interest, on twelve architectures (timm ResNet, VGG, DenseNet, Inception-v3, MobileNetV3,
EfficientNet, ConvNeXt, DeiT, Swin, MaxViT; torchvision VGG and ResNet).

Each model is built with random weights (narrowed where its constructor allows, at 64-96 px), saved to
a file and loaded back through ``weights=``, as a user's checkpoint would be; the loaded model must give
exactly the outputs of the one that was saved. Every (architecture, method) then has one of two
outcomes: a map of the method's shape, finite and not constant (a CAM read on its layer's own grid), or
a typed refusal (``NotApplicableError``) with its reason. The refusals expected are the guided methods
(and LRP, DeepLIFT) on models whose activations are not rectifiers, by the activation that rules them
out, and the per-architecture ``also_refuses`` (documented preconditions); anything else is a failure. The table of outcomes goes to ``test-artifacts/architecture_matrix.{json,md}``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai import attribution as A
from xai import models
from xai.data import images
from xai.errors import NotApplicableError, UnknownNameError
from xai.featvis import objectives as O
from xai.featvis import param as P
from xai.featvis import render
from xai.layers import NCHW, NHWC, TOKENS

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
NUM_CLASSES = 5  # a small head; the loader reads the count from the weights file
GUIDED = ("guided_backprop", "deconvolution", "guided_grad_cam")
# Enough of each method to exercise its whole code path, little enough for the matrix to stay fast.
FAST = {"smoothgrad": dict(samples=2), "smoothgrad_sq": dict(samples=2), "vargrad": dict(samples=2),
        "integrated_gradients": dict(steps=2), "occlusion": dict(window=0.5, stride=0.5),
        "score_cam": dict(max_channels=4), "gradient_shap": dict(samples=2), "rise": dict(masks=8, grid=4),
        "feature_ablation": dict(segments=8), "kernel_shap": dict(segments=8, samples=16),
        "lime": dict(segments=8, samples=16)}


@dataclass(frozen=True)
class Case:
    spec: str
    build: dict = field(default_factory=dict)  # constructor options; the loader gets the same (but the head)
    size: int = 64  # input side (px)
    refuses: str | None = None  # the activation for which the rectifier-only methods refuse
    file: str = "safetensors"  # or "pth": a state dict written by torch.save
    # Refusals for other reasons than an activation, each a documented precondition of its method: LRP
    # and DeepLIFT refuse a forward pass with operations outside their rules (a functional residual add
    # or pooling, a module run twice, a batch norm after a concatenation); FullGrad one whose bias terms
    # do not add up to the logit (activations that are not piecewise linear).
    also_refuses: tuple[str, ...] = ()


LRP = ("lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box")
DEEPLIFT = ("deeplift", "deeplift_shap")
# Defined for rectifier networks only: refused with the activation that rules them out.
RECTIFIER_ONLY = (*GUIDED, *LRP, *DEEPLIFT)


CASES = {
    "timm resnet": Case("timm/resnet10t", dict(channels=(16, 32, 64, 128), stem_width=16), also_refuses=LRP),
    "timm vgg": Case("timm/vgg11", dict(mlp_ratio=0.01), size=32, file="pth", also_refuses=LRP),  # its widths are fixed: small input
    "timm densenet": Case("timm/densenet121", dict(growth_rate=8, block_config=(2, 2, 2, 2)), also_refuses=LRP),
    "timm inception_v3": Case("timm/inception_v3", size=80, file="pth", also_refuses=(*LRP, *DEEPLIFT)),  # 75 px is its least
    "timm mobilenetv3": Case("timm/mobilenetv3_small_050", refuses="Hardswish", also_refuses=("fullgrad",)),
    "timm efficientnet": Case("timm/efficientnet_b0", refuses="SiLU", also_refuses=("fullgrad",)),
    "timm convnext": Case("timm/convnext_atto", dict(conv_mlp=False), refuses="GELU",  # GELU is functional there
                           also_refuses=("fullgrad", *LRP, *DEEPLIFT)),  # channels-last MLPs
    "timm deit": Case("timm/deit_tiny_patch16_224", dict(img_size=64, depth=4), refuses="GELU",
                       also_refuses=("fullgrad",)),
    "timm swin": Case("timm/swin_tiny_patch4_window7_224", dict(img_size=64, window_size=2, depths=(1, 1, 1, 1),
                                                               embed_dim=24, num_heads=(1, 2, 4, 8)), refuses="GELU",
                       also_refuses=("fullgrad",)),
    # its first non-rectifier is the SiLU of a squeeze-excitation gate, before any GELU
    "timm maxvit": Case("timm/maxvit_pico_rw_256", dict(img_size=64, embed_dim=(32, 32, 64, 64), depths=(1, 1, 1, 1),
                                                       stem_width=(16, 32)), refuses="SiLU",
                         also_refuses=("fullgrad",)),
    "torchvision vgg": Case("test_torchvision_vgg11"),  # narrowed: registered below, as a user's model
    "torchvision resnet": Case("torchvision/resnet18", file="pth", also_refuses=DEEPLIFT),  # its ReLUs run twice
}


def random_model(case: Case) -> nn.Module:
    torch.manual_seed(0)
    source, _, name = case.spec.partition("/")
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **case.build).eval()
    if source == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None, num_classes=NUM_CLASSES, **case.build).eval()
    return narrow_torchvision_vgg().eval()


def narrow_torchvision_vgg() -> nn.Module:
    """torchvision's VGG-11 (its ``VGG`` class and ``make_layers``) with an eighth of the widths and a
    small classifier: the builder's own holds 120 M parameters, which would make a 500 MB file."""
    from torchvision.models.vgg import VGG, make_layers

    model = VGG(make_layers([16, "M", 32, "M", 64, 64, "M", 64, 64, "M", 64, 64, "M"]), num_classes=NUM_CLASSES)
    model.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, NUM_CLASSES))
    return model


def user_vgg(weights: str | None = None) -> models.ModelEntry:
    """A user's registered model function: the network, its own checkpoint, torchvision's preprocessing."""
    from torchvision.models import VGG11_Weights

    from xai.models.weights import load_into, read_state_dict

    net = narrow_torchvision_vgg()
    if weights is not None:
        load_into(net, read_state_dict(weights), weights)
    t = VGG11_Weights.DEFAULT.transforms()
    return models.from_module("test_torchvision_vgg11", net, input_size=(3, 64, 64), mean=t.mean, std=t.std)


def save(model: nn.Module, path: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def registered_vgg():
    models.register("test_torchvision_vgg11")(user_vgg)
    yield
    models._REGISTRY.pop("test_torchvision_vgg11", None)


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    return [images.load("chelsea")]  # one photo: the batch behaviour of every method is tested elsewhere


@pytest.fixture(scope="module")
def table():
    rows: dict = {}
    start = time.perf_counter()
    yield rows
    write_table(rows, time.perf_counter() - start)


def load_case(case: Case, tmp: Path) -> tuple[nn.Module, models.ModelEntry]:
    original = random_model(case)
    path = save(original, tmp / f"weights.{case.file}")
    entry = models.load(case.spec, weights=str(path), device="cpu", **case.build)
    size = (entry.input_size[0], case.size, case.size)
    if "img_size" not in case.build and entry.input_size != size:
        # a fully convolutional net whose data config says 224 px: run it at the matrix's size
        entry = dataclasses.replace(entry, input_size=size)
    return original, entry


@pytest.mark.parametrize("arch", list(CASES))
def test_every_method_on_every_architecture(arch, tmp_path, photos, table, registered_vgg):
    case = CASES[arch]
    t0 = time.perf_counter()
    original, entry = load_case(case, tmp_path)
    row = table.setdefault(arch, {"spec": case.spec, "input": list(entry.input_size), "methods": {}})
    assert entry.num_classes == NUM_CLASSES  # the head, sized from the file
    x = torch.stack([entry.prepare(p) for p in photos])
    with torch.no_grad():
        models.attach_normalization(original, entry.mean, entry.std)
        logits = entry.model(x)
        assert torch.equal(logits, original(x)), "the weights file does not reproduce the saved model"
    # Each image's top class; the counterfactual map (what argues against a class) of the least likely
    # one: for the top class after a final ReLU it is often empty by definition, as the book shows.
    targets = {"counterfactual_grad_cam": logits.argmin(1)}
    row["load_seconds"] = round(time.perf_counter() - t0, 2)
    layer = A.default_layer(entry, x[:1])
    lay = entry.layout(layer)
    row.update(cam_layer=layer, cam_layout=lay.describe(), cam_grid=list(lay.grid), layers={
        n: entry.layout(n).describe() for n in entry.layers})
    for n in entry.layers:
        check_declared_channels(entry, n)
    acts, _ = A.layer_activations(entry.model, x, logits.argmax(1), layer)
    assert acts.shape[-2:] == lay.grid and acts.shape[1] == lay.channels  # what the CAM methods weight
    for name, method in A.METHODS.items():
        opts = {**FAST.get(name, {}), **({"layer": layer} if method.needs_layer else {})}
        start = time.perf_counter()
        ts = targets.get(name, logits.argmax(1))
        try:
            attr = method(entry, x, ts, **opts)
        except NotApplicableError as e:
            row["methods"][name] = {"outcome": "refused", "reason": e.reason, "activation": e.activation,
                                    "seconds": round(time.perf_counter() - start, 2)}
            by_activation = case.refuses is not None and name in RECTIFIER_ONLY and e.activation == case.refuses
            assert by_activation or name in case.also_refuses, f"{arch}: unexpected refusal of {name}: {e}"
            continue
        row["methods"][name] = {"outcome": "map", "seconds": round(time.perf_counter() - start, 2)}
        assert name not in case.also_refuses, f"{arch}: {name} should refuse (also_refuses)"
        assert not (case.refuses and name in RECTIFIER_ONLY), f"{arch}: {name} should refuse {case.refuses}"
        channels = entry.input_size[0] if method.per_channel else 1
        assert attr.shape == (len(x), channels, *entry.input_size[1:]), (arch, name)
        assert torch.isfinite(attr).all(), (arch, name)
        flat = attr.flatten(1)
        constant = flat.amax(1) <= flat.amin(1)
        if constant.any() and method.needs_layer:
            # A CAM is rectified: where no position has positive evidence for the class, the map is zero,
            # as Grad-CAM defines it. Then the weighted sum before the ReLU must be a real map, and <= 0.
            raw = unrectified_cam(name, entry, x, ts, layer, opts)[constant]
            assert (raw.flatten(1).amax(1) > raw.flatten(1).amin(1)).all() and (raw <= 0).all(), (arch, name)
            row["methods"][name]["outcome"] = "empty"
        else:
            assert not constant.any(), f"{arch}: {name} gave a constant map"
        if not method.signed:
            assert (attr >= 0).all(), (arch, name)
    row["featvis"] = featvis_outcomes(entry, x)
    row["seconds"] = round(time.perf_counter() - t0, 2)


def unrectified_cam(name: str, entry: models.ModelEntry, x: torch.Tensor, t: torch.Tensor, layer: str,
                    opts: dict) -> torch.Tensor:
    """A CAM's weighted sum of the layer's channels before its ReLU, ``[B, h, w]`` (Guided Grad-CAM: that
    of its Grad-CAM)."""
    cam = A.get("grad_cam" if name == "guided_grad_cam" else name).fn
    acts, grads = A.layer_activations(entry.model, x, t, layer, gradients=cam.uses_gradients)
    options = {k: v for k, v in opts.items() if k != "layer"}
    with torch.no_grad():
        w = cam.weights(acts, grads, module=entry.model, inputs=x, targets=t, **options)
        return (w * acts).sum(1) if w.dim() == 4 else torch.einsum("bc,bchw->bhw", w, acts)


def check_declared_channels(entry: models.ModelEntry, layer: str) -> None:
    """The layer read as a map has the channels the architecture declares (timm's ``feature_info``):
    a channels-last stage read as NCHW would take its rows for channels."""
    info = {f["module"]: f["num_chs"] for f in getattr(entry.model, "feature_info", []) or []}
    lay = entry.layout(layer)
    if info and layer not in info:  # the final feature map after the stages: timm's num_features
        info[layer] = entry.model.num_features
    if layer in info:
        assert lay.channels == info[layer], f"{layer}: {lay.describe()} with {lay.channels} channels"
    else:  # torchvision's CNNs declare no stages; their maps are NCHW
        assert lay.kind == NCHW, f"{layer}: {lay.describe()}"


def featvis_outcomes(entry: models.ModelEntry, x: torch.Tensor) -> dict:
    """One channel objective per layer of interest, all optimized in one batch (image i for layer i):
    each rendering must be a finite, non-constant image whose objective rose."""
    from xai.featvis import activations

    # the pre-activation of a layer that ends in one, as the report renders: a unit that a rectifier
    # zeroes on the start image would give no gradient
    reads = {n: O.pre_activation(entry.model, n) for n in entry.layers}
    layers = [n for n in entry.layers if entry.layout(reads[n]).spatial]
    out = {n: {"outcome": "refused", "reason": entry.layout(reads[n]).reason} for n in entry.layers if n not in layers}
    acts = activations(entry.model, x[:1], [reads[n] for n in layers])
    channels = [int(acts.layer(reads[n]).mean((0, 2, 3)).argmax()) for n in layers]  # the most active on a photo
    weights = torch.eye(len(layers))
    objective = sum(weights[i] * O.channel(reads[n], channels[i]) for i, n in enumerate(layers))
    c, h, w = entry.input_size
    r = render(entry.model, objective, P.FFTParam(len(layers), c, (h, w), seed=0), (), steps=2, seed=0)
    for i, n in enumerate(layers):
        img = r.images[i]
        assert img.shape == (c, h, w) and torch.isfinite(img).all() and img.max() > img.min(), n
        assert r.values[i] > r.history[0, i], f"{entry.name}: the objective at {n} did not rise"
        out[n] = {"outcome": "rendering", "read": reads[n], "channel": channels[i],
                  "start": round(float(r.history[0, i]), 4),
                  "end": round(float(r.values[i]), 4)}
    return out


def write_table(rows: dict, seconds: float) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "architecture_matrix.json").write_text(json.dumps({"seconds": round(seconds, 1), "rows": rows},
                                                                   indent=1))
    methods = list(A.METHODS)
    lines = [f"Architecture matrix ({seconds:.0f} s): map = a finite, non-constant map of the method's shape; "
             "empty = a CAM with no positive evidence anywhere (zero after its ReLU; the sum before it checked); "
             "refused = NotApplicableError (the activation that rules the method out)", "",
             "| architecture | CAM layer | " + " | ".join(methods) + " | featvis |",
             "| --- | --- | " + " | ".join("---" for _ in methods) + " | --- |"]
    for arch, row in rows.items():
        cells = []
        for m in methods:
            o = row["methods"].get(m)
            cells.append("—" if o is None else f"refused ({o['activation']})" if o["outcome"] == "refused"
                         else o["outcome"])
        fv = row.get("featvis", {})
        ok = sum(v["outcome"] == "rendering" for v in fv.values())
        grid = "" if row.get("cam_layout", "").startswith(TOKENS) else " " + "x".join(map(str, row.get("cam_grid", [])))
        cam = f"{row.get('cam_layer')} ({row.get('cam_layout')}{grid})"
        lines.append(f"| {arch} | {cam} | " + " | ".join(cells) + f" | {ok}/{len(fv)} layers |")
    (ARTIFACTS / "architecture_matrix.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


# -- layouts that a shape alone would get wrong -----------------------------------------------------------

def _reference_grad_cam(module: nn.Module, x: torch.Tensor, t: torch.Tensor, layer: str, to_nchw) -> torch.Tensor:
    """Grad-CAM from the raw layer output and its gradient, put in NCHW by ``to_nchw`` by hand."""
    store = {}
    handle = module.get_submodule(layer).register_forward_hook(lambda _m, _i, o: store.setdefault("a", o))
    try:
        with torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            out = module(xr)
            (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), store["a"])
    finally:
        handle.remove()
    a, g = to_nchw(store["a"].detach()), to_nchw(g)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_swin_stages_are_read_channels_last(tmp_path):
    """timm's Swin stages are [B, H, W, C]. Each stage's CAM is on the stage's grid (H/4, W/4 halved per
    stage, from feature_info) and equals a Grad-CAM computed by hand from the permuted output; reading the
    output as NCHW gives another grid and another map."""
    case = Case("timm/swin_tiny_patch4_window7_224", dict(img_size=(64, 128), window_size=2, depths=(1, 1, 1, 1),
                                                           embed_dim=24, num_heads=(1, 2, 4, 8)))
    _, entry = load_case(dataclasses.replace(case, size=64), tmp_path)
    assert entry.input_size == (3, 64, 128)
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 3])
    stages = [f["module"] for f in entry.model.feature_info]
    assert stages == [n for n in entry.layers if n.startswith("layers.")]
    for info in entry.model.feature_info:
        layer, r = info["module"], info["reduction"]
        lay = entry.layout(layer)
        assert lay.kind == NHWC and lay.grid == (64 // r, 128 // r) and lay.channels == info["num_chs"], layer
        acts, _ = A.layer_activations(entry.model, x, t, layer)
        assert acts.shape[1:] == (info["num_chs"], 64 // r, 128 // r)
        ours = A.grad_cam(entry, x, t, layer=layer)
        by_hand = _reference_grad_cam(entry.model, x, t, layer, lambda a: a.permute(0, 3, 1, 2))
        assert torch.allclose(ours, by_hand, rtol=1e-4, atol=1e-6 * float(by_hand.abs().max())), layer
        misread = _reference_grad_cam(entry.model, x, t, layer, lambda a: a)  # H taken as channels
        assert not torch.allclose(ours, misread, rtol=1e-2, atol=1e-3 * float(by_hand.abs().max())), layer


def test_vit_on_a_non_square_grid(tmp_path):
    """224x160 input, patch 16: 14x10 patch tokens after one class token (140 tokens: no square grid)."""
    case = Case("timm/vit_tiny_patch16_224", dict(img_size=(224, 160), depth=2))
    _, entry = load_case(dataclasses.replace(case, size=224), tmp_path)
    assert entry.input_size == (3, 224, 160)
    lay = entry.layout("blocks.0")
    assert (lay.kind, lay.prefix, lay.grid) == (TOKENS, 1, (14, 10))
    x = torch.rand(2, 3, 224, 160, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 4])
    ours = A.grad_cam(entry, x, t, layer="blocks.0")
    by_hand = _reference_grad_cam(entry.model, x, t, "blocks.0",
                                  lambda a: a[:, 1:].reshape(a.shape[0], 14, 10, -1).permute(0, 3, 1, 2))
    assert ours.shape == (2, 1, 224, 160)
    assert torch.allclose(ours, by_hand, rtol=1e-4, atol=1e-6 * float(by_hand.abs().max()))
    assert A.default_layer(entry, x[:1]) == "blocks.0"  # the last block reaches the head only by its class token
    with pytest.raises(NotApplicableError) as refused:
        A.grad_cam(entry, x, t, layer="blocks.1")
    assert refused.value.layer == "blocks.1"


def test_unknown_layer_and_class_suggest_close_matches(tmp_path):
    _, entry = load_case(CASES["timm resnet"], tmp_path)
    x = torch.rand(1, *entry.input_size)
    with pytest.raises(UnknownNameError, match="did you mean: .*layer4"):
        A.grad_cam(entry, x, 0, layer="layr4")
    with pytest.raises(UnknownNameError, match="did you mean: class 3"):
        entry.class_index("clas 3")


def test_an_unknown_layout_is_refused_with_the_layer_and_its_shape(tmp_path):
    """A Swin block's attention works on windows of 2x2 tokens, not on the stage's grid: no map."""
    _, entry = load_case(CASES["timm swin"], tmp_path)
    layer = "layers.0.blocks.0.attn"
    lay = entry.layout(layer)
    assert lay.kind == "unknown"
    x = torch.rand(1, *entry.input_size)
    with pytest.raises(NotApplicableError, match=r"\[4, 24\]") as refused:
        A.grad_cam(entry, x, 0, layer=layer)
    assert refused.value.layer == layer
