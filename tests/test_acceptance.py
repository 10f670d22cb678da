"""The whole report for a user's own models and images, built from a config file this test writes.

The config names a random-weight timm ResNet and a random-weight torchvision VGG, each from a local
weights file, and an ImageFolder of 3 classes x 4 images (crops of the manifest's photos, in folders
named by ImageNet class), with no manifest photo and no Fashion-MNIST model. Every study runs at the
smoke profile's sizes; every chapter builds with ``-W``; the generic site tests (pages load cleanly in
Chromium, links resolve, the site is self-contained) run again on this site, under its own ``site``
fixture. The parts with nothing to run on (no Fashion-MNIST model) say so in place, and every page
carries the config's "not for publication" notice.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_site import (ROOT, precompute_and_build, test_every_internal_link_and_anchor_resolves,  # noqa: F401
                       test_every_page_loads_cleanly_with_decoded_images_and_alt_text,
                       test_site_is_self_contained_small_and_optimised)

CLASSES = {"tabby": "chelsea", "espresso": "coffee", "baboon": "baboon"}  # ImageNet class -> manifest photo


def write_inputs(root: Path) -> Path:
    """Weights, the image folder and the config under ``root``; returns the config's path."""
    import safetensors.torch
    import timm
    import torch
    import torchvision
    from PIL import Image

    from xai.data import images

    torch.manual_seed(0)
    safetensors.torch.save_file(timm.create_model("resnet10t", pretrained=False).state_dict(),
                                str(root / "resnet.safetensors"))
    torch.save(torchvision.models.vgg11().state_dict(), root / "vgg.pt")
    for cls, pid in CLASSES.items():
        img = images.load(pid)
        folder = root / "images" / cls
        folder.mkdir(parents=True)
        _, h, w = img.shape
        for i, (top, left) in enumerate([(0, 0), (0, w // 4), (h // 4, 0), (h // 4, w // 4)]):
            crop = img[:, top:top + 3 * h // 4, left:left + 3 * w // 4]
            Image.fromarray((crop.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
                folder / f"{pid}_{i}.jpg", quality=90)
    config = yaml.safe_load((ROOT / "xai" / "config" / "profiles" / "smoke.yaml").read_text())
    config.update(name="acceptance", published=False,
                  models=[{"id": "my_resnet", "spec": "timm/resnet10t", "weights": "resnet.safetensors"},
                          {"id": "my_vgg", "spec": "torchvision/vgg11", "weights": "vgg.pt"}],
                  images={"photos": {"ids": []}, "folders": [{"name": "mine", "root": "images"}]})
    config["studies"]["faithfulness"].pop("sanity_models")  # names the smoke profile's own model
    # The VGG (7.6 GFLOPs a photo) in the studies that compare architectures' maps; the ResNet everywhere.
    for study in ("faithfulness", "misclassification", "counterfactual", "featvis", "concepts", "microscope"):
        config["studies"][study]["models"] = ["my_resnet"]
    path = root / "acceptance.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
    src = tmp_path_factory.mktemp("acceptance-site")
    return precompute_and_build(src, "acceptance", "--config", str(write_inputs(src)))


@pytest.fixture(scope="module")
def site(acceptance) -> Path:
    """This module's site for the generic site tests imported above."""
    if acceptance["build"].returncode != 0:
        pytest.fail("the acceptance site did not build; see test_every_chapter_builds_with_warnings_as_errors")
    return acceptance["html"]


def test_every_chapter_builds_with_warnings_as_errors(acceptance):
    b = acceptance["build"]
    assert b.returncode == 0, f"jupyter-book build -W -n failed:\n{(b.stdout + b.stderr)[-8000:]}"
    chapters = [p.stem for p in (ROOT / "book").glob("*.md")]
    for chapter in chapters:
        assert (acceptance["html"] / "book" / f"{chapter}.html").is_file(), chapter


def test_the_users_models_and_images_are_what_the_report_explains(acceptance):
    gen = acceptance["generated"]
    models = {m["name"]: m for m in json.loads((gen / "overview" / "models.json").read_text())}
    assert set(models) == {"my_resnet", "my_vgg"}
    assert all(m["label_space"] == "imagenet-1k" for m in models.values())
    photos = json.loads((gen / "overview" / "photos.json").read_text())
    assert len(photos) == 12 and all(p["id"].startswith("mine-") for p in photos)
    from xai.models import imagenet_class_names

    names = imagenet_class_names()
    assert {p["label_name"] for p in photos} == set(CLASSES)
    assert all(names[p["label"]] == p["label_name"] for p in photos)  # folder names matched to class indices
    sal = json.loads((gen / "saliency" / "results.json").read_text())
    assert sal["imagenet"]["models"] == ["my_resnet", "my_vgg"]
    assert sal["imagenet"]["photos"][0].startswith("mine-")
    assert sal["fmnist"] == {"skipped": "the config of this report has no Fashion-MNIST model"}
    assert all((gen / f).is_file() for f in sal["imagenet"]["gallery"].values())


def test_skipped_parts_and_the_unpublished_build_say_so_on_the_pages(acceptance):
    html = acceptance["html"]
    saliency = (html / "book" / "saliency.html").read_text()
    assert "which skipped this part: the config of this report has no Fashion-MNIST model" in saliency
    for page in ("intro", "saliency", "featvis", "reproduce"):
        assert "Not for publication" in (html / "book" / f"{page}.html").read_text(), page
