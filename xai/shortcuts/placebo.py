"""Placebo markers: the reference a model is compared with when no clean control model exists.

A marker can change a model's answers for reasons that have nothing to do with a learned shortcut: any
bright patch on a dark background is a perturbation, and a perturbation pushes some images over some
decision boundary. A placebo is a perturbation of the same kind that the training data never paired
with the class, so a model indifferent to the marker reacts to marker and placebo alike, and only a
model that learned the marker's look *at its place* reacts more to the marker. Two kinds, drawn per
image from a seeded generator:

* ``moved`` (the default): the marker's bounding box pasted at a random position that does not overlap the
  original box: the same pattern, area and paint, somewhere the data never had it. It tests the
  *position* the model learned; a network that learned the pattern anywhere (global pooling makes
  that easy) reacts to the placebo too, and the detector then reports less than the model uses.
* ``mirrored``: the marker's weight map turned by 180 degrees: the same area and paint at the place
  diagonally opposite (a corner square goes to the opposite corner, a left-to-right ramp becomes a
  right-to-left one), a marker the data never had. The same for every image, so it needs no seed;
  a marker symmetric under the turn has no mirrored placebo.

A third kind was tried and dropped: the marker's pixels *scrambled* over the image (exactly the same
weights, with neither shape nor place). Scattered white pixels on a garment damage it more than a
compact marker does and push images to the catch-all class themselves: on the smoke-trained model
with the square on half the shirts it turned 6.7 % of other images to Shirt against the real marker's
4.8 %, so the comparison read a real shortcut as a negative effect.

Either is a weaker reference than a clean control model trained on the same data: the calibration
(:mod:`.calibration`) measures how much power each costs.
"""
from __future__ import annotations

import torch

from ..errors import UnknownNameError, XaiError
from .markers import Marker

PLACEBOS = ("moved", "mirrored")


def fitting_placebo(weight: torch.Tensor) -> str:
    """``"moved"`` where the marker's box leaves room to move it off itself, else ``"mirrored"`` (a marker
    that covers the image, such as a lightness gradient, can only be turned). What was used is recorded
    with the verdict (its ``reference``)."""
    rows, cols = (weight > 0).any(1).nonzero().flatten(), (weight > 0).any(0).nonzero().flatten()
    if not len(rows):
        raise XaiError("a placebo needs a non-empty [H, W] weight map")
    h, w = weight.shape
    bh, bw = int(rows[-1]) - int(rows[0]) + 1, int(cols[-1]) - int(cols[0]) + 1
    r0, c0 = int(rows[0]), int(cols[0])
    room = r0 >= bh or h - (r0 + bh) >= bh or c0 >= bw or w - (c0 + bw) >= bw
    return "moved" if room else "mirrored"


def placebo_weights(weight: torch.Tensor, kind: str, n: int, seed: int = 0) -> torch.Tensor:
    """``[n, H, W]``: one placebo of the weight map ``weight`` (``[H, W]``) per image, seeded."""
    if kind not in PLACEBOS:
        raise UnknownNameError("placebo", kind, PLACEBOS)
    if weight.dim() != 2 or not (weight > 0).any():
        raise XaiError(f"a placebo needs a non-empty [H, W] weight map, got shape {tuple(weight.shape)}")
    gen = torch.Generator().manual_seed(seed)
    h, w = weight.shape
    if kind == "mirrored":
        turned = weight.flip(0, 1)
        if torch.equal(turned, weight):
            raise XaiError("the marker is symmetric under a half turn, so its mirrored placebo is the marker "
                           "itself; use the 'moved' placebo")
        return turned.expand(n, h, w).contiguous()
    rows, cols = (weight > 0).any(1).nonzero().flatten(), (weight > 0).any(0).nonzero().flatten()
    r0, c0 = int(rows[0]), int(cols[0])
    bh, bw = int(rows[-1]) - r0 + 1, int(cols[-1]) - c0 + 1
    patch = weight[r0:r0 + bh, c0:c0 + bw]
    tops, lefts = torch.meshgrid(torch.arange(h - bh + 1), torch.arange(w - bw + 1), indexing="ij")
    apart = (tops + bh <= r0) | (tops >= r0 + bh) | (lefts + bw <= c0) | (lefts >= c0 + bw)
    if not apart.any():
        raise XaiError(f"the marker's {bh}x{bw} box leaves no room to move it off itself in a {h}x{w} image; "
                       "use the 'mirrored' placebo")
    tops, lefts = tops[apart], lefts[apart]
    pick = torch.randint(len(tops), (n,), generator=gen)
    r = tops[pick][:, None] + torch.arange(bh)  # [n, bh]
    c = lefts[pick][:, None] + torch.arange(bw)  # [n, bw]
    out = torch.zeros(n, h, w, dtype=weight.dtype)
    out[torch.arange(n)[:, None, None], r[:, :, None], c[:, None, :]] = patch
    return out


def apply_weights(images: torch.Tensor, weights: torch.Tensor, value: float) -> torch.Tensor:
    """``images`` ``[B, C, H, W]`` each blended with its own weight map (``[B, H, W]``), as :meth:`Marker.apply`."""
    w = weights.to(images.device, images.dtype)[:, None]
    return (1 - w) * images + w * value


def apply_placebo(marker: Marker, images: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """``images`` with a placebo of ``marker``, a fresh draw for every image."""
    if images.dim() != 4 or tuple(images.shape[-2:]) != marker.shape:
        raise XaiError(f"marker {marker.name!r} is {marker.shape[0]}x{marker.shape[1]}; "
                       f"it cannot mark images of shape {tuple(images.shape)}")
    return apply_weights(images, placebo_weights(marker.weight, kind, len(images), seed), marker.value)


def placebo_regions(region: torch.Tensor, kind: str, n: int, seed: int = 0) -> torch.Tensor:
    """``[n, H, W]`` boolean: the candidate region moved (one draw per image) or mirrored."""
    return placebo_weights(region.float(), kind, n, seed) > 0.5
