"""Feature visualization of any model from the command line: class logits or a layer's channels, one
image per unit, rendered batched with the report's default regularisation.

The defaults are the feature-visualization study's own (:mod:`xai.studies.featvis`): a colour-decorrelated
Fourier parameterization, Lucid's standard transforms ending at the render size, Adam at
:data:`xai.featvis.DEFAULT_LR`, no penalties, its render size and step counts, and its batch size. Channel
objectives read a layer's pre-activation when it ends with an activation, as in the study's grids. Each
image has its own seed (``seed`` + its unit's index), so it does not depend on what else is rendered
with it. Each image is then classified by the model, as saved (8-bit) and at its render size, as the
study judges its class images.

Files under the output folder: ``class-<index>.png`` or ``<layer>-c<channel>.png`` per unit,
``montage.png`` (units row-major), and ``visualize.json``: ``model`` (spec, name), ``objective``
(``class`` or ``channel``), ``layer`` and ``objective_layer`` (channels), ``settings`` (``size``,
``steps``, ``lr``, ``batch``, ``param``, ``transforms``, ``penalties``), ``units`` (list of ``unit``,
``label``, ``seed``, ``file``, ``value`` (final objective, untransformed), ``top1`` (``index``, ``name``,
``p``), and for classes ``hit``: whether the top-1 is the class), ``own_top1_rate`` (classes),
``seconds``, ``versions``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import featvis
from .errors import XaiError
from .featvis import Rendering
from .featvis import objectives as O
from .featvis import param as P
from .io import atomic_write_bytes, atomic_write_json
from .models import ModelEntry


@dataclass
class Visualization:
    spec: str
    entry: ModelEntry
    objective: str  # "class" or "channel"
    layer: str | None
    objective_layer: str | None
    units: list[int]
    seeds: list[int]
    settings: dict
    rendering: Rendering
    top1: list[tuple[int, str, float]]

    def label(self, k: int) -> str:
        u = self.units[k]
        return f"class {u} ({self.entry.class_names[u]})" if self.objective == "class" else f"{self.layer} channel {u}"

    def file(self, k: int) -> str:
        u = self.units[k]
        return f"class-{u}.png" if self.objective == "class" else f"{self.layer}-c{u}.png"

    @property
    def own_top1_rate(self) -> float | None:
        if self.objective != "class":
            return None
        return sum(t[0] == u for t, u in zip(self.top1, self.units)) / len(self.units)


def parse_channels(text: str) -> list[int]:
    """``"0-15"``, ``"3,5,7-9"`` -> channel indices, in order, each once."""
    out: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise XaiError(f"channels must look like 0-15 or 3,5,7-9, got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise XaiError(f"channel range {part.strip()!r} runs backwards")
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


def defaults() -> dict:
    """The study's render size, step counts, batch size and channel count (one place for the numbers)."""
    from .studies.featvis import DEFAULTS

    return {k: DEFAULTS[k] for k in ("size", "class_steps", "grid_steps", "batch", "grid_channels")}


def render_size(entry: ModelEntry, size: int | None = None) -> int:
    """``size``, else the study's render size, or the model's own input side when that is smaller (the
    study renders its 28 px Fashion-MNIST models at 28 px)."""
    if size is not None:
        if size < 8:
            raise XaiError(f"--size must be at least 8 px, got {size}")
        return size
    return min(defaults()["size"], min(entry.input_size[1:]))


def _probe(entry: ModelEntry, size: int, spec: str) -> torch.Tensor:
    """A grey image of the render size, checked to go through the model: a fixed-size model (a ViT) fails
    here with a hint, not inside the loop."""
    x = torch.full((1, entry.input_size[0], size, size), 0.5, device=entry.device)
    try:
        with torch.no_grad():
            entry.model(x)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise XaiError(f"{spec} does not take {size} px images ({type(e).__name__}); "
                       f"try --size {entry.input_size[1]}") from e
    return x


def visualize_classes(entry: ModelEntry, classes: Sequence[str | int], *, spec: str | None = None,
                      steps: int | None = None, size: int | None = None, seed: int = 0,
                      progress: bool | None = False) -> Visualization:
    """One image per class (name or index), maximising its logit."""
    units = list(dict.fromkeys(entry.class_index(c) for c in classes))
    if not units:
        raise XaiError("no classes to visualize")
    steps = defaults()["class_steps"] if steps is None else steps
    size = render_size(entry, size)
    _probe(entry, size, spec or entry.name)
    return _run(entry, spec, "class", None, None, units, lambda idx: O.class_logit([units[i] for i in idx]),
                steps, size, seed, progress)


