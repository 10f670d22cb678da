"""Transformation robustness: small random pads, shifts, scalings and rotations applied at every step.

An image that keeps activating a unit while it is jittered, scaled and rotated cannot rely on
pixel-exact high-frequency patterns, which is what unregularized optimization finds first.

Every transform takes the batch and one ``torch.Generator`` per image and draws that image's random
parameters from its own generator only. Image ``i`` therefore sees the same sequence of transforms
whether it is optimized alone or in a batch of 64, which makes batched rendering reproduce one-by-one
rendering.

Pad, jitter, scale, rotate and resize are all affine maps of pixel coordinates, drawn per image. A
:class:`Compose` multiplies consecutive ones into a single map and resamples once: one bilinear
interpolation per step instead of five (less blur, and a fraction of the cost of separate passes).
Everything outside the image is grey, as in Lucid's constant pad.

The maps and the sampling coordinates are computed with elementwise operations only, never with a
matrix product: a batched ``einsum``/``bmm`` may pick another kernel (vector width, FMA, blocking) for
3 images than for 1, which moved coordinates by an ULP and the resampled values by up to 3e-6 on an
AMD EPYC. Elementwise float32 operations round each result once whatever the vector width, so image
``i``'s pixels are the same bits alone and in a batch. Per-image parameters (angles, scales) are
Python floats for the same reason: a vectorised ``cos`` over many images need not round like the
scalar one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import XaiError

Generators = Sequence[torch.Generator]
FILL = 0.5  # grey: the colour of the pad and of everything outside the image


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


Geometry = tuple[torch.Tensor, torch.Tensor, tuple[int, int]]


class Geometric(Transform):
    """A per-image affine map from output to input pixel coordinates ``(x, y)``: ``q = A p + b``, on an
    output canvas of its own size. Subclasses say what the map is; resampling is done in one place."""

    def geometry(self, size: tuple[int, int], gens: Generators) -> Geometry:
        """``(A [N, 2, 2], b [N, 2], (height, width) of the output)`` for an input of ``size``."""
        raise NotImplementedError

    def __call__(self, x, gens):
        _check(x, gens)
        a, b, out = self.geometry(tuple(x.shape[2:]), gens)
        return resample(x, a, b, out)


def _identity(n: int) -> torch.Tensor:
    return torch.eye(2).expand(n, 2, 2).clone()


def _apply(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``A v`` per image, ``a [N, 2, 2]``, ``v [N, 2]``, elementwise (see the module's note)."""
    return torch.stack([a[:, 0, 0] * v[:, 0] + a[:, 0, 1] * v[:, 1],
                        a[:, 1, 0] * v[:, 0] + a[:, 1, 1] * v[:, 1]], dim=1)


def _compose(a: torch.Tensor, b: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The map ``p -> A (A_t p + b_t) + b`` as ``(A A_t, A b_t + b)``, elementwise."""
    rows = [torch.stack([a[:, i, 0] * a_t[:, 0, j] + a[:, i, 1] * a_t[:, 1, j] for j in range(2)], dim=1)
            for i in range(2)]
    return torch.stack(rows, dim=1), _apply(a, b_t) + b


def resample(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples of ``x`` at input coordinates ``A p + b`` for every output pixel ``p``; grey outside."""
    h, w = out
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    a, b = a.float()[:, :, :, None, None], b.float()[:, :, None, None]
    q = torch.stack([a[:, 0, 0] * xs + a[:, 0, 1] * ys + b[:, 0],
                     a[:, 1, 0] * xs + a[:, 1, 1] * ys + b[:, 1]], dim=-1)
    size = torch.tensor([x.shape[3], x.shape[2]], dtype=torch.float32)
    grid = (2 * q + 1) / size - 1  # pixel centres -> grid_sample's [-1, 1] (align_corners=False)
    grid = grid.to(x.device, x.dtype)
    return F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL


class Pad(Geometric):
    """Widen the canvas by ``width`` grey pixels on every side, so the image's borders are not special."""

    def __init__(self, width: int):
        self.width = int(width)

    def geometry(self, size, gens):
        n, w = len(gens), self.width
        return _identity(n), torch.full((n, 2), -float(w)), (size[0] + 2 * w, size[1] + 2 * w)


class Jitter(Geometric):
    """Crop each image at its own random offset in ``[0, d]`` both ways: the output is ``d`` pixels smaller."""

    def __init__(self, d: int):
        self.d = int(d)

    def geometry(self, size, gens):
        h, w = size[0] - self.d, size[1] - self.d
        if h < 1 or w < 1:
            raise XaiError(f"cannot jitter a {size[0]}x{size[1]} image by {self.d} pixels")
        offsets = torch.stack([torch.randint(self.d + 1, (2,), generator=g) for g in gens]).float()
        return _identity(len(gens)), offsets, (h, w)


class Warp(Geometric):
    """A per-image linear map about the image centre (in coordinates where the image spans [-1, 1])."""

    def matrices(self, gens: Generators) -> torch.Tensor:
        """``[N, 2, 2]``: for each image, output position -> input position."""
        raise NotImplementedError

    def geometry(self, size, gens):
        h, w = size
        m = self.matrices(gens)
        d = torch.tensor([w / 2, h / 2])  # pixels per unit of the [-1, 1] coordinates, per axis
        a = m * d[None, :, None] / d[None, None, :]
        c = torch.tensor([(w - 1) / 2, (h - 1) / 2]).expand(len(gens), 2)
        return a, c - _apply(a, c), (h, w)


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
        angles = [math.radians(_choice(self.degrees, g)) for g in gens]
        return torch.tensor([[[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]] for r in angles])


class Resize(Geometric):
    """Resample to ``size`` (for models with a fixed input size, such as a ViT's patch grid). Bilinear
    without antialiasing: meant for the mild resizes at the end of a robustness pipeline."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def geometry(self, size, gens):
        s = torch.tensor([size[1] / self.size[1], size[0] / self.size[0]])
        a = torch.diag(s).expand(len(gens), 2, 2).clone()
        return a, (s / 2 - 0.5).expand(len(gens), 2).clone(), self.size


class Compose(Transform):
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x, gens):
        _check(x, gens)
        pending: tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None = None
        for t in self.transforms:
            if isinstance(t, Geometric):
                size = pending[2] if pending else tuple(x.shape[2:])
                a_t, b_t, out = t.geometry(size, gens)
                if pending is None:
                    pending = (a_t, b_t, out)
                else:
                    a, b, _ = pending
                    pending = (*_compose(a, b, a_t, b_t), out)
                continue
            if pending is not None:
                x, pending = resample(x, *pending), None
            x = t(x, gens)
        return x if pending is None else resample(x, *pending)

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


def default_transforms(size: int) -> Compose:
    """The report's default: :func:`standard` ending at the render size (so fixed-size models such as
    the ViT take it); the feature-visualization study and the Building Blocks render with it."""
    return standard(size, out_size=size)
