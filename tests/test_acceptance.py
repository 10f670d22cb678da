"""The whole report for a user's own models and images, built from a config file this test writes.

The config names a random-weight torchvision VGG with ImageNet-1k's head and a random-weight timm
ResNet with a head of the user's own 3 classes (and their class list), each from a local weights file,
and two ImageFolders of 3 classes x 4 images (crops of the manifest's photos): one in folders named by
ImageNet class, one by the ResNet's own classes. No manifest photo and no Fashion-MNIST model. Each model
explains the photos of its own label space. Every study runs at the
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
OWN = {"cat": "chelsea", "mug": "coffee", "monkey": "baboon"}  # the ResNet's own classes -> manifest photo


def write_inputs(root: Path) -> Path:
    """Weights, the image folder and the config under ``root``; returns the config's path."""
    import safetensors.torch
    import timm
    import torch
    import torchvision
    from PIL import Image

    from xai.data import images

    torch.manual_seed(0)
    safetensors.torch.save_file(timm.create_model("resnet10t", pretrained=False, num_classes=len(OWN)).state_dict(),
                                str(root / "resnet.safetensors"))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in OWN))
    torch.save(torchvision.models.vgg11().state_dict(), root / "vgg.pt")
    for (set_root, cls), pid in [*((("images", c), p) for c, p in CLASSES.items()),
                                 *((("own", c), p) for c, p in OWN.items())]:
        img = images.load(pid)
        folder = root / set_root / cls
        folder.mkdir(parents=True)
        _, h, w = img.shape
        for i, (top, left) in enumerate([(0, 0), (0, w // 4), (h // 4, 0), (h // 4, w // 4)]):
            crop = img[:, top:top + 3 * h // 4, left:left + 3 * w // 4]
            Image.fromarray((crop.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
                folder / f"{pid}_{i}.jpg", quality=90)
    config = yaml.safe_load((ROOT / "xai" / "config" / "profiles" / "smoke.yaml").read_text())
    config.update(name="acceptance", published=False,
                  models=[{"id": "my_resnet", "spec": "timm/resnet10t", "weights": "resnet.safetensors",
                           "classes": "classes.txt"},
                          {"id": "my_vgg", "spec": "torchvision/vgg11", "weights": "vgg.pt"}],
                  images={"photos": {"ids": []}, "folders": [{"name": "mine", "root": "images"},
                                                             {"name": "own", "root": "own"}]})
    config["studies"]["faithfulness"].pop("sanity_models")  # names the smoke profile's own model
    # The VGG (7.6 GFLOPs a photo) in the studies that compare architectures' maps; the ResNet, on its own
    # classes, everywhere.
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
    own_space = models["my_resnet"]["label_space"]
    assert models["my_vgg"]["label_space"] == "imagenet-1k" != own_space and models["my_resnet"]["classes"] == 3
    photos = json.loads((gen / "overview" / "photos.json").read_text())
    mine = [p for p in photos if p["id"].startswith("mine-")]
    own = [p for p in photos if p["id"].startswith("own-")]
    assert len(mine) == len(own) == 12 and len(photos) == 24
    from xai.models import imagenet_class_names

    names = imagenet_class_names()
    assert {p["label_name"] for p in mine} == set(CLASSES) and {p["label_space"] for p in mine} == {"imagenet-1k"}
    assert all(names[p["label"]] == p["label_name"] for p in mine)  # folder names matched to class indices
    assert {p["label_space"] for p in own} == {own_space}
    assert all(list(OWN)[p["label"]] == p["label_name"] for p in own)  # ... and to the ResNet's own list
    # Each model predicts the photos of its own label space, never another's.
    assert all(set(p["predictions"]) == {"my_vgg"} for p in mine)
    assert all(set(p["predictions"]) == {"my_resnet"} and p["predictions"]["my_resnet"][0]["name"] in OWN
               for p in own)
    sal = json.loads((gen / "saliency" / "results.json").read_text())
    inet = sal["imagenet"]
    assert inet["models"] == ["my_vgg", "my_resnet"]
    assert {m: {p.split("-")[0] for p in ids} for m, ids in inet["model_photos"].items()} == {
        "my_vgg": {"mine"}, "my_resnet": {"own"}}
    assert all(inet["gallery_models"][p] == (["my_vgg"] if p.startswith("mine-") else ["my_resnet"])
               for p in inet["gallery"])
    assert all(t["name"] in OWN for t in inet["targets"]["my_resnet"].values())
    assert sal["fmnist"] == {"skipped": "the config of this report has no Fashion-MNIST model"}
    assert all((gen / f).is_file() for f in inet["gallery"].values())
    # The studies restricted to the ResNet explain its own classes on its own photos.
    mc = json.loads((gen / "misclassification" / "results.json").read_text())
    assert mc["photo_counts"]["my_resnet"]["labelled"] == 12
    fv = json.loads((gen / "featvis" / "results.json").read_text())
    assert {r["name"] for r in fv["classes"]["images"]["my_resnet"]} <= set(OWN)
    assert all(p.startswith("own-") for p in fv["grids"]["my_resnet"]["selection_images"])


def test_skipped_parts_and_the_unpublished_build_say_so_on_the_pages(acceptance):
    html = acceptance["html"]
    saliency = (html / "book" / "saliency.html").read_text()
    assert "which skipped this part: the config of this report has no Fashion-MNIST model" in saliency
    for page in ("intro", "saliency", "featvis", "reproduce"):
        assert "Not for publication" in (html / "book" / f"{page}.html").read_text(), page
