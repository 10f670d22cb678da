"""The command line: real output for good input, one clear line and exit 2 for bad input."""
import os
import subprocess
import sys
import textwrap

import pytest


def xai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xai", *args], capture_output=True, text=True, timeout=300)


def test_models_and_help():
    r = xai("models")
    assert r.returncode == 0 and "efficientnet_lite0" in r.stdout and "fmnist_vit" in r.stdout
    for sub in ("models", "layers", "predict", "precompute"):
        h = xai(sub, "--help")
        assert h.returncode == 0 and "usage" in h.stdout


def test_predict_prints_top5():
    r = xai("predict", "efficientnet_lite0", "chelsea", "coffee")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "chelsea" and len(lines) == 12 and "espresso" in lines[7]


def test_layers_lists_shapes():
    r = xai("layers", "efficientnet_lite0")
    assert r.returncode == 0 and "blocks.3" in r.stdout and "80x14x14" in r.stdout


@pytest.mark.parametrize("args,message", [
    (("predict", "efficientnet_lite9", "chelsea"), "did you mean: efficientnet_lite"),
    (("predict", "efficientnet_lite0", "chelsae"), "did you mean: chelsea"),
    (("predict", "efficientnet_lite0", "/no/such/file.jpg"), "no such file"),
    (("layers", "resnet50"), "unknown model"),
    (("precompute", "--profile", "fulll"), "did you mean: full"),
])
def test_bad_input_gives_one_line(args, message):
    r = xai(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert message in r.stderr


def test_corrupt_file(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 broken")
    r = xai("predict", "efficientnet_lite0", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(bad) in r.stderr


# -- any model from the command line --------------------------------------------------------------------

def xai_with(path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``xai`` with ``path`` on the Python path (a user's package) and extra environment variables."""
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "xai", *args], capture_output=True, text=True, timeout=300, env=full)


def one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


@pytest.fixture
def user_package(tmp_path):
    """A package that declares a model in the xai.models entry-point group, as an installed one would."""
    (tmp_path / "xai_demo_models.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        from xai import models


        def tiny(weights=None):
            torch.manual_seed(0)
            net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(6, 3))
            return models.from_module("tiny", net, input_size=(3, 32, 32), class_names=["red", "green", "blue"])
    '''))
    dist = tmp_path / "xai_demo_models-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xai-demo-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[xai.models]\ndemo_tiny = xai_demo_models:tiny\n")
    return tmp_path


def test_entry_point_models_reach_every_command(user_package):
    r = xai_with(user_package, "models")
    assert r.returncode == 0 and "demo_tiny" in r.stdout and "entry point xai_demo_models:tiny" in r.stdout
    r = xai_with(user_package, "layers", "demo_tiny")
    assert r.returncode == 0, r.stderr
    marked = [line.split() for line in r.stdout.splitlines() if line.startswith("*")]
    # layers of interest from the stage structure: the last module at each resolution
    assert marked == [["*", "1", "4x32x32", "NCHW"], ["*", "4", "6x16x16", "NCHW"]]
    r = xai_with(user_package, "predict", "demo_tiny", "chelsea", "-k", "3")
    assert r.returncode == 0 and {"red", "green", "blue"} <= set(r.stdout.split()), r.stderr


def test_model_module_for_a_one_off(user_package):
    r = xai_with(user_package, "layers", "--model-module", "xai_demo_models:tiny", "tiny")
    assert r.returncode == 0 and "6x16x16" in r.stdout, r.stderr
    one_line_error(xai_with(user_package, "layers", "--model-module", "no_such_models:tiny", "tiny"),
                   "cannot import model module 'no_such_models'")
    one_line_error(xai_with(user_package, "layers", "--model-module", "xai_demo_models:tinyy", "tinyy"),
                   "did you mean: tiny")


def test_a_weights_file_through_the_cli_reproduces_the_saved_model(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from xai import models
    from xai.data import images

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    (tmp_path / "names.txt").write_text("ant\nbee\ncat\ndog\n")
    r = xai("predict", "timm/resnet10t", "--weights", str(tmp_path / "mine.safetensors"), "--classes",
            str(tmp_path / "names.txt"), "chelsea", "-k", "4", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # the saved network itself, on the image as the entry prepares it
    entry = models.load("timm/resnet10t", weights=tmp_path / "mine.safetensors", device="cpu")
    models.attach_normalization(net, entry.mean, entry.std)
    with torch.no_grad():
        p = net(entry.prepare(images.load("chelsea"))[None]).softmax(-1)[0]
    names = ["ant", "bee", "cat", "dog"]
    expected = [f"  {float(p[i]):6.2%}  {names[i]} ({i})" for i in p.argsort(descending=True).tolist()]
    assert r.stdout.splitlines() == ["chelsea", *expected]


def test_layers_show_a_vits_tokens_on_their_grid(tmp_path):
    import timm
    import torch

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    torch.save(net.state_dict(), tmp_path / "vit.pth")
    r = xai("layers", "timm/vit_tiny_patch16_224", "--weights", str(tmp_path / "vit.pth"))
    assert r.returncode == 0, r.stderr
    rows = {line[2:].split()[0]: line[2:].split()[1:] for line in r.stdout.splitlines()[:-1]}
    assert rows["patch_embed.proj"] == ["192x14x14", "NCHW"]
    assert rows["blocks.0"] == ["197x192", "tokens", "1+14x14"]
    assert rows["head"] == ["3", "flat"]


@pytest.mark.parametrize("args,fragments", [
    (("layers", "timm/resnet5O"), ("did you mean: timm/resnet50",)),
    (("predict", "timm/resnet18.a1_in1", "chelsea"), ("pretrained tag of timm/resnet18", "a1_in1k")),
    (("layers", "torchvision/vgg16:IMAGENET1K_V9"), ("did you mean: IMAGENET1K_V1",)),
    (("layers", "torchvision/resnet5"), ("did you mean: torchvision/resnet50",)),
    (("layers", "timm/resnet10t", "--weights", "/no/such.safetensors"), ("no such weights file",)),
    (("layers", "efficientnet_lite0", "--budget", "smoke"), ("takes no --budget",)),
    (("layers", "efficientnet_lite0", "--device", "tpu9"), ("unknown device 'tpu9'",)),
])
def test_bad_model_input_gives_one_line(args, fragments):
    one_line_error(xai(*args), *fragments)


def test_offline_without_a_file_says_so_in_one_line(tmp_path):
    """timm's hub refuses at once with HF_HUB_OFFLINE and an empty cache: no network is tried."""
    r = xai_with(tmp_path, "predict", "timm/resnet10t", "chelsea", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    one_line_error(r, "timm/resnet10t:", "--weights PATH")
