"""Concept images that can be made on this machine: textures, colours, crops of the manifest photos,
random images for TCAV's random sets, and the Clever Hans marker.

Broden's labelled textures and the paper's concept folders are not available offline, so:

* **Textures** are drawn procedurally, in the spirit of Broden's texture classes: stripes, dots,
  checkerboards and zigzags, at a given period (px), in two colours. Each image draws its own
  orientation, phase and a period within +-15 % (seeded), so a set varies the way photos of one
  texture do and a CAV cannot key on one exact pattern. Drawn at twice the size and downsampled with
  antialiasing, so edges are not aliased.
* **Colours** are flat images of one colour with a per-image brightness jitter and faint pixel noise.
* **Photo crops** come from boxes drawn by hand on the manifest photos (:data:`PHOTO_CROPS`, in the
  photos' own pixels, ``(top, left, bottom, right)``, bottom/right exclusive): each image is a random
  square inside one of the concept's boxes, resized. No photo has text large enough for a "text"
  concept (the only lettering, the name tag in ``grace_hopper`` and the logo in ``soccer_ball``, is
  under 130 x 45 px), so there is none. A concept cut from a class's own photo (fur from ``chelsea`` for
  the tabby class) is partly circular: :func:`crop_sources` says which photos a concept comes from.
* **Class images**: the manifest has one photo per class, so :func:`photo_views` makes a class's set
  from random views of its photo.
* **Random images** for the random sets: random square crops (a fifth of the shorter side up to all of
  it, anywhere) of every manifest photo, the target classes' photos included, as the paper's random
  ImageNet images include every class. For Fashion-MNIST, random test images.
* **The marker**: blank (black) images carrying a Clever Hans marker, or given images with it blended in.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import UnknownNameError, XaiError

Box = tuple[int, int, int, int]  # top, left, bottom, right (bottom and right exclusive), photo pixels

PHOTO_CROPS: dict[str, list[tuple[str, Box]]] = {
    "fur": [("chelsea", (5, 190, 95, 330)),  # the cat's striped forehead
            ("chelsea", (175, 40, 290, 160)),  # its cheek, with whiskers
            ("pekinese", (330, 140, 470, 330)),  # the dog's chest
            ("baboon", (110, 0, 380, 110))],  # the mandrill's side whiskers
    "sky": [("lakeside", (0, 70, 75, 300)),  # blue sky with a thin cloud
            ("rocket", (0, 190, 95, 300))],  # dusk sky beside the rocket, no tower in it
    "water": [("lakeside", (165, 30, 250, 370))],
    "grass": [("soccer_ball", (262, 0, 340, 190))],  # the pitch, with part of a white line
    "foliage": [("squirrel", (10, 0, 190, 140)), ("squirrel", (0, 330, 110, 535)),
                ("butterfly", (230, 395, 356, 493))],  # leaves, the butterfly's wing excluded
    "wood": [("coffee", (60, 0, 400, 70)), ("coffee", (0, 450, 150, 600))],  # the table, saucer excluded
    "flag": [("grace_hopper", (0, 0, 300, 120))],  # stars and stripes
}

TEXTURES = ("stripes", "dots", "checkerboard", "zigzag")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.65, 0.15), "blue": (0.1, 0.25, 0.85), "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.05), "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05),
}


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def texture(kind: str, n: int, size: int, *, period: float = 16.0, colours: Sequence[Sequence[float]] = ((0, 0, 0),
            (1, 1, 1)), seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` images of one texture (see the module docstring), in two colours."""
    if kind not in TEXTURES:
        raise UnknownNameError("texture", kind, TEXTURES)
    if period < 2 or n < 1 or size < 2:
        raise XaiError(f"a texture needs n >= 1, size >= 2 and a period of at least 2 px, got {n}, {size}, {period}")
    fg, bg = (torch.tensor(c, dtype=torch.float32).view(3, 1, 1) for c in colours)
    big = 2 * size
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(big, dtype=torch.float32) / 2, torch.arange(big, dtype=torch.float32) / 2,
                            indexing="ij")
    out = []
    for _ in range(n):
        theta = _uniform(gen, 0, math.pi)
        p = period * _uniform(gen, 0.85, 1.15)
        du, dv = _uniform(gen, 0, p), _uniform(gen, 0, p)
        u = xs * math.cos(theta) + ys * math.sin(theta) + du
        v = -xs * math.sin(theta) + ys * math.cos(theta) + dv
        if kind == "stripes":
            ink = torch.remainder(u, p) < p / 2
        elif kind == "checkerboard":
            ink = (torch.remainder(u, p) < p / 2) ^ (torch.remainder(v, p) < p / 2)
        elif kind == "dots":
            cu, cv = torch.remainder(u, p) - p / 2, torch.remainder(v, p) - p / 2
            ink = cu * cu + cv * cv < (0.3 * p) ** 2
        else:  # zigzag: stripes whose offset is a triangle wave along them
            tri = torch.abs(torch.remainder(v, p) - p / 2)
            ink = torch.remainder(u + tri, p) < p / 2
        img = torch.where(ink, fg, bg)
        out.append(F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def colour(rgb: Sequence[float], n: int, size: int, *, jitter: float = 0.08, noise: float = 0.02,
           seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` flat images of ``rgb``, each scaled by a brightness within ``1 +- jitter``,
    with Gaussian pixel noise of ``noise`` (a set of identical images would teach a CAV one point)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    scale = 1 + jitter * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    return (base * scale + noise * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)


def standard_textures(n: int, size: int, periods: Sequence[float] = (8, 24), seed: int = 0) -> dict[str, torch.Tensor]:
    """Every texture at every period, black on white: ``{"stripes-8px": images, ...}``."""
    return {f"{kind}-{p:g}px": texture(kind, n, size, period=p, seed=seed + 101 * k + i)
            for k, kind in enumerate(TEXTURES) for i, p in enumerate(periods)}


def standard_colours(n: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return {name: colour(rgb, n, size, seed=seed + k) for k, (name, rgb) in enumerate(COLOURS.items())}


def crop_sources(concept: str) -> list[str]:
    """The manifest photos a crop concept is cut from."""
    if concept not in PHOTO_CROPS:
        raise UnknownNameError("photo-crop concept", concept, PHOTO_CROPS)
    return list(dict.fromkeys(pid for pid, _ in PHOTO_CROPS[concept]))


def _square_in(box: Box, gen: torch.Generator, lo: float, hi: float) -> Box:
    top, left, bottom, right = box
    side = max(2, int(round(min(bottom - top, right - left) * _uniform(gen, lo, hi))))
    t = top + int(torch.randint(0, bottom - top - side + 1, (), generator=gen))
    l = left + int(torch.randint(0, right - left - side + 1, (), generator=gen))
    return t, l, t + side, l + side


def _cut(img: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    t, l, b, r = box
    patch = img[:, t:b, l:r]
    out = F.interpolate(patch[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp(0, 1)


def photo_crops(concept: str, n: int, size: int, *, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` random squares (half the box's shorter side up to all of it) inside the
    concept's boxes, the boxes taken in turn."""
    from ..data import images

    if concept not in PHOTO_CROPS:
        raise UnknownNameError("photo-crop concept", concept, PHOTO_CROPS)
    boxes = PHOTO_CROPS[concept]
    photos = {pid: images.load(pid) for pid in crop_sources(concept)}
    for pid, box in boxes:
        h, w = photos[pid].shape[1:]
        if not (0 <= box[0] < box[2] <= h and 0 <= box[1] < box[3] <= w):
            raise XaiError(f"crop box {box} of concept {concept!r} lies outside {pid} ({h}x{w})")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        pid, box = boxes[i % len(boxes)]
        out.append(_cut(photos[pid], _square_in(box, gen, 0.5, 1.0), size))
    return torch.stack(out)


def random_photo_crops(n: int, size: int, *, photos: Sequence[str] | None = None, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` random squares (a fifth of the shorter side up to all of it) from the
    manifest photos (all of them by default), the photo drawn uniformly for each crop."""
    from ..data import images

    ids = list(photos) if photos is not None else list(images.manifest())
    if not ids:
        raise XaiError("random crops need at least one photo")
    loaded = [images.load(pid) for pid in ids]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        img = loaded[int(torch.randint(0, len(loaded), (), generator=gen))]
        h, w = img.shape[1:]
        out.append(_cut(img, _square_in((0, 0, h, w), gen, 0.2, 1.0), size))
    return torch.stack(out)


def photo_views(photo_id: str, n: int, size: int, *, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` views of one photo for TCAV's class images: random squares of 60-100 % of the
    shorter side, half of them mirrored. The manifest has one photo per class, so a class's "images" are
    views of that photo: its TCAV scores say what moves the score on that photo, not on the class at large."""
    from ..data import images

    img = images.load(photo_id)
    h, w = img.shape[1:]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        view = _cut(img, _square_in((0, 0, h, w), gen, 0.6, 1.0), size)
        out.append(view.flip(-1) if i % 2 else view)
    return torch.stack(out)


def marker_images(marker, n: int, *, background: torch.Tensor | None = None, channels: int = 1) -> torch.Tensor:
    """``n`` images carrying ``marker`` (an :class:`xai.shortcuts.Marker`): blank (black) ones, or the
    first ``n`` of ``background`` with the marker blended in."""
    if background is None:
        background = torch.zeros(n, channels, *marker.shape)
    if len(background) < n:
        raise XaiError(f"{n} marked images asked for, {len(background)} background images given")
    return marker.apply(background[:n])
