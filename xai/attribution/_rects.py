"""Changed rectangles of a batch of occluded images, one per image, and the index tensors that move
values between them and the full maps.

Every image of a batch gets a rectangle of the same size (the batch's largest), so that patches stack
into one tensor; a rectangle that would cross the map's edge is shifted inside it rather than clipped.
A rectangle may so cover more than what changed: the values there are recomputed from correct inputs,
so they equal the cached ones up to rounding, and nothing is lost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _floor_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


@dataclass(frozen=True)
class Rects:
    """One ``h x w`` rectangle per image at ``(y[i], x[i])``, inside an ``H x W`` map."""

    y: torch.Tensor  # [N] long
    x: torch.Tensor  # [N] long
    h: int
    w: int
    H: int
    W: int

    @property
    def n(self) -> int:
        return self.y.numel()

    @property
    def fraction(self) -> float:
        """The share of the map one rectangle covers."""
        return self.h * self.w / (self.H * self.W)

    def same(self, other: Rects) -> bool:
        return ((self.h, self.w, self.H, self.W) == (other.h, other.w, other.H, other.W)
                and torch.equal(self.y, other.y) and torch.equal(self.x, other.x))


def _fit(lo: torch.Tensor, hi: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """Starts and common length of intervals covering ``[lo, hi)`` (clipped to ``[0, size)``), shifted
    inside the map where the common length would cross its end."""
    lo, hi = lo.clamp(0, size), hi.clamp(0, size)
    length = max(1, int((hi - lo).max()))
    return lo.clamp(max=size - length), length


def make(y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, H: int, W: int) -> Rects:
    """Rectangles covering ``[y0, y1) x [x0, x1)`` per image."""
    y, h = _fit(y0, y1, H)
    x, w = _fit(x0, x1, W)
    return Rects(y, x, h, w, H, W)


@dataclass(frozen=True)
class Window:
    """A convolution or pooling window along both axes: what its output rectangle needs of its input."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int]  # top and left padding (the bottom and right follow from the output size)
    out: tuple[int, int]  # output map size

    def through(self, r: Rects) -> tuple[Rects, Rects]:
        """``(output rectangles that can change, input rectangles they read)``; the input ones may
        cross the map's edge, into the padding."""
        outs, ins = [], []
        for start, length, k, s, d, p, size in ((r.y, r.h, *self._axis(0)), (r.x, r.w, *self._axis(1))):
            reach = d * (k - 1)
            # output o reads inputs [o*s - p, o*s - p + reach]: it changes if that meets [start, start + length)
            lo = -_floor_div(-(start + p - reach), s)
            hi = _floor_div(start + length - 1 + p, s) + 1
            o, n_out = _fit(lo, hi, size)
            outs.append((o, n_out))
            ins.append((o * s - p, (n_out - 1) * s + reach + 1))
        (oy, oh), (ox, ow) = outs
        (iy, ih), (ix, iw) = ins
        return Rects(oy, ox, oh, ow, *self.out), Rects(iy, ix, ih, iw, r.H, r.W)

    def _axis(self, i: int) -> tuple[int, int, int, int, int]:
        return self.kernel[i], self.stride[i], self.dilation[i], self.pad[i], self.out[i]


def union(rects: list[Rects]) -> Rects:
    """Per image, the smallest rectangle (of a common size) covering all of ``rects``."""
    first = rects[0]
    y0 = torch.stack([r.y for r in rects]).amin(0)
    y1 = torch.stack([r.y + r.h for r in rects]).amax(0)
    x0 = torch.stack([r.x for r in rects]).amin(0)
    x1 = torch.stack([r.x + r.w for r in rects]).amax(0)
    return make(y0, y1, x0, x1, first.H, first.W)


@dataclass(frozen=True)
class Crop:
    """How to read ``target`` rectangles of a map whose values differ from the cached ones only in
    ``source``: rows of the cached map (flattened ``[H*W (+1 padding row), C]``), then the patch's rows
    copied over them where the rectangles meet."""

    cached_rows: torch.Tensor  # [N*h*w] index into the cached map's rows; H*W is the padding row
    into: torch.Tensor  # rows of the crop that come from the patch
    from_patch: torch.Tensor  # ... and which patch rows they come from
    shape: tuple[int, int, int]  # N, h, w
    whole_patch: bool  # the target is the source: the patch itself is the crop

    def to(self, device: torch.device) -> Crop:
        return Crop(self.cached_rows.to(device), self.into.to(device), self.from_patch.to(device), self.shape,
                    self.whole_patch)


def crop(source: Rects, target: Rects) -> Crop:
    n = source.n
    if source.same(target):
        empty = torch.empty(0, dtype=torch.long)
        return Crop(empty, empty, empty, (n, target.h, target.w), True)
    yy = target.y[:, None] + torch.arange(target.h)  # [N, h]
    xx = target.x[:, None] + torch.arange(target.w)  # [N, w]
    inside = ((yy >= 0) & (yy < source.H))[:, :, None] & ((xx >= 0) & (xx < source.W))[:, None, :]
    cached = torch.where(inside, yy[:, :, None] * source.W + xx[:, None, :], source.H * source.W)
    py, px = yy - source.y[:, None], xx - source.x[:, None]
    in_patch = ((py >= 0) & (py < source.h))[:, :, None] & ((px >= 0) & (px < source.w))[:, None, :]
    img = torch.arange(n)[:, None, None]
    patch_rows = (img * source.h + py[:, :, None]) * source.w + px[:, None, :]
    crop_rows = torch.arange(n * target.h * target.w).view(n, target.h, target.w)
    return Crop(cached.flatten(), crop_rows[in_patch], patch_rows[in_patch], (n, target.h, target.w), False)


def scatter_rows(r: Rects) -> torch.Tensor:
    """Rows of a batch of full maps ``[N*H*W, C]`` (channels last) that the patches ``[N*h*w, C]`` fill."""
    img = torch.arange(r.n)[:, None, None]
    yy = r.y[:, None, None] + torch.arange(r.h)[None, :, None]
    xx = r.x[:, None, None] + torch.arange(r.w)[None, None, :]
    return ((img * r.H + yy) * r.W + xx).flatten()
