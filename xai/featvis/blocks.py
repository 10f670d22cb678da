"""Building Blocks (Olah et al. 2018): the activation grid, semantic dictionaries and neuron groups.

* :func:`activation_grid`: the activation vector at every position of a photo's layer, each rendered
  as a ``direction`` objective, all positions in one optimization (one image per position);
* :func:`semantic_dictionary`: each position's most active channels, with pointers to their
  visualizations (the Microscope's anchors, :func:`xai.featvis.microscope.unit_anchor`);
* :func:`neuron_groups`: the layer's activations on the photo factorized into a few groups (NMF): each
  group's direction (rendered like a grid cell), its spatial map, and its attribution to a class, the
  "spatial x channel" figure. A group's attribution is its exact share of gradient x activation
  (:func:`xai.concepts.discovery.factor_relevance`), so the groups' attributions add up to the layer's.

Everything reads the tensor feature visualization maximises for a layer (:func:`objectives.pre_activation`:
the layer, or the input of its final activation function), so the vectors, the dictionary's channels
and the renderings describe one tensor. Renders use the report's defaults: a colour-decorrelated Fourier
parameterization, Lucid's standard transforms ending at the render size, Adam at ``DEFAULT_LR``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import XaiError
from . import objectives as O
from . import param as P
from . import transforms as T
from .render import DEFAULT_LR, Rendering, activations, render_chunked


def render_directions(model: nn.Module, layer: str, vectors: torch.Tensor, *, size: int = 64, steps: int = 128,
                      seed: int = 0, batch: int | None = None, lr: float = DEFAULT_LR,
                      channels_in: int = 3) -> Rendering:
    """One image per row of ``vectors`` ``[N, C]``, each maximising the ``direction`` objective of its row
    at ``layer``, with the report's default regularisation; seeds ``seed + i``."""
    n = vectors.shape[0]
    seeds = [seed + i for i in range(n)]
    return render_chunked(
        model, lambda idx: O.direction(layer, vectors[idx]),
        lambda idx: P.FFTParam(len(idx), channels_in, size, seed=[seeds[i] for i in idx]),
        T.default_transforms(size), steps, seeds, batch, lr=lr)


@torch.no_grad()
def _map(model: nn.Module, image: torch.Tensor, target: str) -> torch.Tensor:
    p = next(model.parameters(), None)
    x = image[None].to(p.device if p is not None else "cpu")
    return activations(model, x, [target]).layer(target)[0].float().cpu()


def _cells(acts: torch.Tensor, cells: int | None) -> torch.Tensor:
    """``[C, h, w]`` average-pooled to at most ``cells`` x ``cells`` positions (Building Blocks' coarser
    layouts): a grid's cost grows with its positions, and a map is never enlarged."""
    if cells is None:
        return acts
    if cells < 1:
        raise XaiError(f"cells must be at least 1, got {cells}")
    h, w = acts.shape[1:]
    if h <= cells and w <= cells:
        return acts
    return torch.nn.functional.adaptive_avg_pool2d(acts[None], (min(h, cells), min(w, cells)))[0]


def _photo(image: torch.Tensor) -> None:
    if image.dim() != 3:
        raise XaiError(f"Building Blocks take one image [C, H, W] at the model's input size, got {tuple(image.shape)}")


# -- activation grid -------------------------------------------------------------------------------------
@dataclass
class ActivationGrid:
    layer: str
    objective_layer: str
    shape: tuple[int, int]  # (h, w) positions, row-major in ``vectors`` and ``rendering.images``
    vectors: torch.Tensor  # [h w, C]
    rendering: Rendering  # one image per position

    def tiles(self) -> torch.Tensor:
        """``[h, w, C_in, s, s]``: the renderings at their positions."""
        h, w = self.shape
        return self.rendering.images.view(h, w, *self.rendering.images.shape[1:])


def activation_grid(model: nn.Module, image: torch.Tensor, layer: str, *, size: int = 64, steps: int = 128,
                    seed: int = 0, batch: int | None = None, lr: float = DEFAULT_LR,
                    cells: int | None = None) -> ActivationGrid:
    """Render the activation vector at every position of ``layer`` on ``image`` (one ``[C, H, W]`` photo
    at the model's input size); ``batch=None`` renders every position in one optimization. With
    ``cells``, the map is first average-pooled to at most ``cells`` x ``cells`` positions."""
    _photo(image)
    target = O.pre_activation(model, layer)
    acts = _cells(_map(model, image, target), cells)
    vectors = acts.flatten(1).T.contiguous()
    r = render_directions(model, target, vectors, size=size, steps=steps, seed=seed, batch=batch, lr=lr,
                          channels_in=image.shape[0])
    return ActivationGrid(layer, target, tuple(acts.shape[1:]), vectors, r)


