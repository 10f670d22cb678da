"""The feature-visualization study's settings and its parts that every other part uses: the rendering
jobs (cached through the store), the images they write and read back, and the classification of
rendered images. The study itself is :mod:`xai.studies.featvis`; the regularization ladder, the
optimization's progress and the photo start are :mod:`xai.studies.featvis_ladder`.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import featvis, models
from ..featvis import Rendering
from ..featvis import objectives as O
from ..featvis import transforms as T
from ..featvis.schedule import DEFAULT_SCHEDULE, schedule_named
from ..render.store import Store, cache_key
from . import _frame as frame

STUDY = "featvis"
ROOT = "featvis"
CODE_VERSION = 2
QUALITY_BAR = 0.9

DEFAULTS = {
    "size": 128,  # ImageNet render size (px)
    "batch": 64,  # most images in one optimization (memory bound)
    "grid_steps": 128,
    "grid_channels": 16,
    "grid_layers": None,  # None: every layer of interest of the entry
    "class_steps": 128,
    "class_samples": 3,
    "max_classes": 12,  # None: every labelled class of the profile's photos (15 in the manifest)
    "class_models": None,  # ImageNet models that render class visualizations; None: the profile's first
    # Weight of the diversity term between the samples of a class. Measured on lite0 (2 classes x 3
    # samples, 96 steps): 0 -> mean Gram similarity 0.70, 5 -> 0.43, 20 -> 0.17, all still top-1.
    "diversity": 10.0,
    # Fashion-MNIST logits are several times smaller than ImageNet's (~10 vs ~50): weight 10 drowned
    # them (smoke-budget CNN: 30 % own top-1), weight 1 keeps the full-budget VGG at 100 %.
    "fmnist_diversity": 1.0,
    "unregularized": True,  # also render every class once without any regularization (the contrast)
    "ladder_classes": 3,
    "ladder_steps": 128,
    # The assignments' loop against Adam: raw pixels kept valid by clipping or by a sigmoid, each moved by
    # these optimizers (name, learning rate) on the ladder's classes and seeds, without transforms.
    # Plain SGD's step is lr x the gradient, so it gets two rates a factor of 10 apart.
    "optimizer_runs": [["adam", 0.05], ["normalized_sgd", 0.05], ["sgd", 10.0], ["sgd", 100.0]],
    "progress_steps": [0, 16, 64, 256, 512],
    "photo_count": 3,  # labelled photos (of the profile) for the noise-vs-photo start
    "photo_steps": 128,
    "dream_layers": [2, 3],  # positions in the entry's layers of interest for DeepDream
    "dream_depth_steps": 96,  # DeepDream at every layer of every ImageNet model, from a photo and from noise
    "fmnist_steps": 128,
    "fmnist_channels": 16,
    "fmnist_class_samples": 3,
    "exemplar_images": None,  # Fashion-MNIST test images scanned for channel selection and exemplars; None: all
    "exemplars": 9,
}

# Penalty weights of the ladder. Penalties are means over pixels, so their per-pixel gradients are tiny:
# on a lite0 class image at 128 px, a class logit's mean |gradient| was 23,000x that of L2 (weight 1),
# 1,800x that of TV and 31,000x that of blur. Weights of that order visibly change the image (lower
# contrast for L2, smoother for TV + blur) while every image stays its class's top-1; 30x smaller
# weights left the images unchanged (measured on tabby, espresso, missile).
LADDER_PENALTIES = {"l2": 1e4, "tv": 1e3, "blur": 1e4}
MONTAGE_COLUMNS = 8


option = frame.options(STUDY, DEFAULTS)


# -- images in and out ------------------------------------------------------------------------------
def png(img: torch.Tensor) -> bytes:
    from PIL import Image

    a = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def read_png(store: Store, rel: str) -> torch.Tensor:
    from PIL import Image

    a = np.asarray(Image.open(store.path(rel)), dtype=np.float32) / 255
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def _pngs(store: Store, paths: Sequence[str]) -> torch.Tensor:
    return torch.stack([read_png(store, p) for p in paths])


def pattern_wavelength(images: torch.Tensor) -> list[float]:
    """Characteristic wavelength (px) of each image ``[N, C, h, w]``: one over the power-weighted mean
    radial spatial frequency of its grey levels (mean removed). Large for broad shapes, small for fine
    texture, so the scale of what a layer's units respond to can be compared across layers."""
    grey = images.float().mean(1)
    grey = grey - grey.mean((1, 2), keepdim=True)
    power = torch.fft.rfft2(grey).abs() ** 2
    h, w = grey.shape[1:]
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    radius = torch.sqrt(fy ** 2 + fx ** 2)
    mean_f = (power * radius).sum((1, 2)) / power.sum((1, 2)).clamp_min(1e-12)
    return [round(float(1 / f), 2) if f > 0 else float("nan") for f in mean_f]


