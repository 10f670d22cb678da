"""Transformation robustness: small random pads, shifts, scalings and rotations applied at every step.

An image that keeps activating a unit while it is jittered, scaled and rotated cannot rely on
pixel-exact high-frequency patterns, which is what unregularized optimization finds first.

Every transform takes the batch and one ``torch.Generator`` per image and draws that image's random
parameters from its own generator only. Image ``i`` therefore sees the same sequence of transforms
whether it is optimized alone or in a batch of 64, which makes batched rendering reproduce one-by-one
rendering. Scale and rotation are per-image affine warps, so a batch keeps one shape throughout.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import XaiError

Generators = Sequence[torch.Generator]


def _choice(options: Sequence[float], gen: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=gen))])


def _check(x: torch.Tensor, gens: Generators) -> None:
    if len(gens) != x.shape[0]:
        raise XaiError(f"a transform needs one generator per image: {x.shape[0]} images, {len(gens)} generators")


class Transform:
    """``transform(x, gens) -> x``: a batch ``[N, C, H, W]`` and one generator per image."""

    def __call__(self, x: torch.Tensor, gens: Generators) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Pad(Transform):
    """Widen the canvas by ``width`` on every side (constant grey by default), so borders are not special."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5):
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x, gens):
        if self.width <= 0:
            return x
        if self.mode == "constant":
            return F.pad(x, [self.width] * 4, mode="constant", value=self.value)
        return F.pad(x, [self.width] * 4, mode=self.mode)


class Jitter(Transform):
    """Crop each image at its own random offset in ``[0, d]`` both ways: the output is ``d`` pixels smaller."""

    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x, gens):
        _check(x, gens)
        if self.d <= 0:
            return x
        h, w = x.shape[2] - self.d, x.shape[3] - self.d
        if h < 1 or w < 1:
            raise XaiError(f"cannot jitter a {x.shape[2]}x{x.shape[3]} image by {self.d} pixels")
        offsets = torch.stack([torch.randint(self.d + 1, (2,), generator=g) for g in gens]).to(x.device)
        # One gather for the whole batch: per-image slices would each allocate a full-batch gradient.
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return x[batch, chans, rows, cols]


class Warp(Transform):
    """A per-image linear map about the image centre, resampled bilinearly. Consecutive warps in a
    :class:`Compose` are multiplied into one resampling: one interpolation blurs less and costs half."""

    def matrices(self, gens: Generators) -> torch.Tensor:
        """``[N, 2, 2]``: for each image, output pixel -> input pixel in normalised coordinates."""
        raise NotImplementedError

    def __call__(self, x, gens):
        _check(x, gens)
        return _warp(x, self.matrices(gens))


def _warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    theta = torch.cat([matrices, torch.zeros(x.shape[0], 2, 1)], dim=2).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Outside the image is grey, like the pad: replicating the border instead would hand the edge
    # pixels the gradient of every position outside, and they saturate.
    return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


class RandomScale(Warp):
    """Zoom each image by a factor drawn from ``scales`` (> 1 enlarges), keeping its size."""

    def __init__(self, scales: Sequence[float]):
        if not scales or min(scales) <= 0:
            raise XaiError(f"scales must be positive, got {scales!r}")
        self.scales = [float(s) for s in scales]

    def matrices(self, gens):
        s = torch.tensor([1.0 / _choice(self.scales, g) for g in gens])
        return torch.diag_embed(torch.stack([s, s], dim=1))


class RandomRotate(Warp):
    """Rotate each image by an angle (degrees) drawn from ``degrees``."""

    def __init__(self, degrees: Sequence[float]):
        if not degrees:
            raise XaiError("RandomRotate needs at least one angle")
        self.degrees = [float(d) for d in degrees]

    def matrices(self, gens):
        a = torch.tensor([math.radians(_choice(self.degrees, g)) for g in gens])
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)


class Resize(Transform):
    """Resize to ``size`` (for models with a fixed input size, such as a ViT's patch grid)."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, x, gens):
        if tuple(x.shape[2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)


class Compose(Transform):
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x, gens):
        pending: torch.Tensor | None = None  # the product of the warps seen since the last resampling
        for t in self.transforms:
            if isinstance(t, Warp):
                _check(x, gens)
                m = t.matrices(gens)
                pending = m if pending is None else pending @ m
                continue
            if pending is not None:
                x, pending = _warp(x, pending), None
            x = t(x, gens)
        return x if pending is None else _warp(x, pending)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def standard(size: int, out_size: int | None = None) -> Compose:
    """Lucid's standard robustness set, scaled from its 128 px values to an image of ``size`` pixels:
    pad 12, jitter 8, scale 0.9-1.1, rotate +-10 degrees (a fifth of draws unrotated), jitter 4.
    ``out_size`` resizes the result, for a model that only takes one input size."""
    k = size / 128
    ts: list[Transform] = [
        Pad(max(1, round(12 * k))),
        Jitter(max(1, round(8 * k))),
        RandomScale([1 + (i - 5) / 50 for i in range(11)]),
        RandomRotate(list(range(-10, 11)) + 5 * [0]),
        Jitter(max(1, round(4 * k))),
    ]
    if out_size is not None:
        ts.append(Resize(out_size))
    return Compose(ts)
