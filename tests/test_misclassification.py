"""Confusion bookkeeping, and the misclassification and counterfactual studies end to end on tiny settings."""
import pytest
import torch

from xai.errors import XaiError
from xai.studies.misclassification import confusion_matrix, num, positive_share, top_confusions


def test_confusion_matrix_and_top_confusions():
    true = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 0, 1, 1])
    cm = confusion_matrix(true, pred, 3)
    assert cm.tolist() == [[1, 2, 0], [1, 1, 0], [1, 2, 1]]
    assert int(cm.sum()) == len(true)
    assert top_confusions(cm, 2) == [(0, 1, 2), (2, 1, 2)]  # ties broken by class order
    assert top_confusions(cm, 10)[-1] == (2, 0, 1) and len(top_confusions(cm, 10)) == 4
    with pytest.raises(XaiError):
        confusion_matrix(true, pred[:-1], 3)


def test_num_and_positive_share():
    assert num(float("nan")) is None and num(0.123456) == 0.1235
    assert positive_share(torch.tensor([1.0, -3.0])) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def tiny_profile():
    from dataclasses import replace

    from xai import profiles

    p = replace(profiles.get("smoke"), imagenet_models=("efficientnet_lite0",), photos=("chelsea", "coffee"),
                fmnist_models=("fmnist_cnn",))
    return profiles.with_options(
        p,
        saliency={"ig_steps": 4, "smoothgrad_samples": 4},
        misclassification={"top_confusions": 2, "examples": 6, "mean_images": 8, "test_images": 1000},
        counterfactual={"fmnist_cases": 6, "photo_cases": 1, "test_images": 1000, "compare_methods": ["gradient"],
                        "fmnist": {"confidence": 0.5, "distance": "l1", "weight": 0.01, "tv": 0.01, "steps": 60,
                                   "lr": 0.02, "patience": 10},
                        "fmnist_l2": {"confidence": 0.5, "distance": "l2", "weight": 0.1, "steps": 60, "lr": 0.02,
                                      "patience": 10},
                        "photos": {"confidence": 0.5, "distance": "l1", "weight": 0.01, "tv": 0.01, "steps": 4,
                                   "lr": 0.005, "patience": 2}})


def test_misclassification_study_smoke(tmp_path, tiny_profile):
    from xai.data import images
    from xai.render.store import Store
    from xai.studies import misclassification

    store = Store(tmp_path, "smoke")
    misclassification.run(tiny_profile, store)
    r = store.read_json("misclassification/results.json")
    assert len(r["methods"]) >= 3
    for rec in r["photos"]:  # only labelled photos the model gets wrong
        assert rec["pred"] != rec["true"] == images.photo(rec["photo"]).label
        assert set(rec["spearman_pred_true"]) == {*r["methods"], "grad_cam"}
        assert (tmp_path / rec["figure"]).stat().st_size > 0
    fm = r["fmnist"]["fmnist_cnn"]
    cm = torch.tensor(fm["confusion"])
    assert int(cm.sum()) == fm["test_images"] == 1000
    assert fm["accuracy"] == pytest.approx(float(cm.diag().sum()) / 1000, abs=1e-4)  # stored to 4 decimals (num)
    first = fm["top_confusions"][0]
    assert first["count"] == max(cm[t, p] for t in range(10) for p in range(10) if t != p)
    assert len(first["examples"]) == min(6, first["count"])
    for rel in [fm["confusion_figure"], fm["means_figure"], first["figure"]]:
        assert (tmp_path / rel).stat().st_size > 0


def test_counterfactual_study_smoke(tmp_path, tiny_profile):
    from xai.render.store import Store
    from xai.studies import counterfactual

    store = Store(tmp_path, "smoke")
    counterfactual.run(tiny_profile, store)
    r = store.read_json("counterfactual/results.json")
    cases = r["fmnist"]["cases"]
    assert len(cases) == 6
    for c in cases:
        assert c["pred"] != c["true"] and c["linf"] <= 1.0 and c["l2"] > 0
        assert set(c["spearman"]) == set(r["compare_methods"])
        if c["success"]:
            assert c["prediction"] == c["true"] and c["confidence"] >= 0.5 - 1e-4  # stored to 4 decimals
    assert r["summary"]["fmnist"]["cases"] == 6
    assert len(r["photos"]["cases"]) == 1 and r["photos"]["cases"][0]["id"] == "chelsea"
    assert (tmp_path / r["fmnist"]["figure"]).stat().st_size > 0
