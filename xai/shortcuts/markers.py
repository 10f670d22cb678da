"""Markers: the spurious signals a Clever Hans training set plants on one class.

A marker is an alpha blend ``x' = (1 - w) * x + w * v`` with a weight map ``w`` in [0, 1] and a paint
value ``v``. That one form covers an opaque patch (``w = 1``: the pixels become exactly ``v``), a faint
watermark (``w`` = the opacity on the glyph pixels) and a lightness gradient (``w`` ramping across the
image), and it makes injection pixel-exact and reversible to reason about: pixels where ``w = 0`` are
left bit-for-bit unchanged.

The marker's *region* (where attribution mass is counted and what occlusion removes) is the set of
pixels with ``w >= max(w) / 2``: every painted pixel for a patch or watermark, the stronger half of a
gradient.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UnknownNameError, XaiError

# A 3x5 bitmap font: enough letters for short watermark texts. "#" is ink.
GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "C": ("###", "#..", "#..", "#..", "###"),
    "E": ("###", "#..", "##.", "#..", "###"),
    "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"),
    "N": ("#.#", "###", "###", "###", "#.#"),
    "O": ("###", "#.#", "#.#", "#.#", "###"),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
    "S": (".##", "#..", ".#.", "..#", "##."),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "©": ("###", "#.#", "#..", "#.#", "###"),
    " ": ("...", "...", "...", "...", "..."),
}

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True, eq=False)
class Marker:
    """A spurious signal to blend into images of shape ``[C, H, W]`` (or batches of them)."""

    name: str
    weight: torch.Tensor  # [H, W] in [0, 1]
    value: float = 1.0  # the paint; 1.0 is white on Fashion-MNIST's black background

    def __post_init__(self) -> None:
        if self.weight.dim() != 2:
            raise XaiError(f"marker {self.name!r}: weight map must be [H, W], got {tuple(self.weight.shape)}")
        if float(self.weight.min()) < 0 or float(self.weight.max()) > 1:
            raise XaiError(f"marker {self.name!r}: weights must lie in [0, 1]")
        if float(self.weight.max()) == 0:
            raise XaiError(f"marker {self.name!r} paints no pixel")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def region(self) -> torch.Tensor:
        """Boolean ``[H, W]``: the pixels the marker chiefly occupies (``w >= max(w) / 2``)."""
        return self.weight >= self.weight.max() / 2

    @property
    def area_share(self) -> float:
        """Fraction of the image the region covers: the attribution mass a model indifferent to it would give."""
        return float(self.region.float().mean())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the marker blended in; ``x`` is ``[C, H, W]`` or ``[B, C, H, W]`` in [0, 1]."""
        if x.dim() not in (3, 4) or tuple(x.shape[-2:]) != self.shape:
            raise XaiError(f"marker {self.name!r} is {self.shape[0]}x{self.shape[1]}; "
                           f"it cannot mark images of shape {tuple(x.shape)}")
        w = self.weight.to(x.device, x.dtype)
        # In IEEE arithmetic 1 * x + 0 * v == x and 0 * x + 1 * v == v exactly, so untouched pixels stay
        # bit-identical and opaque ones become exactly the paint value.
        return (1 - w) * x + w * self.value

    def describe(self) -> dict:
        """JSON-able identity of the marker (part of cache keys)."""
        return {"name": self.name, "value": self.value, "area_share": round(self.area_share, 6),
                "weight_sum": round(float(self.weight.double().sum()), 6),
                "weight_hash": hash_tensor(self.weight)}


