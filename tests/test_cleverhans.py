"""Markers, poisoned sets, the shortcut detector, shortcut mass and SpRAy; the Clever Hans study end to end."""
import numpy as np
import pytest
import tolerance as tol
import torch

from xai.errors import UnknownNameError, XaiError
from xai.metrics import shortcut as sm
from xai.shortcuts import (adjusted_rand_index, box_region, cross, detect_shortcut, fill_region, lightness_gradient,
                           ring, spray, square, watermark)
from xai.shortcuts import poisoned as P


def _images(n=6, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# -- markers -------------------------------------------------------------------------------------------------------

def test_square_marker_is_pixel_exact():
    x = _images()
    m = square(4, "top-left", margin=1)
    out = m.apply(x)
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[1:5, 1:5] = True
    assert torch.equal(m.region, inside)
    assert torch.equal(out[..., inside], torch.ones_like(out[..., inside]))  # exactly the paint value
    assert torch.equal(out[..., ~inside], x[..., ~inside])  # every other pixel bit-identical
    assert m.area_share == pytest.approx(16 / 784)


@pytest.mark.parametrize("corner,rows,cols", [("top-right", slice(2, 5), slice(23, 26)),
                                              ("bottom-left", slice(23, 26), slice(2, 5)),
                                              ("bottom-right", slice(23, 26), slice(23, 26))])
def test_square_corners(corner, rows, cols):
    m = square(3, corner, margin=2)
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[rows, cols] = True
    assert torch.equal(m.region, expected)


def test_watermark_blends_exactly_at_its_opacity():
    x = _images(3)
    m = watermark("HI", opacity=0.25, corner="bottom-right", margin=1)
    out = m.apply(x)
    # H and I in the 3x5 font, one blank column apart, 1 px in from the bottom-right corner.
    glyph = torch.tensor([[c == "#" for c in r] for r in
                          ["#.#.###", "#.#..#.", "###..#.", "#.#..#.", "#.#.###"]])
    ink = torch.zeros(28, 28, dtype=torch.bool)
    ink[22:27, 20:27] = glyph
    assert torch.equal(m.region, ink)
    assert torch.equal(out[..., ink], 0.75 * x[..., ink] + 0.25 * 1.0)
    assert torch.equal(out[..., ~ink], x[..., ~ink])


def test_gradient_marker_ramps_and_its_region_is_the_stronger_half():
    x = torch.zeros(1, 1, 28, 28)
    m = lightness_gradient(0.3, "left-to-right")
    out = m.apply(x)[0, 0]
    assert torch.allclose(out[0], torch.linspace(0, 0.3, 28), atol=tol.ulps(2), rtol=0)  # rule 2: a ramp
    assert torch.equal(out, out[:1].expand(28, 28))  # the same in every row
    assert m.region[:, :14].sum() == 0 and m.region[:, 14:].all()
    v = lightness_gradient(0.3, "top-to-bottom").apply(x)[0, 0]
    assert torch.allclose(v[:, 5], torch.linspace(0, 0.3, 28), atol=tol.ulps(2), rtol=0)


def test_cross_and_ring_shapes():
    c = cross(5, "top-right", margin=1)
    assert int(c.region.sum()) == 9 and c.region[3, 22:27].all() and c.region[1:6, 24].all()
    r = ring(5, "bottom-left", margin=1)
    assert int(r.region.sum()) == 16 and not r.region[24, 3]


def test_marker_errors_are_clear():
    with pytest.raises(XaiError, match="outside the 28x28 image"):
        square(30)
    with pytest.raises(XaiError, match="outside"):
        box_region(25, 25, 5, 5)
    with pytest.raises(UnknownNameError, match="top-left"):
        square(4, "top-lft")
    with pytest.raises(XaiError, match="no glyph"):
        watermark("hello?")
    with pytest.raises(XaiError, match="cannot mark images of shape"):
        square(4).apply(torch.zeros(1, 1, 32, 32))


def test_unknown_class_name_suggests_the_right_one():
    with pytest.raises(UnknownNameError, match="did you mean: Shirt"):
        P.class_index("Shrit")
    with pytest.raises(XaiError, match="out of range"):
        P.class_index(10)
    assert P.class_index("shirt") == 6


def test_poison_marks_exactly_the_fraction_of_the_class():
    x = _images(200, seed=1)
    y = torch.arange(200) % 10
    plant = P.Plant(6, square(4), fraction=0.5)
    out, which = P.poison(x, y, [plant], seed=3)
    assert int((which == 0).sum()) == 10 and bool((y[which == 0] == 6).all())
    assert torch.equal(out[which < 0], x[which < 0])
    assert torch.equal(out[which == 0], plant.marker.apply(x[which == 0]))
    again, which2 = P.poison(x, y, [plant], seed=3)
    assert torch.equal(again, out) and torch.equal(which, which2)


# -- metrics ---------------------------------------------------------------------------------------------------------

def test_region_mass_counts_absolute_attribution_inside():
    region = box_region(0, 0, 2, 2, (4, 4))
    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 0, 0], a[0, 0, 3, 3] = -3.0, 1.0  # 3 of 4 units inside, sign ignored
    mass = sm.region_mass(a, region)
    assert mass[0].item() == pytest.approx(0.75)
    assert torch.isnan(mass[1])  # an empty map has no mass to place
    assert sm.concentration(a[:1], region).item() == pytest.approx(0.75 / 0.25)
    s = sm.summarize(mass, region)
    assert s["images"] == 1 and s["empty_maps"] == 1 and s["mass"] == pytest.approx(0.75)