# -- semantic dictionary ------------------------------------------------------------------------------------
@dataclass
class SemanticDictionary:
    layer: str
    objective_layer: str
    channels: torch.Tensor  # [h, w, k] most active first
    values: torch.Tensor  # [h, w, k] their activations
    norms: torch.Tensor  # [h, w] the activation vector's length (how much is there at all)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.channels.shape[:2])

    def entry(self, i: int, j: int) -> dict:
        from .microscope import unit_anchor

        chans = self.channels[i, j].tolist()
        return {"position": [i, j], "channels": chans, "values": [round(float(v), 5) for v in self.values[i, j]],
                "norm": round(float(self.norms[i, j]), 5), "anchors": [unit_anchor(self.layer, c) for c in chans]}

    def to_json(self) -> dict:
        h, w = self.shape
        return {"layer": self.layer, "objective_layer": self.objective_layer, "shape": [h, w],
                "entries": [self.entry(i, j) for i in range(h) for j in range(w)]}


def semantic_dictionary(model: nn.Module, image: torch.Tensor, layer: str, *, top: int = 4,
                        cells: int | None = None) -> SemanticDictionary:
    """Each position's ``top`` channels by activation (of the tensor feature visualization maximises);
    ``cells`` pools the map as :func:`activation_grid` does, so a dictionary matches its grid."""
    _photo(image)
    target = O.pre_activation(model, layer)
    acts = _cells(_map(model, image, target), cells)  # [C, h, w]
    if not 1 <= top <= acts.shape[0]:
        raise XaiError(f"top must be between 1 and {acts.shape[0]} (the channels of {layer}), got {top}")
    vals, chans = acts.permute(1, 2, 0).topk(top, dim=-1)
    return SemanticDictionary(layer, target, chans, vals, acts.norm(dim=0))


# -- neuron groups --------------------------------------------------------------------------------------------
@dataclass
class NeuronGroups:
    layer: str
    objective_layer: str
    target: int  # the class the attribution is for
    directions: torch.Tensor  # [k, C] each group in channel space (unit norm)
    maps: torch.Tensor  # [k, h, w] where each group is present (NMF's W, >= 0)
    spatial_attribution: torch.Tensor  # [k, h, w] each group's share of gradient x activation per position
    attribution: torch.Tensor  # [k] summed over positions
    total: float  # gradient x activation of the whole layer (the groups' attributions add up to it)
    error: float  # relative error of the factorization

    def objective(self) -> O.Objective:
        """``direction`` objective, image ``g`` of a batch maximising group ``g``."""
        return O.direction(self.objective_layer, self.directions)

    def to_json(self) -> dict:
        return {"layer": self.layer, "objective_layer": self.objective_layer, "target": self.target,
                "groups": int(self.directions.shape[0]), "attribution": [round(float(v), 6) for v in self.attribution],
                "total": round(self.total, 6), "error": round(self.error, 6),
                "top_channels": [torch.argsort(d, descending=True)[:5].tolist() for d in self.directions]}


def neuron_groups(model: nn.Module, image: torch.Tensor, layer: str, *, groups: int = 6, target: int | None = None,
                  seed: int = 0, iters: int = 200) -> NeuronGroups:
    """Factorize ``layer`` on ``image`` into ``groups`` neuron groups and attribute ``target`` (default: the
    predicted class) to each (see the module docstring)."""
    from ..concepts.discovery import discover

    _photo(image)
    if not 1 <= groups <= 64:
        raise XaiError(f"groups must be between 1 and 64, got {groups}")
    x = image[None]
    if target is None:
        p = next(model.parameters(), None)
        with torch.no_grad():
            target = int(model(x.to(p.device if p is not None else "cpu")).argmax(-1))
    obj_layer = O.pre_activation(model, layer)
    c = discover(model, x, obj_layer, int(target), k=groups, seed=seed, iters=iters, batch=1)
    spatial = c.relevance[0]
    return NeuronGroups(layer=layer, objective_layer=obj_layer, target=int(target), directions=c.directions,
                        maps=c.maps[0], spatial_attribution=spatial, attribution=spatial.double().sum((1, 2)).float(),
                        total=float(c.total_relevance[0]), error=c.error)


def render_groups(model: nn.Module, groups: NeuronGroups, *, size: int = 64, steps: int = 128, seed: int = 0,
                  lr: float = DEFAULT_LR, channels_in: int = 3) -> Rendering:
    """Each group's visualization (its direction), all in one optimization."""
    return render_directions(model, groups.objective_layer, groups.directions, size=size, steps=steps, seed=seed,
                             lr=lr, channels_in=channels_in)
