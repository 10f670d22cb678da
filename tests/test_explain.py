"""`xai explain` and `xai visualize` end to end: the files they write, what those hold, and bad input.

The end-to-end runs go through `python -m xai` in a subprocess, as a user would; the bad-input cases call
``xai.cli.main`` in this process (same code path after argument parsing, without a fresh import each).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tolerance import NETWORK, ulps
from xai import attribution, cli, explain, models, profiles, visualize
from xai.data import fashion_mnist, images
from xai.featvis import objectives as O
from xai.render import maps as R

# The JSON records round probabilities to 4 decimals.
ROUNDED = 5e-5


def xai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xai", *args], capture_output=True, text=True, timeout=600)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def save_png(path: Path, x: torch.Tensor) -> Path:
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)
    return path


def square(img: torch.Tensor, side: int) -> torch.Tensor:
    h, w = img.shape[1:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img[None, :, top:top + s, left:left + s]
    return F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]


@pytest.fixture(scope="module")
def cat_and_coffee(tmp_path_factory) -> Path:
    """The cat (chelsea's square centre, all cat) left of the coffee cup (coffee's square centre).

    Why not chelsea alone: the model's centre crop of chelsea is the cat's face from edge to edge, so
    every map puts all its mass on the cat. Side by side, the cat fills exactly the left half of what the
    model sees: the picture is two equal squares, and its preparation (shorter side resized, centre crop)
    is symmetric about the vertical midline, which stays the input's centre column.
    """
    both = torch.cat([square(images.load("chelsea"), 224), square(images.load("coffee"), 224)], dim=2)
    return save_png(tmp_path_factory.mktemp("photos") / "cat_and_coffee.png", both)


def cat_half_mass(cam: np.ndarray) -> float:
    """Share of a non-negative map's mass in the left half of its columns (the cat's, see above)."""
    w = cam.shape[-1]
    return float(cam[..., : w // 2].sum() / cam.sum())


# A map without preference between the halves gives 0.5, the cat half's share of the area. "On the cat"
# is asked to mean at least 0.7: the cat's half holds more than twice the mass of the other (0.7 / 0.3).
ON_THE_CAT = 0.7


def test_explain_grad_cam_on_chelsea(tmp_path, lite0, cat_and_coffee):
    out = tmp_path / "out"
    r = xai("explain", "efficientnet_lite0", "chelsea", str(cat_and_coffee), "--method", "grad_cam",
            "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "chelsea: top-1" in r.stdout and not (out / "comparison.png").exists()  # only for the default set

    summary = json.loads((out / "chelsea" / "grad_cam.json").read_text())
    x = lite0.prepare(images.load("chelsea"))[None]
    with torch.no_grad():
        p = lite0.model(x).softmax(-1)[0]
    top = int(p.argmax())
    assert 281 <= top <= 285, "chelsea's top-1 is one of ImageNet's five domestic cats"
    assert summary["target"] == {"index": top, "name": lite0.class_names[top], "p": pytest.approx(
        float(p[top]), abs=NETWORK + ROUNDED), "rule": "top1"}
    assert [q["index"] for q in summary["prediction"]] == p.topk(5).indices.tolist()
    assert summary["layer"] == attribution.default_layer(lite0, x) and summary["layer_rule"]
    assert summary["method"]["name"] == "grad_cam" and summary["method"]["cite"] == "selvaraju2017gradcam"
    assert summary["timing"]["seconds"] > 0 and summary["timing"]["device"] == "cpu"
    assert summary["versions"]["torch"] == torch.__version__ and summary["model"]["spec"] == "efficientnet_lite0"
    assert summary["map"]["files"] == {"overlay": "grad_cam.png", "map": "grad_cam_map.png",
                                       "attributions": "grad_cam.npy"}

    cam = np.load(out / "chelsea" / "grad_cam.npy")
    assert cam.shape == (1, 224, 224) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() > cam.min()
    assert read_png(out / "chelsea" / "grad_cam.png").shape == (224, 224, 3)
    assert read_png(out / "chelsea" / "input.png").shape == (224, 224, 3)

    both = json.loads((out / "cat_and_coffee" / "grad_cam.json").read_text())
    assert both["image"]["id"] is None and both["image"]["original_size"] == [224, 448]
    # Beside the cup the model's top-1 is espresso: the cup's map must then lie on the cup.
    assert both["target"]["name"] == "espresso"
    assert cat_half_mass(np.load(out / "cat_and_coffee" / "grad_cam.npy")) <= 1 - ON_THE_CAT


def test_grad_cam_of_the_cat_class_lies_on_the_cat(lite0, cat_and_coffee):
    """The same picture explained for a cat class: now the map must move to the cat (the CLI test above
    checked the cup's class), so a map that ignored the class could not pass both."""
    (e,) = explain.explain(lite0, [str(cat_and_coffee)], ["grad_cam"], target="tiger cat").explanations
    assert e.summary["target"]["rule"] == "given" and e.summary["target"]["name"] == "tiger cat"
    assert cat_half_mass(e.attributions.numpy()) >= ON_THE_CAT


@pytest.fixture(scope="module")
def fmnist_pngs(tmp_path_factory) -> list[Path]:
    x, _ = fashion_mnist.load("test")
    folder = tmp_path_factory.mktemp("fmnist")
    return [save_png(folder / f"test{i}.png", x[i]) for i in (0, 1)]


def test_default_set_writes_every_map_and_the_comparison(tmp_path, fmnist_cnn_smoke, fmnist_pngs):
    out = tmp_path / "out"
    r = xai("explain", "fmnist_cnn", *map(str, fmnist_pngs), "--budget", "smoke", "--profile", "smoke",
            "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert read_png(out / "comparison.png").ndim == 3
    entry, smoke = fmnist_cnn_smoke, profiles.get("smoke")
    from xai.studies.saliency import method_options

    for png in fmnist_pngs:
        x = entry.prepare(images.load_file(png))[None]
        with torch.no_grad():
            p = entry.model(x).softmax(-1)[0]
        for name in explain.DEFAULT_METHODS:
            m = attribution.get(name)
            folder = out / png.stem
            s = json.loads((folder / f"{name}.json").read_text())
            assert s["target"]["rule"] == "top1" and s["target"]["index"] == s["prediction"][0]["index"]
            assert s["prediction"][0]["p"] == pytest.approx(float(p.max()), abs=NETWORK + ROUNDED)
            assert s["method"]["options"] == json.loads(json.dumps(method_options(smoke, name, entry)))
            assert (s["layer"] is not None) == m.needs_layer
            raw = np.load(folder / f"{name}.npy")
            assert raw.shape == ((1, 28, 28)) and np.isfinite(raw).all() and raw.std() > 0
            # The bare map is the report's colouring of the method's 2-D map: diverging for signed methods.
            flat = R.saliency_map(torch.from_numpy(raw), m.kind)
            drawn = read_png(folder / f"{name}_map.png")
            signed = R.is_signed(m.kind)
            assert np.array_equal(drawn, (R.colorize(flat, signed) * 255).round().astype(np.uint8))
            if signed:
                assert not np.array_equal(drawn, (R.colorize(flat, False) * 255).round().astype(np.uint8))
            assert read_png(folder / f"{name}.png").shape == (28, 28, 3)


def test_progress_bar_and_refusals(capsys, fmnist_cnn_smoke, fmnist_pngs, tmp_path):
    silu = copy.deepcopy(fmnist_cnn_smoke.model)
    for name, module in list(silu.named_children()):
        if isinstance(module, nn.ReLU):
            setattr(silu, name, nn.SiLU())
    entry = dataclasses.replace(fmnist_cnn_smoke, name="fmnist_cnn_silu", model=silu)
    result = explain.explain(entry, [str(fmnist_pngs[0])], ["gradient", "guided_backprop"], profile="smoke",
                             progress=True)
    err = capsys.readouterr().err
    assert "explain" in err and "2/2" in err
    grad, guided = result.explanations
    assert grad.map is not None and guided.map is None and "SiLU" in guided.summary["not_applicable"]
    explain.write(result, tmp_path)
    folder = tmp_path / fmnist_pngs[0].stem
    assert "SiLU" in json.loads((folder / "guided_backprop.json").read_text())["not_applicable"]
    assert not (folder / "guided_backprop.png").exists() and (folder / "gradient.png").exists()


def test_visualize_classes_prints_each_images_own_top1(tmp_path, lite0):
    out = tmp_path / "vis"
    r = xai("visualize", "efficientnet_lite0", "--class", "tabby", "967", "--steps", "4", "--size", "64",
            "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "visualize.json").read_text())
    assert [u["unit"] for u in record["units"]] == [281, 967]
    assert record["settings"]["size"] == 64 and record["settings"]["steps"] == 4
    assert record["settings"]["transforms"].startswith("Compose([Pad(")
    lines = r.stdout.splitlines()
    for unit, line in zip(record["units"], lines):
        img = torch.from_numpy(read_png(out / unit["file"]).astype(np.float32) / 255).permute(2, 0, 1)
        assert img.shape == (3, 64, 64)
        with torch.no_grad():
            p = lite0.model(img[None]).softmax(-1)[0]
        top = unit["top1"]
        # Its own top-1, on the saved image: no class beats it beyond rounding.
        assert float(p[top["index"]]) == pytest.approx(top["p"], abs=NETWORK + ROUNDED)
        assert float(p.max()) <= top["p"] + NETWORK + ROUNDED
        assert f"own top-1 {top['name']} ({top['index']})" in line and unit["hit"] == (top["index"] == unit["unit"])
    assert lines[-1].startswith("own top-1 rate:")


def test_visualize_channels_and_a_small_model(tmp_path, capsys, lite0, fmnist_cnn_smoke):
    out = tmp_path / "channels"
    assert cli.main(["visualize", "efficientnet_lite0", "--layer", "blocks.3", "--channels", "0-2", "--steps", "2",
                     "--size", "32", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "visualize.json").read_text())
    assert record["objective_layer"] == O.pre_activation(lite0.model, "blocks.3")
    assert [u["file"] for u in record["units"]] == ["blocks.3-c0.png", "blocks.3-c1.png", "blocks.3-c2.png"]
    assert len(capsys.readouterr().out.splitlines()) == 3

    out = tmp_path / "fmnist"
    assert cli.main(["visualize", "fmnist_cnn", "--budget", "smoke", "--class", "Sneaker", "0", "--steps", "2",
                     "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "visualize.json").read_text())
    # The study renders Fashion-MNIST models at their own 28 px, smaller than its ImageNet render size.
    assert record["settings"]["size"] == 28 == fmnist_cnn_smoke.input_size[1] < visualize.defaults()["size"]
    assert read_png(out / "class-7.png").shape == (28, 28)


def test_parse_channels():
    assert visualize.parse_channels("0-3,7,5-6,2") == [0, 1, 2, 3, 7, 5, 6]
    for bad in ("3-1", "a", "1,,2", "-1"):
        with pytest.raises(Exception, match="channel"):
            visualize.parse_channels(bad)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    bad = tmp_path_factory.mktemp("bad") / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 broken")
    return bad


@pytest.mark.parametrize("args,message", [
    (("explain", "efficientnet_lite0", "chelsea", "--method", "grad_cma"), "did you mean: grad_cam"),
    (("explain", "efficientnet_lite0", "chelsae"), "did you mean: chelsea"),
    (("explain", "efficientnet_lite0", "chelsea", "--method", "grad_cam", "--layer", "blocks.9"), "unknown layer"),
    (("explain", "efficientnet_lite0", "chelsea", "--target", "tabbby"), "did you mean: tabby"),
    (("explain", "timm/resnet5O", "chelsea"), "timm/resnet5O"),
    (("explain", "efficientnet_lite0", "CORRUPT"), "CORRUPT"),
    (("explain", "efficientnet_lite0", "chelsea", "--device", "tpu"), "cpu"),
    (("explain", "efficientnet_lite0", "chelsea", "--profile", "fulll"), "did you mean: full"),
    (("visualize", "efficientnet_lite0", "--class", "tabbby"), "did you mean: tabby"),
    (("visualize", "efficientnet_lite0", "--layer", "blocks.33"), "unknown layer"),
    (("visualize", "efficientnet_lite0", "--layer", "blocks.3", "--channels", "0-3,90"), "80 channels"),
    (("visualize", "efficientnet_lite0", "--class", "1", "--channels", "1-2"), "--channels needs --layer"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message, capsys, corrupt, tmp_path):
    args = [str(corrupt) if a == "CORRUPT" else a for a in args]
    message = str(corrupt) if message == "CORRUPT" else message
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_model_options_reach_the_loader(monkeypatch, lite0, tmp_path):
    """--weights, --classes and --device go to models.load unchanged (the shared model options of every
    model-taking command, xai.cli.add_model_arguments)."""
    seen = {}

    def load(name, *, weights=None, classes=None, device=None, **options):
        seen.update(name=name, weights=weights, classes=classes, device=device)
        return lite0

    monkeypatch.setattr(models, "load", load)
    args = ["explain", "efficientnet_lite0", "chelsea", "--method", "gradient", "--weights", "w.safetensors",
            "--classes", "names.txt", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert seen == {"name": "efficientnet_lite0", "weights": "w.safetensors", "classes": "names.txt",
                    "device": "cpu"}


def test_random_weight_timm_model_from_a_weights_file(tmp_path):
    import safetensors.torch
    import timm

    torch.manual_seed(0)
    path = tmp_path / "resnet18-random.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    out = tmp_path / "out"
    r = xai("explain", "timm/resnet18", "chelsea", "--weights", str(path), "--method", "grad_cam",
            "integrated_gradients", "--profile", "smoke", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    entry = models.load("timm/resnet18", weights=str(path), device="cpu")
    x = entry.prepare(images.load("chelsea"))[None]
    with torch.no_grad():
        p = entry.model(x).softmax(-1)[0]
    s = json.loads((out / "chelsea" / "grad_cam.json").read_text())
    assert s["prediction"][0]["p"] == pytest.approx(float(p.max()), abs=NETWORK + ROUNDED)
    assert s["layer"] in entry.layers
    cam = np.load(out / "chelsea" / "grad_cam.npy")
    ig = np.load(out / "chelsea" / "integrated_gradients.npy")
    assert cam.shape == (1, *x.shape[2:]) and ig.shape == tuple(x.shape[1:])
    assert np.isfinite(cam).all() and np.isfinite(ig).all() and ig.std() > ulps(1)

    r = xai("visualize", "timm/resnet18", "--weights", str(path), "--class", "1", "--steps", "2", "--size", "64",
            "--device", "cpu", "--out", str(tmp_path / "vis"))
    assert r.returncode == 0, r.stderr
    assert "own top-1" in r.stdout and (tmp_path / "vis" / "class-1.png").exists()


@pytest.mark.parametrize("command", ["explain", "visualize"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0 and "--weights" in capsys.readouterr().out
