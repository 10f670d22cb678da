"""The command line: real output for good input, one clear line and exit 2 for bad input."""
import subprocess
import sys

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