def test_region_outside_the_maps_is_refused():
    with pytest.raises(XaiError, match="does not lie inside the image"):
        sm.region_mass(torch.ones(1, 1, 28, 28), torch.ones(32, 32, dtype=torch.bool))
    with pytest.raises(XaiError, match="whole image"):
        sm.region_mass(torch.ones(1, 1, 4, 4), torch.ones(4, 4, dtype=torch.bool))


def test_fill_region_uses_the_median_outside():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    region = box_region(0, 0, 1, 1, (4, 4))
    assert fill_region(x, region)[0, 0, 0, 0] == 0.0


# -- SpRAy ----------------------------------------------------------------------------------------------------------

def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-0.5)


def test_spray_separates_two_strategies():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(40, 16, 16, generator=gen) * 0.1
    maps[:20, :4, :4] += 1.0  # a "marker" strategy: mass in the corner
    maps[20:, 6:10, 6:10] += 1.0  # an "object" strategy: mass in the centre
    res = spray(maps, neighbours=5)
    assert res.n_clusters == 2
    assert adjusted_rand_index(res.labels, np.arange(40) < 20) == pytest.approx(1.0)
    assert res.eigengap > 0.1 and res.embedding.shape == (40, 2)


# -- models that learned the shortcut ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_models():
    """The small CNN on a 4,096-image slice, clean and with a square on every Shirt: the smoke profile's pair,
    so the checkpoints are shared with its build."""
    specs = P.standard_specs("Shirt", fraction=1.0)
    clean = P.trained(specs["clean"], "smoke", device="cpu")
    poisoned = P.trained(specs["square"], "smoke", device="cpu")
    return clean, poisoned, specs["square"].plants[0]


@pytest.fixture(scope="module")
def test_set():
    from xai.data import fashion_mnist

    x, y = fashion_mnist.load("test")
    return x[:2000], y[:2000]


def test_poisoned_model_relies_on_the_marker_and_the_clean_one_does_not(smoke_models, test_set):
    clean, poisoned, plant = smoke_models
    x, y = test_set
    methods = {"gradient": {}, "integrated_gradients": {"steps": 8}}
    rep_p = detect_shortcut(poisoned, x, y, "Shirt", marker=plant.marker, reference=clean, methods=methods,
                            attribution_images=48)
    rep_c = detect_shortcut(clean, x, y, "Shirt", marker=plant.marker, methods=methods, attribution_images=48)
    assert rep_p.relies and not rep_c.relies  # against the clean control, and the control against the placebo
    # Not rounding bounds: properties of the planted shortcut, with margins (models trained on another
    # CPU take other trajectories, so these are effects that must be large, not values to reproduce).
    assert rep_p.removal_drop > 0.5  # unmarked shirts lose their class
    assert rep_p.flip_rate > rep_c.flip_rate + 0.1
    for m in methods:  # shortcut mass: higher for the poisoned model under every method
        assert rep_p.attribution[m]["mass"] > rep_c.attribution[m]["mass"]
    assert rep_p.attribution["integrated_gradients"]["concentration"] > 2
    assert any(r.startswith("flip:") for r in rep_p.reasons) and "relies if" in rep_p.rule


