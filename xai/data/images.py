"""The photo manifest, its resolver, and a loader that copes with odd files or rejects them clearly."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import MissingDataError, UnknownNameError, XaiError
from .sources import DEBIAN_SOURCES, python_package_dir, sha256

MANIFEST = Path(__file__).with_name("images.yaml")
MAX_PIXELS = 40_000_000  # ~ a 7000 x 5700 photo; larger inputs are refused before decoding


@dataclass(frozen=True)
class Photo:
    id: str
    source: str  # skimage | matplotlib | a Debian package name
    file: str
    sha256: str
    label: int | None  # class index in ``label_space``; None for an image with no class there
    label_name: str | None
    note: str
    credit: str
    root: str | None = None  # a config's image folder set: ``file`` is relative to it
    label_space: str = "imagenet-1k"  # the manifest's photos: ImageNet-1k; a folder set: its own

    @property
    def path(self) -> Path:
        if self.root is not None:
            return Path(self.root) / self.file
        if self.source in DEBIAN_SOURCES:
            return DEBIAN_SOURCES[self.source].path(self.file)
        p = python_package_dir(self.source) / self.file
        if not p.is_file():
            raise MissingDataError(f"{self.file} is missing from the {self.source} package: pip install {self.source}")
        return p


@functools.cache
def manifest() -> dict[str, Photo]:
    with open(MANIFEST) as f:
        rows = yaml.safe_load(f)["photos"]
    return {r["id"]: Photo(**r) for r in rows}


# Photos of a config's image folder sets (xai.data.folders), added by :func:`register`.
_REGISTERED: dict[str, Photo] = {}


def register(photos) -> list[str]:
    """Make folder-set photos known to :func:`photo` and :func:`load`; returns their ids. An id that
    names a manifest photo, or another file under the same id, is refused."""
    for p in photos:
        if p.id in manifest():
            raise XaiError(f"{p.path}: its id {p.id!r} is a manifest photo's; rename the file or the set")
        old = _REGISTERED.get(p.id)
        if old is not None and old.path != p.path:
            raise XaiError(f"{p.path}: its id {p.id!r} is already {old.path}'s; rename one")
        _REGISTERED[p.id] = p
    return [p.id for p in photos]


def photo(photo_id: str) -> Photo:
    photos = manifest()
    if photo_id in photos:
        return photos[photo_id]
    if photo_id in _REGISTERED:
        return _REGISTERED[photo_id]
    raise UnknownNameError("image", photo_id, {**photos, **_REGISTERED})


def verify(photo_id: str) -> Path:
    """The photo's path, after checking its sha256 against the manifest."""
    p = photo(photo_id)
    path = p.path
    digest = sha256(path)
    if digest != p.sha256:
        raise XaiError(f"{path}: sha256 {digest[:12]}... does not match the manifest's {p.sha256[:12]}... for {photo_id!r}")
    return path


def load(photo_id: str) -> torch.Tensor:
    """A manifest photo (checked against its sha256) as an RGB float tensor ``[3, H, W]`` in [0, 1]."""
    return load_file(verify(photo_id))


def resolve(image: str) -> torch.Tensor:
    """A manifest id or a path to an image file."""
    if image in manifest():
        return load(image)
    if Path(image).exists() or any(sep in image for sep in "/\\.") :
        return load_file(image)
    raise UnknownNameError("image", image, manifest(), hint="give a manifest id or a file path")


def load_file(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Any image file as RGB ``[3, H, W]`` float32 in [0, 1].

    Grey, grey+alpha, palette, RGBA (composited on white), CMYK, 16-bit and 32-bit integer or float
    images are converted; EXIF orientation is applied. Corrupt, truncated or non-image files and
    images over ``max_pixels`` raise an :class:`XaiError` naming the file.
    """
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise XaiError(f"{path}: no such file")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise XaiError(f"{path}: {w}x{h} = {w * h / 1e6:.1f} MP is over the {max_pixels / 1e6:.0f} MP limit")
                if w == 0 or h == 0:
                    raise XaiError(f"{path}: empty image ({w}x{h})")
                im.load()
                im = ImageOps.exif_transpose(im)
                arr = _to_rgb_array(im)
    except XaiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise XaiError(f"{path}: over the {max_pixels / 1e6:.0f} MP limit ({e})") from e
    except UnidentifiedImageError as e:
        raise XaiError(f"{path}: not an image file PIL can read") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise XaiError(f"{path}: corrupt or truncated image ({e})") from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _to_rgb_array(im) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1] from any PIL mode, keeping 16-bit precision."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "I":
        a = np.asarray(im, dtype=np.int64).astype(np.float32)
        hi = 65535.0 if a.max() > 255 else 255.0
        return np.repeat(np.clip(a / hi, 0, 1)[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not np.isfinite([lo, hi]).all():
            raise XaiError("float image with non-finite values")
        a = (a - lo) / (hi - lo) if hi > 1 or lo < 0 else a
        return np.repeat(np.nan_to_num(a)[..., None], 3, axis=2).astype(np.float32)
    if mode in ("1", "L"):
        a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return rgba[..., :3] * alpha + (1.0 - alpha)  # on white, as a viewer shows it
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
