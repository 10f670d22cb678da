"""The published report's config (configs/pages.yaml), exercised offline: its hub models swapped for
random-weight copies of the same architectures, saved to local files. Such a config is marked
``published: false``, so a book built from it carries the "not for publication" notice on every page
(tests/test_acceptance.py checks the notice).

The whole book is not built from it here (four more ImageNet networks in every compared study would
add minutes to the suite): the config is validated with its study restrictions, and a three-method
saliency gallery runs on the swapped hub models through it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xai import profiles

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "configs" / "pages.yaml"
COMPARED = ("saliency", "gradcam", "faithfulness", "misclassification")


def _random_copy(spec: str, path: Path) -> None:
    import torch

    torch.manual_seed(0)
    source, name = spec.split("/", 1)
    if source == "timm":
        import safetensors.torch
        import timm

        safetensors.torch.save_file(timm.create_model(name.split(".")[0], pretrained=False).state_dict(), str(path))
    else:
        import torchvision

        torch.save(torchvision.models.get_model(name.split(":")[0], weights=None).state_dict(), path)


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    config = yaml.safe_load(PAGES.read_text())
    hub = [m for m in config["models"] if isinstance(m, dict) and m["spec"].split("/")[0] in ("timm", "torchvision")]
    for m in hub:
        m["weights"] = str(root / f"{m['id']}.weights")
        _random_copy(m["spec"], Path(m["weights"]))
    config["published"] = False
    path = root / "pages-random.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return {"path": path, "hub": [m["id"] for m in hub], "config": config, "root": root}


def test_the_pages_workflow_builds_this_config():
    workflow = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert "make book CONFIG=configs/pages.yaml" in workflow


def test_the_hub_models_are_the_assignments_architectures_in_the_compared_studies(swapped):
    specs = {m["id"]: m["spec"] for m in swapped["config"]["models"] if isinstance(m, dict)}
    archs = " ".join(specs.values())
    for arch in ("resnet50", "vgg16", "inception_v3", "vit_"):
        assert arch in archs, arch
    p = profiles.get(str(swapped["path"]))
    assert not p.published
    assert set(swapped["hub"]) <= set(p.imagenet_models)  # ImageNet-1k, read from the loaded heads
    for study in COMPARED:
        seen = p.for_study(study)
        assert set(swapped["hub"]) <= set(seen.imagenet_models), study
    for study in ("featvis", "concepts", "microscope", "counterfactual"):
        assert not set(swapped["hub"]) & set(p.for_study(study).imagenet_models), study


def test_the_swapped_hub_models_run_through_the_config(swapped, tmp_path):
    config = dict(swapped["config"])
    config["images"] = {"photos": {"ids": ["chelsea"]}}
    config["studies"] = {**config["studies"],
                         "saliency": {"photos": 1, "methods": ["gradient", "guided_backprop", "grad_cam"],
                                      "models": swapped["hub"]}}
    path = swapped["root"] / "pages-small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "generated"
    r = subprocess.run([sys.executable, "-m", "xai", "precompute", "--config", str(path), "--only", "saliency",
                        "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    sal = json.loads((out / "saliency" / "results.json").read_text())["imagenet"]
    assert sal["models"] == swapped["hub"]
    assert (out / sal["gallery"]["chelsea"]).is_file()
    for model in swapped["hub"]:
        assert sal["cam_layer"][model], model
    # Guided Backprop is undefined for the ViT's GELU: refused with the reason, the others have a map.
    assert "GELU" in sal["not_applicable"]["vit_small"]["guided_backprop"]
    assert "guided_backprop" not in sal["not_applicable"]["resnet50"]
    assert not (out / "overview").exists()  # only the study asked for: no Fashion-MNIST model is trained