def test_region_only_detection_by_occlusion(smoke_models, test_set):
    clean, poisoned, plant = smoke_models
    x, y = test_set
    own = y == plant.class_index
    carrying = plant.marker.apply(x[own])  # a data set whose shirts carry the artefact
    rep = detect_shortcut(poisoned, carrying, y[own], plant.class_index, region=plant.marker.region,
                          methods={"gradient": {}})
    assert rep.flip_rate is None and rep.occlusion_drop > 0.5 and rep.relies


def test_detector_errors(smoke_models, test_set):
    clean, _, plant = smoke_models
    x, y = test_set
    with pytest.raises(UnknownNameError, match="did you mean: Shirt"):
        detect_shortcut(clean, x, y, "Shrt", marker=plant.marker)
    with pytest.raises(XaiError, match="does not lie inside the image"):
        detect_shortcut(clean, x, y, "Shirt", region=torch.ones(30, 30, dtype=torch.bool))
    with pytest.raises(XaiError, match="marker function or a candidate region"):
        detect_shortcut(clean, x, y, "Shirt")


def test_spray_on_the_poisoned_model_finds_the_marked_images(smoke_models, test_set):
    from xai.attribution import integrated_gradients

    _, poisoned, plant = smoke_models
    x, y = test_set
    xs = x[y == plant.class_index][:120]
    marked = torch.arange(len(xs)) % 2 == 0
    xs = torch.where(marked[:, None, None, None], plant.marker.apply(xs), xs)
    res = spray(integrated_gradients(poisoned, xs, plant.class_index, steps=8))
    assert adjusted_rand_index(res.labels, marked.numpy()) > 0.8


def test_cleverhans_study_smoke(tmp_path, smoke_models):
    from xai import profiles
    from xai.render.store import Store
    from xai.studies import cleverhans

    profile = profiles.with_options(profiles.get("smoke"), cleverhans={
        "budget": "smoke", "sets": ("clean", "square"), "fraction": 1.0, "test_images": 1000,
        "attribution_images": 16, "spray_images": 60, "calibration": "smoke",
        "methods": {"gradient": {}, "integrated_gradients": {"steps": 4}, "grad_cam": {}}})
    store = Store(tmp_path, "smoke")
    summary = cleverhans.run(profile, store)
    results = store.read_json("cleverhans/results.json")
    plant = results["sets"]["square"]["plants"][0]
    assert plant["class"] == "Shirt" and plant["poisoned"]["relies"] and not plant["clean"]["relies"]
    assert plant["poisoned"]["verdict"] == "relies" and plant["poisoned"]["reference"].startswith("clean control")
    assert plant["poisoned"]["effect_interval"][0] > results["settings"]["min_effect"]
    assert set(plant["poisoned"]["mass"]) == {"gradient", "integrated_gradients", "grad_cam"}
    assert results["spray"]["square"]["poisoned"]["ari"] is not None
    cal = results["calibration"]
    assert cal["budget"] == "smoke" and store.read_json(cal["results"])["curve"]["clean"]["4"]["power"][-1] == 1.0
    for rel in [*results["figures"].values(), results["sets"]["square"]["maps_figure"],
                results["spray"]["square"]["figure"], cal["results"], cal["figure"]]:
        assert (tmp_path / rel).stat().st_size > 0
    assert summary["relies"]["square:Shirt"] == [True, False]
    again = cleverhans.run(profile, store)  # cached: same answer without recomputing
    assert again == summary