def hash_tensor(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()[:16]


def _check_box(top: int, left: int, height: int, width: int, shape: tuple[int, int], what: str) -> None:
    h, w = shape
    if height < 1 or width < 1:
        raise XaiError(f"{what}: size must be at least 1x1, got {height}x{width}")
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise XaiError(f"{what}: rows {top}..{top + height - 1}, columns {left}..{left + width - 1} "
                       f"fall outside the {h}x{w} image")


def corner_position(corner: str, height: int, width: int, shape: tuple[int, int], margin: int) -> tuple[int, int]:
    """Top-left pixel of a ``height x width`` box ``margin`` pixels in from ``corner``."""
    if corner not in CORNERS:
        raise UnknownNameError("corner", corner, CORNERS)
    h, w = shape
    top = margin if corner.startswith("top") else h - margin - height
    left = margin if corner.endswith("left") else w - margin - width
    return top, left


def box_region(top: int, left: int, height: int, width: int, shape: tuple[int, int] = (28, 28)) -> torch.Tensor:
    """A boolean ``[H, W]`` rectangle, for detectors given a candidate region rather than a marker."""
    _check_box(top, left, height, width, shape, "region")
    region = torch.zeros(shape, dtype=torch.bool)
    region[top:top + height, left:left + width] = True
    return region


def stamp(name: str, rows: Sequence[str], top: int, left: int, *, opacity: float = 1.0, value: float = 1.0,
          shape: tuple[int, int] = (28, 28)) -> Marker:
    """A bitmap (``"#"`` = ink) stamped at ``(top, left)`` with the given opacity."""
    if not rows or len({len(r) for r in rows}) != 1:
        raise XaiError(f"marker {name!r}: the bitmap rows must be non-empty and of equal length")
    if not 0 < opacity <= 1:
        raise XaiError(f"marker {name!r}: opacity must be in (0, 1], got {opacity}")
    _check_box(top, left, len(rows), len(rows[0]), shape, f"marker {name!r}")
    ink = torch.tensor([[c == "#" for c in r] for r in rows], dtype=torch.float32)
    weight = torch.zeros(shape)
    weight[top:top + ink.shape[0], left:left + ink.shape[1]] = ink * opacity
    return Marker(name, weight, value)


def square(size: int = 4, corner: str = "top-left", *, margin: int = 1, value: float = 1.0,
           shape: tuple[int, int] = (28, 28)) -> Marker:
    """A small opaque square in a fixed corner (the copyright tag of Lapuschkin et al., reduced to a patch)."""
    top, left = corner_position(corner, size, size, shape, margin)
    return stamp(f"square-{size}px-{corner}", ["#" * size] * size, top, left, value=value, shape=shape)


def cross(size: int = 5, corner: str = "top-right", *, margin: int = 1, value: float = 1.0,
          shape: tuple[int, int] = (28, 28)) -> Marker:
    """An opaque plus sign, a second local marker shape for the multi-marker set."""
    if size < 3 or size % 2 == 0:
        raise XaiError(f"a cross needs an odd size >= 3, got {size}")
    mid = size // 2
    rows = ["#" * size if i == mid else "." * mid + "#" + "." * mid for i in range(size)]
    top, left = corner_position(corner, size, size, shape, margin)
    return stamp(f"cross-{size}px-{corner}", rows, top, left, value=value, shape=shape)


def ring(size: int = 5, corner: str = "bottom-left", *, margin: int = 1, value: float = 1.0,
         shape: tuple[int, int] = (28, 28)) -> Marker:
    """An opaque hollow square, a third local marker shape."""
    if size < 3:
        raise XaiError(f"a ring needs size >= 3, got {size}")
    rows = ["#" * size] + ["#" + "." * (size - 2) + "#"] * (size - 2) + ["#" * size]
    top, left = corner_position(corner, size, size, shape, margin)
    return stamp(f"ring-{size}px-{corner}", rows, top, left, value=value, shape=shape)


def watermark(text: str = "©XAI", *, opacity: float = 0.3, corner: str = "bottom-right", margin: int = 1,
              value: float = 1.0, shape: tuple[int, int] = (28, 28)) -> Marker:
    """Faint text in the 3x5 bitmap font, blended at low opacity (a watermark rather than a patch)."""
    unknown = sorted({c for c in text.upper() if c not in GLYPHS})
    if unknown:
        raise XaiError(f"watermark text {text!r}: no glyph for {', '.join(map(repr, unknown))}; "
                       f"available: {''.join(sorted(GLYPHS)).strip()}")
    glyphs = [GLYPHS[c] for c in text.upper()]
    rows = [".".join(g[r] for g in glyphs) for r in range(5)]
    top, left = corner_position(corner, 5, len(rows[0]), shape, margin)
    return stamp(f"watermark-{text}-{opacity:g}", rows, top, left, opacity=opacity, value=value, shape=shape)


def lightness_gradient(strength: float = 0.3, direction: str = "left-to-right", *, value: float = 1.0,
                       shape: tuple[int, int] = (28, 28)) -> Marker:
    """A ramp that lightens the image towards one side, up to ``strength`` of the way to ``value``."""
    directions = ("left-to-right", "right-to-left", "top-to-bottom", "bottom-to-top")
    if direction not in directions:
        raise UnknownNameError("gradient direction", direction, directions)
    if not 0 < strength <= 1:
        raise XaiError(f"gradient strength must be in (0, 1], got {strength}")
    h, w = shape
    n = w if direction in directions[:2] else h
    ramp = torch.linspace(0, strength, n)
    if direction in ("right-to-left", "bottom-to-top"):
        ramp = ramp.flip(0)
    weight = ramp.expand(h, w) if direction in directions[:2] else ramp[:, None].expand(h, w)
    return Marker(f"gradient-{direction}-{strength:g}", weight.contiguous(), value)
