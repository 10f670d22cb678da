"""Shortcut mass: how much of an explanation falls on a candidate region (a marker, a watermark).

``region_mass`` is the share of absolute attribution inside the region, per image (the "energy" form of
the pointing game, Wang et al. 2020, applied to a region we suspect rather than the object). Absolute
values, because evidence against a class is reliance too: a model that lowers a score when a marker
is absent uses the marker as surely as one that raises it. ``concentration`` divides by the region's
share of the image: 1 is what a map that ignores the region's content would give on average; a
shortcut shows as a concentration far above 1.
"""
from __future__ import annotations

import torch

from ..errors import XaiError


def check_region(region: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A boolean region that fits the maps, ``[H, W]`` (one for every image) or ``[B, H, W]`` (one per
    image), each covering some but not all of the image."""
    if not isinstance(region, torch.Tensor) or region.dim() not in (2, 3):
        got = tuple(region.shape) if isinstance(region, torch.Tensor) else type(region).__name__
        raise XaiError(f"a region is a boolean [H, W] mask (or [B, H, W], one per image), got {got}")
    if tuple(region.shape[-2:]) != tuple(shape):
        raise XaiError(f"the region is {region.shape[-2]}x{region.shape[-1]} but the maps are {shape[0]}x{shape[1]}: "
                       "it does not lie inside the image")
    region = region.bool()
    flat = region.flatten(-2)
    if not flat.any(-1).all():
        raise XaiError("the region is empty" + (" for some image" if region.dim() == 3 else ""))
    if flat.all(-1).any():
        raise XaiError("the region covers the whole image, so attribution inside it says nothing")
    return region


def _maps(attributions: torch.Tensor) -> torch.Tensor:
    if attributions.dim() == 4:
        return attributions.abs().sum(1)
    if attributions.dim() == 3:
        return attributions.abs()
    raise XaiError(f"expected attributions [B, C, H, W] or maps [B, H, W], got {tuple(attributions.shape)}")


def region_mass(attributions: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of ``|attribution|`` (summed over channels) inside ``region`` (``[H, W]``, or
    ``[B, H, W]`` with one region per image).

    NaN for an all-zero map (a rectified CAM can be empty): it has no mass to place anywhere, and
    averaging such images as 0 would count them as evidence against the region.
    """
    a = _maps(attributions).detach().double()
    region = check_region(region, tuple(a.shape[-2:])).to(a.device)
    total = a.sum((-2, -1))
    inside = (a * region).sum((-2, -1))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(a.dtype).tiny),
                       torch.full_like(total, float("nan"))).float()


def area_share(region: torch.Tensor) -> float:
    return float(region.bool().float().mean())


def concentration(attributions: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image, region mass divided by the region's area share (1 = no preference for the region)."""
    return region_mass(attributions, region) / area_share(region)


def summarize(masses: torch.Tensor, region: torch.Tensor) -> dict:
    """Mean (over images with a defined mass), its standard error, and the concentration of the mean."""
    m = masses[~masses.isnan()].double()
    n = int(m.numel())
    mean = float(m.mean()) if n else float("nan")
    sem = float(m.std(unbiased=True) / n ** 0.5) if n > 1 else float("nan")
    return {"mass": mean, "mass_sem": sem, "concentration": mean / area_share(region) if n else float("nan"),
            "images": n, "empty_maps": int(masses.isnan().sum())}