def visualize_channels(entry: ModelEntry, layer: str, channels: Sequence[int] | None = None, *,
                       spec: str | None = None, steps: int | None = None, size: int | None = None, seed: int = 0,
                       progress: bool | None = False) -> Visualization:
    """One image per channel of ``layer`` (default: the first as many as the study's grids show),
    maximising the channel's spatial mean."""
    target = O.pre_activation(entry.model, layer)
    steps = defaults()["grid_steps"] if steps is None else steps
    size = render_size(entry, size)
    probe = _probe(entry, size, spec or entry.name)
    with torch.no_grad():
        width = featvis.activations(entry.model, probe, [target]).layer(target).shape[1]
    units = list(range(min(width, defaults()["grid_channels"]))) if channels is None else list(channels)
    bad = [c for c in units if not 0 <= c < width]
    if bad:
        raise XaiError(f"layer {layer!r} has {width} channels (0-{width - 1}); got channel {bad[0]}")
    if not units:
        raise XaiError("no channels to visualize")
    return _run(entry, spec, "channel", layer, target, units, lambda idx: O.channel(target, [units[i] for i in idx]),
                steps, size, seed, progress)


def _run(entry, spec, objective, layer, target, units, make_objective, steps, size, seed, progress) -> Visualization:
    from tqdm import tqdm

    from .featvis import render_chunked
    from .studies.featvis import default_transforms, probabilities

    if steps < 1:
        raise XaiError(f"--steps must be at least 1, got {steps}")
    seeds = [seed + u for u in units]
    batch = defaults()["batch"]
    channels_in = entry.input_size[0]
    transforms = default_transforms(size)
    chunks = -(-len(units) // batch)
    bar = tqdm(total=steps * chunks, desc=f"visualize {len(units)} {objective}s", unit="step",
               disable=None if progress is None else not progress)
    try:
        rendering = render_chunked(
            entry.model, make_objective, lambda idx: P.FFTParam(len(idx), channels_in, size, seed=[seeds[i] for i in idx]),
            transforms, steps, seeds, batch, progress=lambda _step, _values: bar.update())
    finally:
        bar.close()
    saved = (rendering.images * 255).round() / 255  # judged as saved, 8-bit
    p = probabilities(entry, saved)
    conf, idx = p.max(-1)
    top1 = [(int(i), entry.class_names[int(i)], float(c)) for i, c in zip(idx, conf)]
    settings = {"size": size, "steps": steps, "lr": featvis.DEFAULT_LR, "batch": batch,
                "param": "Fourier spectrum scaled by 1/f, colour-decorrelated (3 channels), sigmoid",
                "transforms": repr(transforms), "penalties": None}
    return Visualization(spec or entry.name, entry, objective, layer, target, units, seeds, settings, rendering, top1)


def report(vis: Visualization, out: str | Path) -> list[str]:
    """What the command prints: each image's file, unit and own top-1; for classes, the hit rate."""
    lines = [f"{Path(out) / vis.file(k)}  {vis.label(k)}: own top-1 {name} ({i}) {p:.2f}"
             for k, (i, name, p) in enumerate(vis.top1)]
    if vis.own_top1_rate is not None:
        lines.append(f"own top-1 rate: {vis.own_top1_rate:.0%} of {len(vis.units)}")
    return lines


def write(vis: Visualization, out: str | Path) -> list[Path]:
    from .explain import versions
    from .studies.featvis import MONTAGE_COLUMNS, montage, png

    out = Path(out)
    written = [atomic_write_bytes(out / vis.file(k), png(img)) for k, img in enumerate(vis.rendering.images)]
    written.append(atomic_write_bytes(out / "montage.png", png(montage(list(vis.rendering.images),
                                                                  min(MONTAGE_COLUMNS, len(vis.units))))))
    units = []
    for k, u in enumerate(vis.units):
        i, name, p = vis.top1[k]
        row = {"unit": u, "label": vis.label(k), "seed": vis.seeds[k], "file": vis.file(k),
               "value": round(float(vis.rendering.values[k]), 5), "top1": {"index": i, "name": name, "p": round(p, 4)}}
        if vis.objective == "class":
            row["hit"] = i == u
        units.append(row)
    record = {"model": {"spec": vis.spec, "name": vis.entry.name}, "objective": vis.objective, "layer": vis.layer,
              "objective_layer": vis.objective_layer, "settings": vis.settings, "units": units,
              "own_top1_rate": vis.own_top1_rate, "seconds": round(vis.rendering.seconds, 3), "versions": versions()}
    written.append(atomic_write_json(out / "visualize.json", record))
    return written
