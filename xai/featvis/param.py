"""How an image being optimized is represented: raw pixels, or a colour-decorrelated Fourier spectrum.

Every parameterization is an ``nn.Module`` whose ``forward()`` returns a batch ``[N, C, H, W]`` in
``[0, 1]`` (our models take [0, 1] images). Each image of the batch draws its initial noise from its
own generator (seeded ``seed + i``, or by an explicit per-image list), so image ``i`` of a batch
starts exactly where a one-image parameterization with that seed starts: batched and one-by-one
renderings agree.

The Fourier parameterization (Olah et al. 2017, "Feature Visualization") scales each frequency by
``1 / f**decay`` so that gradient descent moves low frequencies as readily as high ones, and maps
channels through the square root of ImageNet's colour covariance so that optimization steps are
decorrelated in colour. MACO (Fel et al. 2023) goes further: it fixes the magnitude of the spectrum
to that of natural images and optimizes only the phase.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaiError

# Square root of ImageNet's colour covariance (from Lucid), columns normalised to unit max norm.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                            [0.27, 0.00, -0.05],
                            [0.27, -0.09, 0.03]])
COLOR_DECORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
# Lucid's constant: the scaled spectrum's image is divided by it so the sigmoid starts unsaturated.
_FFT_MAGIC = 4.0
_LOGIT_EPS = 1e-3


Seeds = int | Sequence[int]


def per_image_seeds(seed: Seeds, n: int) -> list[int]:
    """One seed per image: ``seed + i`` for an int, or the given list (one per image)."""
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise XaiError(f"{len(seeds)} seeds for {n} images (give one int, or one seed per image)")
    return seeds


def per_image_normal(shape: Sequence[int], n: int, seed: Seeds, std: float) -> torch.Tensor:
    """``n`` tensors of ``shape`` from N(0, std^2), each drawn from its own image's generator."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(s)) * std
                        for s in per_image_seeds(seed, n)])


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """Spatial frequency (cycles per pixel) of each bin of a real 2-D FFT of an ``h x w`` image."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """``1 / f**decay`` per frequency bin, with the DC term treated as the lowest non-zero frequency."""
    return 1.0 / rfft2d_freqs(h, w).clamp(min=1.0 / max(h, w)) ** decay


def _check_images(images: torch.Tensor, n: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
    if images.dim() == 3:
        images = images.expand(n, -1, -1, -1)
    if images.dim() != 4 or images.shape[0] != n or images.shape[1] != channels or tuple(images.shape[2:]) != size:
        raise XaiError(f"start images must have shape [{n}, {channels}, {size[0]}, {size[1]}] "
                       f"(or [{channels}, {size[0]}, {size[1]}]), got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise XaiError("start images must lie in [0, 1]")
    return images.float()


class ImageParam(nn.Module):
    """A batch of ``n`` images of ``channels x size``; ``forward()`` gives them in [0, 1]."""

    def __init__(self, n: int, channels: int, size: int | tuple[int, int]):
        super().__init__()
        if n < 1 or channels not in (1, 3):
            raise XaiError(f"an image parameterization needs n >= 1 and 1 or 3 channels, got n={n}, channels={channels}")
        self.n, self.channels = n, channels
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def project(self) -> None:
        """Called after each optimizer step: bring the parameters back into their valid set, if any."""

    def image_groups(self) -> list[list[nn.Parameter]]:
        """The parameters in groups whose tensors all index this batch's images along dim 0 (one group
        here; a :class:`Stack` has one per part). What belongs to one image is row ``i`` of every
        tensor of a group: an optimizer that works per image (a normalised step) reads it from here."""
        return [list(self.parameters())]


class PixelParam(ImageParam):
    """Raw pixels, kept valid either by clipping (a projection after each step) or by a sigmoid."""

    def __init__(self, n: int, channels: int, size: int | tuple[int, int], *, valid: str = "sigmoid",
                 seed: Seeds = 0, std: float = 0.01, init: torch.Tensor | None = None):
        super().__init__(n, channels, size)
        if valid not in ("clip", "sigmoid"):
            raise XaiError(f"pixel validity must be 'clip' or 'sigmoid', got {valid!r}")
        self.valid = valid
        if init is not None:
            start = _check_images(init, n, channels, self.size)
            if valid == "sigmoid":
                start = torch.logit(start.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        else:
            noise = per_image_normal((channels, *self.size), n, seed, std)
            start = noise + 0.5 if valid == "clip" else noise
        self.pixels = nn.Parameter(start.contiguous())

    def forward(self) -> torch.Tensor:
        if self.valid == "sigmoid":
            return torch.sigmoid(self.pixels)
        return self.pixels.clamp(0, 1)

    @torch.no_grad()
    def project(self) -> None:
        if self.valid == "clip":
            self.pixels.clamp_(0, 1)


class FFTParam(ImageParam):
    """A Fourier spectrum per image, scaled by ``1/f**decay``, optionally colour-decorrelated, then a sigmoid.

    With ``magnitude`` given (MACO), the spectrum's magnitude is fixed to it and only the phase is
    optimized. The magnitude lives in the space the parameterization works in (decorrelated logits,
    before the 1/f scaling, which it replaces): :func:`natural_magnitude` measures it on real photos, so
    every image keeps the photos' power spectrum and contrast whatever its phase.
    """

    def __init__(self, n: int, channels: int, size: int | tuple[int, int], *, decay: float = 1.0,
                 decorrelate: bool = True, magnitude: torch.Tensor | None = None, seed: Seeds = 0,
                 std: float = 0.01, init: torch.Tensor | None = None):
        super().__init__(n, channels, size)
        h, w = self.size
        self.decorrelate = decorrelate and channels == 3
        self.maco = magnitude is not None
        self.register_buffer("scale", spectrum_scale(h, w, decay)[None, None])
        self.register_buffer("color", COLOR_DECORRELATION.clone())
        bins = (channels, h, w // 2 + 1)
        if self.maco:
            if init is not None:
                raise XaiError("a fixed-magnitude (MACO) parameterization cannot start from an image")
            magnitude = torch.as_tensor(magnitude, dtype=torch.float32)
            if magnitude.dim() == 2:
                magnitude = magnitude.expand(channels, -1, -1)
            if tuple(magnitude.shape) != bins:
                raise XaiError(f"a MACO magnitude must have shape {bins} or {bins[1:]}, got {tuple(magnitude.shape)}")
            self.register_buffer("magnitude", magnitude[None].contiguous())
            phase = torch.stack([torch.rand(*bins, generator=torch.Generator().manual_seed(s))
                                 for s in per_image_seeds(seed, n)]) * (2 * math.pi) - math.pi
            self.phase = nn.Parameter(phase)
        elif init is not None:
            self.spectrum = nn.Parameter(self._spectrum_of(_check_images(init, n, channels, self.size)))
        else:
            self.spectrum = nn.Parameter(per_image_normal((*bins, 2), n, seed, std))

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,dc->ndhw", x, self.color) if self.decorrelate else x

    def _spectrum_of(self, images: torch.Tensor) -> torch.Tensor:
        """The spectrum parameters whose image is ``images`` (the inverse of ``forward``)."""
        z = torch.logit(images.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        if self.decorrelate:
            z = torch.einsum("nchw,dc->ndhw", z, torch.linalg.inv(self.color))
        spec = torch.fft.rfft2(z * _FFT_MAGIC, norm="ortho") / self.scale
        return torch.view_as_real(spec).contiguous()

    def forward(self) -> torch.Tensor:
        h, w = self.size
        if self.maco:
            spec = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
            x = torch.fft.irfft2(spec, s=(h, w), norm="ortho")
        else:
            spec = torch.view_as_complex(self.spectrum) * self.scale
            x = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / _FFT_MAGIC
        return torch.sigmoid(self._colour(x))


def natural_magnitude(images: Sequence[torch.Tensor], size: int | tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Mean Fourier magnitude ``[channels, H, W//2+1]`` of real photos (each resized and centre-cropped to
    ``size``), for MACO. Measured where :class:`FFTParam` works (decorrelated logits, mean removed), so an
    image with this magnitude and any phase has the photos' power spectrum.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if not images:
        raise XaiError("natural_magnitude needs at least one image")
    mags = []
    for img in images:
        x = img if img.shape[0] == channels else img.mean(0, keepdim=True).expand(channels, -1, -1)
        s = max(h / x.shape[1], w / x.shape[2])
        new = (max(h, round(x.shape[1] * s)), max(w, round(x.shape[2] * s)))
        x = F.interpolate(x[None].float(), size=new, mode="bilinear", antialias=True, align_corners=False)
        top, left = (new[0] - h) // 2, (new[1] - w) // 2
        z = torch.logit(x[:, :, top:top + h, left:left + w].clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        if channels == 3:
            z = torch.einsum("nchw,dc->ndhw", z, torch.linalg.inv(COLOR_DECORRELATION))
        z = z - z.mean((2, 3), keepdim=True)
        mags.append(torch.fft.rfft2(z, norm="ortho").abs()[0])
    return torch.stack(mags).mean(0)


class Stack(ImageParam):
    """Several parameterizations side by side as one batch, so one optimization can compare them."""

    def __init__(self, params: list[ImageParam]):
        if not params:
            raise XaiError("Stack needs at least one parameterization")
        sizes = {(p.channels, p.size) for p in params}
        if len(sizes) != 1:
            raise XaiError(f"stacked parameterizations must share channels and size, got {sorted(sizes)}")
        channels, size = sizes.pop()
        super().__init__(sum(p.n for p in params), channels, size)
        self.parts = nn.ModuleList(params)

    def forward(self) -> torch.Tensor:
        return torch.cat([p() for p in self.parts])

    def project(self) -> None:
        for p in self.parts:
            p.project()

    def image_groups(self) -> list[list[nn.Parameter]]:
        return [g for p in self.parts for g in p.image_groups()]
