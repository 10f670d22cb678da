"""Report configs: the shipped profiles are YAML files, validated by one schema whose defaults are the
studies' own; a user's file reaches every study through the same path; bad files are one line."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xai import profiles, studies
from xai.config import adapter, loader
from xai.errors import XaiError
from xai.config.schema import Studies

ROOT = Path(__file__).resolve().parents[1]
# Schema fields whose null default means "the study's (or the config's) own choice", as documented there.
NULL_MEANS_DEFAULT = {("saliency", "methods"), ("cleverhans", "budget")}


def _plain(v):
    if hasattr(v, "model_dump"):
        v = v.model_dump()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def test_shipped_profiles_are_the_yaml_files():
    assert list(profiles.PROFILES) == ["full", "quick", "smoke"]
    smoke = profiles.get("smoke")
    assert smoke.imagenet_models == ("efficientnet_lite0",)
    assert smoke.fmnist_models == ("fmnist_cnn", "fmnist_vit") and smoke.fmnist_budget == "smoke"
    assert smoke.photos == ("chelsea", "coffee", "starry_night")
    full = profiles.get("full")
    assert full.imagenet_models == profiles.ALL_IMAGENET and full.fmnist_models == profiles.ALL_FMNIST
    assert full.photos is None and full.options["cleverhans"]["budget"] == "full"


def test_schema_defaults_are_the_studies_defaults():
    """One set of defaults: a study's DEFAULTS and the schema's agree key by key, so a config that says
    nothing gets what the study would have done."""
    for study, field in Studies.model_fields.items():
        defaults = getattr(importlib.import_module(studies.STUDIES[study]), "DEFAULTS", {})
        fields = {k: f for k, f in field.annotation.model_fields.items() if k not in ("enabled", "models")}
        assert set(fields) == set(defaults), study
        for key, f in fields.items():
            if (study, key) in NULL_MEANS_DEFAULT:
                assert f.default is None, (study, key)
                continue
            assert _plain(f.default) == _plain(defaults[key]), (study, key)


@pytest.mark.parametrize("name", ["full", "quick", "smoke"])
def test_every_option_a_profile_sets_is_read_by_its_study(name):
    p = profiles.get(name)
    for study, opts in p.options.items():
        defaults = getattr(importlib.import_module(studies.STUDIES[study]), "DEFAULTS", {})
        assert set(opts) <= set(defaults), (name, study, set(opts) - set(defaults))


def xai(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xai", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=900)


@pytest.mark.parametrize("text,where,hint", [
    ("name: x\nmodels: [efficientnet_lite0]\nstudies:\n  saliency: {photoss: 2}\n", "studies.saliency.photoss",
     "photos"),
    ("name: x\nmodels: [efficientnet_lite9]\n", "models.0.spec", "efficientnet_lite0"),
    ("name: x\nmodels: [efficientnet_lite0]\nstudies:\n  gradcam: {layer_photos: -1}\n", "studies.gradcam.layer_photos",
     ""),
    ("name: x\nmodels: [efficientnet_lite0\n", "line", ""),
    ("name: x\nmodels: [efficientnet_lite0]\nstudies:\n  saliency: {methods: [grad_cma]}\n", "studies.saliency.methods",
     "grad_cam"),
])
def test_a_bad_config_is_one_line_with_its_key_path(tmp_path, text, where, hint):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = xai("config", "check", str(path))
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and where in err and hint in err, err


def test_config_show_fills_every_default():
    r = xai("config", "show", "smoke")
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown == loader.load("smoke").model_dump(mode="json")
    assert shown["studies"]["featvis"]["batch"] == 64  # a default the file does not set


def _folder_config(tmp_path, classes, models="[efficientnet_lite0]"):
    from PIL import Image

    for c in classes:
        (tmp_path / "set" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), (40 * i, 90, 200)).save(tmp_path / "set" / c / f"{i}.png")
    path = tmp_path / "c.yaml"
    path.write_text(f"name: x\nmodels: {models}\nimages:\n  photos: {{ids: [chelsea]}}\n"
                    "  folders: [{name: mine, root: set, per_class: 1}]\n")
    return path


def test_an_image_folder_becomes_photos_labelled_by_class_name(tmp_path):
    from xai.data import images
    from xai.studies import _frame, reuse

    p = profiles.get(str(_folder_config(tmp_path, ["Tabby", "tiger_cat"])))
    ids = _frame.photo_ids(p)
    assert ids == ["mine-tabby-0", "mine-tiger_cat-0", "chelsea"]  # the user's first, one per class
    assert [images.photo(i).label for i in ids[:2]] == [281, 282]  # ImageNet's tabby and tiger cat
    assert images.photo(ids[0]).label_name == "tabby" and images.load(ids[0]).shape == (3, 30, 40)
    # The study's key follows the folder's contents.
    before = reuse.external_inputs(p, studies)
    from PIL import Image

    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "set" / "Tabby" / "0.png")
    assert reuse.external_inputs(p, studies) != before


@pytest.mark.parametrize("classes, models, problem", [
    (["tabbby"], "[efficientnet_lite0]", "tabby"),                 # a folder that names no class: close matches
    (["tabby"], "[fmnist_cnn]", "no model of the config has class names its folders could name"),
])
def test_a_bad_image_folder_is_one_line_before_any_work(tmp_path, classes, models, problem):
    with pytest.raises(loader.ConfigError) as e:
        profiles.get(str(_folder_config(tmp_path, classes, models)))
    assert e.value.path.startswith("images.folders") and problem in str(e.value)
    assert "\n" not in str(e.value)


def _own_config(tmp_path, folder_classes, labels=None):
    """An ImageNet model beside a model with its own class list (cat, cup, monkey), and one folder set."""
    from PIL import Image

    for c in folder_classes:
        (tmp_path / "own" / c).mkdir(parents=True)
        Image.new("RGB", (40, 30), (90, 40, 200)).save(tmp_path / "own" / c / "0.png")
    (tmp_path / "classes.txt").write_text("cat\ncup\nmonkey\n")
    (tmp_path / "w.pt").write_bytes(b"")  # never loaded: the label space comes from the class list
    extra = "" if labels is None else f", labels: {labels}"
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodels:\n  - efficientnet_lite0\n"
                    "  - {id: mine, spec: timm/resnet10t, weights: w.pt, classes: classes.txt}\n"
                    f"images:\n  photos: {{ids: [chelsea]}}\n  folders: [{{name: own, root: own{extra}}}]\n")
    return path


def test_a_folder_set_in_a_models_own_classes_labels_its_photos_for_that_model(tmp_path):
    from xai.data import images
    from xai.studies import _frame

    p = profiles.get(str(_own_config(tmp_path, ["Cat", "monkey"])))  # "cat" and "monkey" are no ImageNet class
    (src,) = p.folders
    assert src.label_space == p.label_spaces["mine"] != "imagenet-1k"
    assert p.photo_models == ("efficientnet_lite0", "mine") and set(p.photo_spaces) == {"imagenet-1k", src.label_space}
    own = _frame.photo_ids(p, src.label_space)
    assert own == ["own-cat-0", "own-monkey-0"] and [images.photo(i).label for i in own] == [0, 2]
    assert {images.photo(i).label_space for i in own} == {src.label_space}
    assert _frame.photo_ids(p) == ["chelsea"]  # ImageNet-1k's photos do not include the user's own classes
    assert _frame.all_photo_ids(p) == ["chelsea", *own]


def test_a_folder_set_whose_names_fit_two_label_spaces_asks_which(tmp_path):
    # "cup" is a class of ImageNet-1k and of the user's list: the set must say whose classes label it.
    with pytest.raises(loader.ConfigError) as e:
        profiles.get(str(_own_config(tmp_path, ["cup"])))
    assert "labels: <model id>" in str(e.value) and "\n" not in str(e.value)
    p = profiles.get(str(_own_config(tmp_path / "b", ["cup"], labels="mine")))
    assert p.folders[0].label_space == p.label_spaces["mine"]
    p = profiles.get(str(_own_config(tmp_path / "c", ["cup"], labels="efficientnet_lite0")))
    assert p.folders[0].label_space == "imagenet-1k"


def test_a_folder_sets_unknown_labels_model_is_one_line_with_close_matches(tmp_path):
    with pytest.raises(loader.ConfigError) as e:
        profiles.get(str(_own_config(tmp_path, ["cat"], labels="mien")))
    assert e.value.path == "images.folders.0.labels" and "mine" in str(e.value)


def test_a_model_without_photos_of_its_label_space_is_refused_not_fed_an_empty_batch(tmp_path):
    from xai import models
    from xai.studies import _frame

    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodels: [efficientnet_lite0]\nimages:\n  photos: {ids: []}\n")
    p = profiles.get(str(path))
    assert p.photo_spaces == () and p.photo_models == () and p.imagenet_models == ("efficientnet_lite0",)
    with pytest.raises(XaiError, match="no photos labelled in its label space"):
        _frame.photos_of(p, models.load("efficientnet_lite0", device="cpu"))


def test_a_users_checkpoint_reaches_the_studies_through_the_config(tmp_path):
    """A random-weight timm ResNet from a local file, with the ImageNet class list: the config gives it an
    id, the overview and saliency studies load it by that id, and their results carry its predictions
    and maps; a study restricted to the other model and a disabled one leave it alone."""
    import safetensors.torch
    import timm
    import torch

    from xai.models import imagenet_class_names

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False)
    safetensors.torch.save_file(net.state_dict(), str(tmp_path / "mine.safetensors"))
    (tmp_path / "classes.txt").write_text("\n".join(imagenet_class_names()) + "\n")
    config = {
        "name": "mine", "seed": 0,
        "models": [{"spec": "timm/resnet10t", "id": "my_resnet", "weights": "mine.safetensors",
                    "classes": "classes.txt"}, "efficientnet_lite0"],
        "images": {"photos": {"ids": ["chelsea"]}},
        "studies": {"saliency": {"photos": 1, "methods": ["gradient", "grad_cam"], "models": ["my_resnet"]},
                    "gradcam": {"enabled": False}},
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    p = profiles.get(str(path))
    assert p.imagenet_models == ("my_resnet", "efficientnet_lite0") and p.disabled == ("gradcam",)
    out = tmp_path / "generated"
    r = xai("precompute", "--config", str(path), "--only", "overview", "saliency", "gradcam", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads((out / "overview" / "models.json").read_text())}
    assert rows["my_resnet"]["label_space"] == "imagenet-1k" and "sha256" in rows["my_resnet"]["weights"]
    photo = json.loads((out / "overview" / "photos.json").read_text())[0]
    from xai.studies._frame import load

    entry = load("my_resnet", p)
    from xai.data import images

    with torch.no_grad():
        top = entry.model(entry.prepare(images.load("chelsea"))[None]).softmax(-1)[0].max()
    assert photo["predictions"]["my_resnet"][0]["p"] == pytest.approx(float(top), abs=1e-4)  # rounded to 4 places
    sal = json.loads((out / "saliency" / "results.json").read_text())
    assert set(sal["methods"]) == {"gradient", "grad_cam"}
    assert "my_resnet" in json.dumps(sal["imagenet"]) and "efficientnet_lite0" not in json.dumps(sal["imagenet"])
    assert not (out / "gradcam").exists()