def colourfulness(images: torch.Tensor) -> list[float]:
    """Hasler and Suesstrunk's (2003) colourfulness of each RGB image ``[N, 3, h, w]`` in [0, 1]: the
    spread and mean of its opponent colour channels; 0 for grey images."""
    r, g, b = images.float().unbind(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = torch.sqrt(rg.std((1, 2)) ** 2 + yb.std((1, 2)) ** 2)
    offset = torch.sqrt(rg.mean((1, 2)) ** 2 + yb.mean((1, 2)) ** 2)
    return [round(float(v), 4) for v in spread + 0.3 * offset]


def montage(tiles: Sequence[torch.Tensor], columns: int, gap: int = 2) -> torch.Tensor:
    """Tiles ``[C, h, w]`` row-major on a white background."""
    c, h, w = tiles[0].shape
    rows = -(-len(tiles) // columns)
    out = torch.ones(c, rows * (h + gap) - gap, columns * (w + gap) - gap)
    for k, t in enumerate(tiles):
        r, q = divmod(k, columns)
        out[:, r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = t
    return out


def square_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side resized to ``size``, centre-cropped to a square."""
    s = size / min(img.shape[1:])
    x = F.interpolate(img[None].float(), scale_factor=s, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
    return x[:, top:top + size, left:left + size].clamp(0, 1).contiguous()


# -- rendering jobs ---------------------------------------------------------------------------------
class Jobs:
    """Rendering jobs as the store's cached jobs (:meth:`Store.job`): a job whose key is unchanged and whose
    images all exist is read back, not rerun; the log says what each cost."""

    def __init__(self, store: Store):
        self.store = store
        self.log: list[dict] = []

    def run(self, name: str, spec: dict, paths: list[str], compute: Callable[[], Rendering], *,
            model=None, objective: O.Objective | None = None,
            snapshot_path: Callable[[int, int], str] | None = None, history: bool = False) -> dict:
        rel = f"{ROOT}/jobs/{name.replace('/', '__')}.json"
        # The engine's default schedule moves every rendering, so a change of it is a change of the key.
        key = cache_key(STUDY, CODE_VERSION, repr(schedule_named(DEFAULT_SCHEDULE)), name, spec)
        ran = []

        def job(out) -> dict:  # the store's cached-job protocol: fresh while every image it wrote exists
            ran.append(True)
            r = compute()
            if len(paths) != r.images.shape[0]:
                raise AssertionError(f"job {name}: {len(paths)} paths for {r.images.shape[0]} images")
            for img, p in zip(r.images, paths):
                out.write_bytes(p, png(img))
            snaps, snap_values = {}, {}
            for step, imgs in sorted(r.snapshots.items()):
                sp = [snapshot_path(step, i) for i in range(imgs.shape[0])] if snapshot_path else []
                for img, p in zip(imgs, sp):
                    out.write_bytes(p, png(img))
                snaps[str(step)] = sp
                if model is not None and objective is not None:
                    snap_values[str(step)] = _floats(featvis.evaluate(model, objective, imgs))
            n = r.images.shape[0]
            rec = {"name": name, "images": paths, "values": _floats(r.values), "snapshots": snaps,
                   "snapshot_values": snap_values, "steps": r.steps, "n": n, "seconds": round(r.seconds, 3),
                   "ms_per_image_step": round(1000 * r.seconds / max(1, n * r.steps), 3), "spec": spec}
            if history:  # the objective before each update, per image: [N][steps]
                rec["history"] = [_floats(col) for col in r.history.T]
            return rec

        rec = self.store.job(rel, key, job)
        self.log.append(self._entry(name, rec, cached=not ran))
        return rec

    @staticmethod
    def _entry(name: str, rec: dict, cached: bool) -> dict:
        return {"name": name, "images": rec["n"], "steps": rec["steps"], "seconds": rec["seconds"],
                "ms_per_image_step": rec["ms_per_image_step"], "cached": cached}


def _floats(t: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in t.flatten()]


def default_transforms(size: int) -> T.Compose:
    """Lucid's standard set, ending at the render size (so fixed-size models such as the ViT take it)."""
    return T.standard(size, out_size=size)


# -- classification of rendered images ------------------------------------------------------------
@torch.no_grad()
def probabilities(entry: models.ModelEntry, x: torch.Tensor, at_input_size: bool = False) -> torch.Tensor:
    """Softmax of ``entry`` on images ``x`` at their own size, or resized to the model's input size."""
    if at_input_size:
        x = F.interpolate(x.float(), size=entry.input_size[1:], mode="bilinear", antialias=True, align_corners=False)
    return frame.probabilities(entry, x, 32)


def classify(entry: models.ModelEntry, x: torch.Tensor, targets: Sequence[int]) -> list[dict]:
    """Per image: top-1, the target's rank and probability, top-5 membership, top-1 at input size."""
    p = probabilities(entry, x)
    p_in = probabilities(entry, x, at_input_size=True)
    rows = []
    for k, t in enumerate(targets):
        rank = int((p[k] > p[k, t]).sum()) + 1
        top = int(p[k].argmax())
        rows.append({"top1": top, "top1_name": entry.class_names[top], "top1_p": round(float(p[k, top]), 4),
                     "target_rank": rank, "top5": rank <= 5, "target_p": round(float(p[k, t]), 4),
                     "top1_at_input_size": int(p_in[k].argmax()) == t})
    return rows


def _rate(flags: Sequence[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if len(flags) else None


