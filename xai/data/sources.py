"""Where the real data comes from, offline: Python packages and Debian packages.

Debian packages are unpacked by ``scripts/fetch-data`` into ``.cache/data/`` (mirroring their ``/``
layout), or found where ``apt-get install`` put them. Only the standard library is imported here so
that the fetch script can run before anything heavy is installed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDataError
from ..paths import data_root


@dataclass(frozen=True)
class DebianSource:
    package: str
    directory: str  # absolute path inside the package
    upstream: str  # base URL for users who are online (file names appended)
    files: dict[str, str]  # relative path -> sha256

    def candidates(self, rel: str) -> list[Path]:
        return [data_root() / self.directory.lstrip("/") / rel, Path(self.directory) / rel]

    def path(self, rel: str) -> Path:
        for p in self.candidates(rel):
            if p.is_file():
                return p
        raise MissingDataError(
            f"{rel} from the Debian package {self.package} is missing: run `scripts/fetch-data` "
            f"(or `apt-get install {self.package}`, or download {self.upstream}{rel} into "
            f"{self.candidates(rel)[0].parent})"
        )


FASHION_MNIST = DebianSource(
    package="dataset-fashion-mnist",
    directory="/usr/share/datasets/fashion-mnist",
    upstream="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files={
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
)

OPENCV_DOC = DebianSource(
    package="opencv-doc",
    directory="/usr/share/doc/opencv-doc/examples",
    upstream="https://raw.githubusercontent.com/opencv/opencv/4.6.0/samples/",
    files={},  # filled from the image manifest (xai/data/images.yaml)
)

DEBIAN_SOURCES = {s.package: s for s in (FASHION_MNIST, OPENCV_DOC)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def python_package_dir(source: str) -> Path:
    """The folder of sample files inside an installed Python package."""
    if source == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    if source == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise MissingDataError(f"unknown image source {source!r}")
