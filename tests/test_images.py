"""The photo manifest and the loader's edge cases, on odd files generated here."""
import struct
import zlib

import numpy as np
import pytest
import tolerance as tol
import torch
from PIL import Image

from xai.data import images
from xai.data.sources import sha256
from xai.errors import UnknownNameError, XaiError


def test_manifest_is_complete_and_verified():
    photos = images.manifest()
    assert len(photos) >= 16
    assert any(p.label is None for p in photos.values())  # out-of-distribution images are marked
    for pid, p in photos.items():
        assert sha256(p.path) == p.sha256, pid
        assert p.credit and p.note
        if p.label is not None:
            from xai.models.imagenet import imagenet_class_names

            assert imagenet_class_names()[p.label] == p.label_name, pid


def test_load_gives_rgb_unit_range():
    x = images.load("camera")  # a greyscale source file
    assert x.dtype == torch.float32 and x.shape[0] == 3 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_unknown_id_suggests():
    with pytest.raises(UnknownNameError, match="chelsea"):
        images.load("chelsae")


def test_modified_manifest_file_is_refused(monkeypatch, tmp_path):
    copy = tmp_path / "chelsea.png"
    copy.write_bytes(images.photo("chelsea").path.read_bytes()[:-1] + b"\0")
    bad = images.Photo(**{**images.photo("chelsea").__dict__})
    monkeypatch.setattr(images.Photo, "path", property(lambda self: copy))
    with pytest.raises(XaiError, match="sha256"):
        images.load(bad.id)


@pytest.fixture
def odd(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    files = {}
    Image.fromarray(rgb[..., 0]).save(files.setdefault("grey", tmp_path / "grey.png"))
    rgba = np.dstack([rgb, np.full((20, 30), 0, np.uint8)])
    rgba[:10, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=8).save(files.setdefault("palette", tmp_path / "p.png"))
    sixteen = (np.linspace(0, 65535, 600).reshape(20, 30)).astype(np.uint16)
    Image.fromarray(sixteen).save(files.setdefault("16bit", tmp_path / "sixteen.png"))
    # EXIF orientation 6: the stored 20x30 image is displayed rotated to 30x20.
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(files.setdefault("exif", tmp_path / "rot.jpg"), exif=exif.tobytes())
    good = tmp_path / "good.png"
    Image.fromarray(rgb).save(good)
    files["truncated"] = tmp_path / "truncated.png"
    files["truncated"].write_bytes(good.read_bytes()[:-40])
    files["text"] = tmp_path / "notes.jpg"
    files["text"].write_text("not an image")
    files["empty"] = tmp_path / "empty.png"
    files["empty"].write_bytes(b"")
    files["huge"] = tmp_path / "huge.png"
    files["huge"].write_bytes(_png_header_only(100_000, 100_000))
    return files, rgb, sixteen


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels: must be refused before any decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_odd_but_valid_files(odd):
    files, rgb, sixteen = odd
    grey = images.load_file(files["grey"])
    # Rule 2: one division of an integer, in float32 here or in float64 there, then rounded to float32.
    assert grey.shape == (3, 20, 30) and torch.allclose(grey[2], torch.from_numpy(rgb[..., 0] / 255.0).float(),
                                                        atol=tol.ulps(1), rtol=0)
    rgba = images.load_file(files["rgba"])
    assert torch.equal(rgba[:, 10:], torch.ones(3, 10, 30))  # transparent half composited on white (rule 1)
    assert torch.allclose(rgba[:, :10], torch.from_numpy(rgb[:10].transpose(2, 0, 1) / 255.0).float(),
                          atol=tol.ulps(1), rtol=0)
    assert images.load_file(files["palette"]).shape == (3, 20, 30)
    sixteen_t = images.load_file(files["16bit"])
    assert torch.allclose(sixteen_t[0], torch.from_numpy(sixteen / 65535.0).float(), atol=tol.ulps(1), rtol=0)
    assert len(torch.unique(sixteen_t[0])) > 256  # 16-bit precision is kept, not squashed to 8 bits
    assert images.load_file(files["exif"]).shape == (3, 30, 20)


@pytest.mark.parametrize("kind,message", [
    ("truncated", "corrupt or truncated"), ("text", "not an image"), ("empty", "not an image"), ("huge", "MP limit"),
])
def test_bad_files_are_refused_by_name(odd, kind, message):
    files, _, _ = odd
    with pytest.raises(XaiError, match=message) as e:
        images.load_file(files[kind])
    assert str(files[kind]) in str(e.value)


def test_pixel_limit_is_configurable(odd):
    files, _, _ = odd
    with pytest.raises(XaiError, match="limit"):
        images.load_file(files["grey"], max_pixels=100)
    with pytest.raises(XaiError, match="no such file"):
        images.load_file(files["grey"].with_name("missing.png"))
