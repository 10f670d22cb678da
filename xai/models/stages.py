"""Layers of interest from a module's stage structure, for models that do not name their stages
(torchvision's, a user's own); timm's declare theirs in ``feature_info``."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..layouts import trace


def stage_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Layers of interest from the model's stage structure, shallow to deep: the last module (other than a
    pooling) at each resolution of its feature maps, looking into plain containers (``nn.Sequential``)
    whose children work at three resolutions or more. Positions of 1x1 (after a global pool) are left out.

    On torchvision's ResNet this gives ``relu, layer1, ..., layer4``; on VGG the last ReLU before each
    pooling and the last pooling; on DenseNet the dense blocks and the final norm.
    """
    t = trace(model, input_shape)
    ran = set(t.order)
    position = {n: i for i, n in enumerate(t.order)}
    pooling = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
               nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)

    def grid(name: str) -> tuple[int, int] | None:
        lay = t.layouts.get(name)
        return lay.grid if lay is not None and lay.spatial and lay.grid[0] * lay.grid[1] > 1 else None

    def units(prefix: str, module: nn.Module) -> list[str]:
        kids = sorted((f"{prefix}{n}" for n, _ in module.named_children() if f"{prefix}{n}" in ran),
                      key=position.get)
        out = []
        for name in kids:
            child = model.get_submodule(name)
            inner = {grid(f"{name}.{n}") for n, _ in child.named_children()} - {None}
            # a feature extractor (VGG's ``features``) works at many resolutions; a downsampling unit
            # (DenseNet's transition: conv then pool) at two, and stays one unit
            out += units(f"{name}.", child) if isinstance(child, nn.Sequential) and len(inner) > 2 else [name]
        return out

    runs: list[list[str]] = []
    for name in units("", model):
        g = grid(name)
        if g is None:
            continue
        if runs and grid(runs[-1][-1]) == g:
            runs[-1].append(name)
        else:
            runs.append([name])
    picks: list[str] = []
    for run in runs:
        kept = [n for n in run if not isinstance(model.get_submodule(n), pooling)]
        if kept:
            picks.append(kept[-1])
        elif not picks or _area(grid(run[0])) < _area(grid(picks[-1])):
            picks.append(run[0])  # a pooling that resamples to a fixed size larger than the map is skipped
    return picks


def _area(grid: tuple[int, int]) -> int:
    return grid[0] * grid[1]
