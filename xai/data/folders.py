"""A user's labelled images in the ImageFolder layout (``root/<class>/<file>``), as photos of the report.

A folder set is labelled in one label space: ImageNet-1k's, or a user's own (the class list file of
a model of the config). Each folder must name one of the space's classes (case, ``_``, ``-`` and
spaces ignored), so ``Tabby`` and ``tabby`` both name ImageNet's "tabby", and a folder that names no
class is an error with close matches, before any work. Its images then become photos of the report
for every model of that label space, with ids ``<set>-<class>-<file stem>`` and their sha256, so every
study that explains photos explains them too, cached by content like the manifest's photos.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDataError, UnknownNameError, XaiError
from .sources import sha256

IMAGENET_1K = "imagenet-1k"  # xai.models.IMAGENET_1K, without importing torch

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass(frozen=True)
class FolderSource:
    name: str
    root: str
    per_class: int | None = None  # first N files (by name) of each class; None: all
    label_space: str = IMAGENET_1K
    classes: tuple[str, ...] | None = None  # the label space's class names; None: ImageNet-1k's

    def class_names(self) -> list[str]:
        if self.classes is not None:
            return list(self.classes)
        from ..models.entry import imagenet_class_names

        return imagenet_class_names()


_DIGESTS: dict[tuple, str] = {}


def digest(path: Path) -> str:
    """The file's sha256, computed once per process while its size and modification time stay the same:
    every study's key and the photos' registration read all of a set's images."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256(path)
    return _DIGESTS[key]


def normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def class_folders(src: FolderSource) -> list[Path]:
    root = Path(src.root).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"image folder set {src.name!r}: no such folder {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise XaiError(f"image folder set {src.name!r}: {root} has no class folders (expected root/<class>/<file>)")
    return folders


def unmatched(src: FolderSource) -> list[str]:
    """The set's class folders that name none of its label space's classes."""
    known = {normalise(c) for c in src.class_names()}
    return [f.name for f in class_folders(src) if normalise(f.name) not in known]


def match(src: FolderSource, class_names: list[str] | None = None) -> dict[str, int]:
    """``{folder name: class index}`` in ``class_names`` (default: the set's label space's); a folder that
    names no class raises with close matches."""
    class_names = src.class_names() if class_names is None else class_names
    index = {}
    for i, c in enumerate(class_names):
        index.setdefault(normalise(c), i)
    out = {}
    for folder in class_folders(src):
        key = normalise(folder.name)
        if key not in index:
            raise UnknownNameError(f"class (folder {folder} of image set {src.name!r})", folder.name, class_names)
        out[folder.name] = index[key]
    return out


def scan(src: FolderSource):
    """The set's images as :class:`~xai.data.images.Photo` rows, labelled in the set's label space."""
    from .images import Photo

    class_names = src.class_names()
    labels = match(src, class_names)
    root = str(Path(src.root).expanduser().resolve())
    photos, seen = [], set()
    for folder in class_folders(src):
        for f in _images(src, folder):
            pid = f"{_slug(src.name)}-{_slug(folder.name)}-{_slug(f.stem)}"
            if pid in seen:
                raise XaiError(f"image folder set {src.name!r}: two files give the id {pid!r} ({f}); rename one")
            seen.add(pid)
            label = labels[folder.name]
            photos.append(Photo(id=pid, source=f"folder:{src.name}", file=f"{folder.name}/{f.name}",
                                root=root, sha256=digest(f),
                                label=label, label_name=class_names[label], label_space=src.label_space,
                                note=f"From the image folder set {src.name!r} ({folder.name}/{f.name}).",
                                credit=f"the report config's image set {src.name!r}"))
    return photos


def _images(src: FolderSource, folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise XaiError(f"image folder set {src.name!r}: {folder} has no image files ({', '.join(sorted(SUFFIXES))})")
    return files[:src.per_class] if src.per_class is not None else files


def files(sources) -> list[Path]:
    """Every image file the sets read (for cache keys); a class folder without images raises."""
    return [f for src in sources for folder in class_folders(src) for f in _images(src, folder)]
