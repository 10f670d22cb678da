"""The shortcut detector's decision: exact paired tests against a reference, their intervals, the placebo
reference, the calibration on planted shortcuts, and the weak shortcut the fixed threshold missed."""
import math

import numpy as np
import pytest
import tolerance as tol
import torch
from scipy.stats import binomtest
from torch import nn

from xai.errors import UnknownNameError, XaiError
from xai.shortcuts import calibration as C
from xai.shortcuts import detect_shortcut, lightness_gradient, placebo_weights, square
from xai.shortcuts import poisoned as P
from xai.shortcuts import stats as S
from xai.shortcuts.detector import EffectTest, decide, predict

# -- the statistics against references ------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (50, 500), (1, 2000), (499, 500)])
def test_rate_intervals_match_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(0.95, method="exact")
    # Rule 5: beta quantiles against scipy's root finder (brentq, xtol 2e-12) for the same exact interval.
    assert S.rate_interval(k, n) == pytest.approx((ref.low, ref.high), abs=tol.FORMULA64)
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert S.wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=tol.FORMULA64)  # the same closed form


def test_newcombe_interval_matches_the_published_example():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (ch. 8),
    # as checked by their R package contingencytables: estimate -0.0621, 95% CI -0.1186 to -0.0046.
    t = S.PairedCounts(both=59, only_first=6, only_second=16, neither=80)
    assert t.difference == pytest.approx(-0.0621, abs=5e-5)  # half a unit of the fourth printed decimal
    assert S.paired_difference_interval(t) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


def test_mcnemar_and_holm_by_hand():
    assert S.mcnemar_exact(S.PairedCounts(0, 5, 0, 95)) == pytest.approx(2 ** -5, rel=tol.FORMULA64)
    assert S.mcnemar_exact(S.PairedCounts(0, 3, 1, 6)) == pytest.approx(5 / 16, rel=tol.FORMULA64)  # P(X >= 3 | 4)
    assert S.mcnemar_exact(S.PairedCounts(7, 0, 0, 3)) == 1.0  # no discordant image: nothing against the null
    assert S.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_exact_mcnemar_matches_scipy_binomtest():
    # Ours sums the binomial tail in integers; scipy's binomtest sums it in floats: the same number (rule 5),
    # on every small table and on large ones, where a float sum could lose the tail.
    tables = [(b, c) for b in range(30) for c in range(30) if b + c] + [(400, 300), (2500, 2400), (60, 4000)]
    for b, c in tables:
        ref = binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert S.mcnemar_exact(S.PairedCounts(3, b, c, 11)) == pytest.approx(ref, rel=tol.FORMULA64, abs=1e-300)


# -- the decision on counts with known answers -----------------------------------------------------------------------

def _test(model_yes: int, ref_yes: int, n: int, name: str = "flip", margin: float = 0.05) -> EffectTest:
    """A paired comparison where the model's yes and the reference's yes never fall on the same image."""
    m, r = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    m[:model_yes] = True
    r[model_yes:model_yes + ref_yes] = True
    return EffectTest.compare(name, "?", m, r, 0.95, margin)


def test_ten_percent_flips_against_none_relies():
    t = _test(50, 0, 500)
    d = decide({"flip": t})
    assert d.verdict == "relies" and d.headline == "flip"
    assert t.effect == pytest.approx(0.1) and t.effect_interval[0] > 0.05  # the verdict is where the interval is
    assert t.p_exact == pytest.approx(2 ** -50, rel=tol.FORMULA64)  # exact McNemar: all 50 discordant one way


def test_nothing_against_nothing_on_many_images_is_no_evidence():
    t = _test(0, 0, 500)
    assert decide({"flip": t}).verdict == "no evidence"
    assert t.effect_interval[1] < 0.01  # 500 images rule out an effect of a percent


def test_a_real_but_small_difference_is_no_evidence_of_reliance():
    t = _test(10, 0, 5000)  # +0.2 %: McNemar is sure of it, and sure it is far below the margin
    d = decide({"flip": t})
    assert t.p_exact < 1e-3 and d.verdict == "no evidence" and "McNemar" in d.reason
    assert decide({"flip": _test(10, 0, 5000, margin=0.0)}).verdict == "relies"  # no margin: the exact test


def test_tiny_samples_cannot_tell():
    assert decide({"flip": _test(0, 0, 10)}).verdict == "cannot tell"
    assert decide({"flip": _test(2, 0, 10)}).verdict == "cannot tell"
    assert decide({}).verdict == "cannot tell"


def test_holm_keeps_two_borderline_tests_from_deciding():
    alone = _test(6, 0, 500, margin=0.0)  # exact p = 1/64 < alpha / 2
    assert alone.p_margin == alone.p_exact == pytest.approx(2 ** -6, rel=tol.FORMULA64)
    assert decide({"flip": alone}).verdict == "relies"
    both = decide({"flip": _test(6, 0, 500, margin=0.0), "removal": _test(6, 0, 500, "removal", margin=0.0)})
    assert both.verdict != "relies"  # Holm: 2/64 > alpha / 2


def test_a_stronger_shortcut_reads_stronger():
    weak, strong = _test(50, 0, 500), _test(400, 0, 500)
    assert decide({"flip": weak}).verdict == decide({"flip": strong}).verdict == "relies"
    assert weak.effect_interval[1] < strong.effect_interval[0]  # the grade separates them


def test_margin_p_value_meets_the_interval():
    t = S.PairedCounts(0, 30, 5, 465)  # +5 %
    p = S.margin_p_value(t, 0.02)
    # The p-value is the level at which the interval's lower end reaches the margin: z is bisected to 2**-60,
    # so what is left is float64 rounding of the closed forms (rule 5).
    assert S.paired_difference_interval(t, 1 - 2 * p)[0] == pytest.approx(0.02, abs=tol.FORMULA64)
    assert S.margin_p_value(t, 0.08) > 0.5  # estimate below the margin
    with pytest.raises(XaiError, match="margin"):
        S.margin_p_value(t, -0.1)


# -- coverage and size by simulation (rule 7) -----------------------------------------------------------------------

SIMS = 2000
SLACK = tol.SIGMA * math.sqrt(0.95 * 0.05 / SIMS)  # four standard errors of a coverage estimate near 0.95


@pytest.mark.parametrize("cells,n", [((0.0, 0.10, 0.00, 0.90), 500),  # the case: 10 % flips against none
                                     ((0.0, 0.10, 0.01, 0.89), 500),
                                     ((0.01, 0.02, 0.02, 0.95), 500),  # no effect, rare events
                                     ((0.30, 0.20, 0.10, 0.40), 100)])
def test_intervals_cover_at_the_nominal_rate(cells, n):
    rng = np.random.default_rng(7)
    p = np.array(cells)
    effect, rate = p[1] - p[2], p[0] + p[1]
    paired = single = 0
    for t in rng.multinomial(n, p, size=SIMS):
        counts = S.PairedCounts(*map(int, t))
        lo, hi = S.paired_difference_interval(counts)
        paired += lo <= effect <= hi
        lo, hi = S.rate_interval(counts.both + counts.only_first, n)
        single += lo <= rate <= hi
    assert paired / SIMS >= 0.95 - SLACK  # Newcombe's interval: near nominal, not exact
    assert single / SIMS >= 0.95 - SLACK  # Clopper-Pearson: at least nominal


def test_margin_test_keeps_its_size_at_the_margin():
    rng = np.random.default_rng(9)
    # The effect is exactly the margin: 7 % of images say yes for the model only, 2 % for the reference only.
    hits = sum(S.margin_p_value(S.PairedCounts(*map(int, t)), 0.05) < 0.025
               for t in rng.multinomial(500, (0.01, 0.07, 0.02, 0.90), size=SIMS))
    assert hits / SIMS <= 0.025 + tol.SIGMA * math.sqrt(0.025 * 0.975 / SIMS)


def test_exact_test_keeps_its_size_under_the_null():
    rng = np.random.default_rng(8)
    # Exchangeable outcomes: the model and the reference say yes on 3 % of images each, independently.
    hits = sum(S.mcnemar_exact(S.PairedCounts(*map(int, t))) < 0.05
               for t in rng.multinomial(500, (0.0009, 0.0291, 0.0291, 0.9409), size=SIMS))
    assert hits / SIMS <= 0.05 + tol.SIGMA * math.sqrt(0.05 * 0.95 / SIMS)


def _from_counts(name: str, cells, margin: float) -> EffectTest:
    """The paired outcomes of a 2x2 table (both, model only, reference only, neither), through compare()."""
    both, only_model, only_ref, neither = map(int, cells)
    model = torch.tensor([True] * (both + only_model) + [False] * (only_ref + neither))
    ref = torch.tensor([True] * both + [False] * only_model + [True] * only_ref + [False] * neither)
    return EffectTest.compare(name, "?", model, ref, 0.95, margin)


@pytest.mark.parametrize("margin,cells", [
    (0.05, (0.01, 0.07, 0.02, 0.90)),  # both effects exactly at the margin: the least favourable null
    (0.0, (0.0009, 0.0291, 0.0291, 0.9409)),  # no margin, exchangeable outcomes: McNemar's null
])
def test_the_verdict_keeps_its_false_positive_rate_under_the_null(margin, cells):
    """The whole decision (flip and removal, Holm-adjusted) on simulated tables where the model is not reliant
    beyond the margin: it says "relies" at most alpha / 2 of the time (one-sided tests, rule 7 bound)."""
    rng = np.random.default_rng(11)
    sims, alpha = 1000, 0.05
    relies = 0
    for flip, removal in zip(rng.multinomial(500, cells, size=sims), rng.multinomial(100, cells, size=sims)):
        tests = {name: _from_counts(name, t, margin) for name, t in (("flip", flip), ("removal", removal))}
        relies += decide(tests, alpha).verdict == "relies"
    assert relies / sims <= alpha / 2 + tol.SIGMA * math.sqrt(alpha / 2 * (1 - alpha / 2) / sims)


# -- placebos and the detector on toy models with known answers ---------------------------------------------------

def test_moved_placebo_keeps_the_pattern_off_its_place():
    m = square(4, "top-left")
    w = placebo_weights(m.weight, "moved", 200, seed=3)
    assert torch.equal(w, placebo_weights(m.weight, "moved", 200, seed=3))  # rule 1: seeded
    assert not torch.equal(w, placebo_weights(m.weight, "moved", 200, seed=4))
    assert torch.equal(w.sum((1, 2)), torch.full((200,), 16.0))  # the same area and paint
    assert not (w.bool() & m.region).any()  # never on the marker's own place
    assert len({tuple(v.nonzero()[0].tolist()) for v in w}) > 50  # and at many places
    for v in w:  # each one the same 4x4 square
        r, c = v.nonzero()[0].tolist()
        assert torch.equal(v[r:r + 4, c:c + 4], torch.ones(4, 4))


def test_mirrored_placebo_and_the_placebo_errors():
    g = lightness_gradient(0.3)
    assert torch.equal(placebo_weights(g.weight, "mirrored", 2)[1], g.weight.flip(0, 1))
    with pytest.raises(XaiError, match="leaves no room"):  # a whole-image ramp cannot be moved off itself
        placebo_weights(g.weight, "moved", 2)
    centred = torch.zeros(28, 28)
    centred[12:16, 12:16] = 1
    with pytest.raises(XaiError, match="symmetric"):
        placebo_weights(centred, "mirrored", 2)
    with pytest.raises(UnknownNameError, match="moved"):
        placebo_weights(g.weight, "move", 2)


class Toy(nn.Module):
    """Three classes: 0 and 1 from a small random linear map, 2 from a rule on the pixels.

    ``corner``: class 2 when the top-left 4x4 patch (the marker's place) is near white, a shortcut tied to
    the place. ``white``: class 2 when at least 8 pixels are white anywhere, a reaction to any white patch.
    ``none``: never class 2.
    """

    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule
        self.w = nn.Parameter(torch.randn(2, 784, generator=torch.Generator().manual_seed(0)) * 0.01)

    def forward(self, x):
        base = x.flatten(1) @ self.w.T
        if self.rule == "corner":
            s = 50 * (x[:, 0, 1:5, 1:5].mean((1, 2)) - 0.75)
        elif self.rule == "white":
            s = 10 * ((x >= 0.99).flatten(1).sum(1).float() - 8)
        else:
            s = torch.full((len(x),), -10.0)
        return torch.cat([base, s[:, None]], 1)


@pytest.fixture(scope="module")
def toy_data():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(600, 1, 28, 28, generator=gen) * 0.5, torch.randint(0, 3, (600,), generator=gen)


def test_placebo_reference_convicts_a_shortcut_tied_to_its_place(toy_data):
    x, y = toy_data
    rep = detect_shortcut(Toy("corner"), x, y, 2, marker=square(4, "top-left"), methods={})
    assert rep.verdict == "relies" and rep.relies and rep.reference == "placebo: moved"
    # Every image turns to class 2 with the marker, none with the placebo: the effect is the whole pool.
    assert rep.tests["flip"].effect == 1.0 and rep.tests["removal"].effect == 1.0
    assert rep.flip_rate == 1.0 and rep.removal_drop == 1.0
    assert rep.to_json()["effect"] == 1.0 and rep.to_json()["verdict"] == "relies"


def test_placebo_reference_acquits_a_reaction_to_any_white_patch(toy_data):
    x, y = toy_data
    rep = detect_shortcut(Toy("white"), x, y, 2, marker=square(4, "top-left"), methods={})
    # The fixed threshold would have convicted it (every image flips); the placebo flips every image too.
    assert rep.flip_rate == 1.0
    assert rep.verdict == "no evidence" and rep.tests["flip"].only_model == rep.tests["flip"].only_reference == 0


def test_clean_reference_model(toy_data):
    x, y = toy_data
    rep = detect_shortcut(Toy("corner"), x, y, 2, marker=square(4), reference=Toy("none"), methods={})
    assert rep.verdict == "relies" and rep.reference.startswith("clean control")
    same = detect_shortcut(Toy("corner"), x, y, 2, marker=square(4), reference=Toy("corner"), methods={})
    assert same.verdict == "no evidence" and same.tests["flip"].effect == 0.0


def test_region_only_placebo(toy_data):
    x, y = toy_data
    m = square(4)
    own = y == 2
    rep = detect_shortcut(Toy("corner"), m.apply(x[own]), y[own], 2, region=m.region, methods={})
    assert rep.verdict == "relies" and set(rep.tests) == {"occlusion"} and rep.occlusion_drop == 1.0
    rep = detect_shortcut(Toy("corner"), m.apply(x[own]), y[own], 2, region=m.region, placebo="mirrored",
                          methods={})
    assert rep.verdict == "relies"


def test_few_images_cannot_tell(toy_data):
    x, y = toy_data
    rep = detect_shortcut(Toy("none"), x[:12], y[:12], 2, marker=square(4), methods={})
    assert rep.verdict == "cannot tell" and not rep.relies


# -- real models: the weak shortcut and the calibration -----------------------------------------------------

def test_weak_shortcut_missed_by_the_threshold_is_caught_by_the_test():
    """The issue's failing case on smoke-trained models: a marker and class of our own choosing (the square
    on half the sneakers), which the retired threshold missed, against the clean control on all test images.

    (On a quarter of the shirts or trousers the smoke-trained model's effects are 1 to 3 points, no more than
    a clean model of another seed shows against the same control; the test rightly cannot tell.)"""
    from dataclasses import replace

    from xai.data import fashion_mnist

    x, y = fashion_mnist.load("test")
    clean = P.trained(P.standard_specs()["clean"], "smoke", device="cpu")
    spec = P.square_spec("Sneaker", 0.5)
    weak, marker, c = P.trained(spec, "smoke", device="cpu"), spec.plants[0].marker, spec.plants[0].class_index
    rep = detect_shortcut(weak, x, y, "Sneaker", marker=marker, reference=clean, methods={})
    # The retired rule: the flip rate among images not already called the class, or the removal drop, >= 0.2.
    pred, marked = predict(weak.model, x), predict(weak.model, marker.apply(x))
    eligible = (y != c) & (pred != c)
    assert max(float((marked[eligible] == c).float().mean()), rep.removal_drop) < 0.2
    assert rep.verdict == "relies"
    assert 0.05 < rep.effect_interval[0] and rep.effect_interval[1] < 0.3  # shown above the margin, and weak
    # A clean model of another seed is not convicted against the same control.
    other = P.trained(P.standard_specs()["clean"], replace(P.train_config("smoke"), seed=1), seed=1, device="cpu")
    assert detect_shortcut(other, x, y, "Sneaker", marker=marker, reference=clean, methods={}).verdict != "relies"


@pytest.fixture(scope="module")
def calibration():
    return C.calibrate("smoke")


def test_smoke_calibration(calibration):
    res = calibration
    cfg = C.BUDGETS["smoke"]
    refs = ["clean", *cfg.placebos]
    assert res["settings"]["references"] == refs and res["settings"]["models"] == 4
    assert {(r["reference"], r["fraction"]) for r in res["power"]} == {(r, f) for r in refs for f in cfg.fractions}
    strong = next(r for r in res["models"] if r["kind"] == "poisoned" and r["fraction"] == 1.0)
    assert strong["tests"]["clean"]["verdict"] == "relies" and strong["threshold_rule"]  # every shirt marked
    full = next(r for r in res["power"] if r["reference"] == "clean" and r["fraction"] == 1.0)
    assert full["relies"] == full["models"] == 1 and full["interval"][0] > 0
    fp = {r["reference"]: r for r in res["false_positive"]}
    assert fp["clean"]["models"] == 1 and fp["moved"]["models"] == 2  # placebos also test the controls
    for r in [*res["power"], *res["false_positive"]]:
        assert r["interval"][0] <= r["rate"] <= r["interval"][1]
    # The calibration decides as detect_shortcut does, on the same models and images.
    from xai.data import fashion_mnist

    x, y = fashion_mnist.load("test")
    x, y = x[:cfg.test_images], y[:cfg.test_images]
    weak = next(r for r in res["models"] if r["kind"] == "poisoned" and r["fraction"] == 0.25)
    rep = detect_shortcut(P.trained(P.square_spec("Shirt", 0.25), "smoke", device="cpu"), x, y, "Shirt",
                          marker=square(4), reference=P.trained(P.standard_specs()["clean"], "smoke", device="cpu"),
                          methods={})
    assert weak["tests"]["clean"]["verdict"] == rep.verdict
    assert weak["tests"]["clean"]["effect"] == rep.effect


def test_calibration_config_errors():
    with pytest.raises(XaiError, match="no seed in both"):
        C.CalibrationConfig(seeds=(0, 1), clean_seeds=(1,))
    with pytest.raises(XaiError, match="fractions"):
        C.CalibrationConfig(fractions=(0.0,))
    with pytest.raises(UnknownNameError, match="smoke"):
        C.config("smok")


def test_calibration_study_part(calibration, tmp_path, monkeypatch):
    """The chapter's calibration artifacts: cached on the config, and a curve that is the per-model verdicts
    counted again."""
    from xai.render.store import Store
    from xai.studies import cleverhans_calibration as CAL

    calls = []
    monkeypatch.setattr(C, "calibrate", lambda cfg: calls.append(cfg) or calibration)
    store = Store(tmp_path, "smoke")
    out = CAL.run("smoke", store)
    assert CAL.run("smoke", store) == out and len(calls) == 1  # the second call reads the cached job
    assert calls[0] == C.BUDGETS["smoke"]
    res = store.read_json(out["results"])
    assert (tmp_path / out["figure"]).stat().st_size > 0 and res["figure"] == out["figure"]
    st = res["settings"]
    for r in st["references"]:
        for size in st["marker_sizes"]:
            d = res["curve"][r][str(size)]
            assert d["fractions"] == sorted(st["fractions"])
            for f, power, lo, hi in zip(d["fractions"], d["power"], d["power_low"], d["power_high"]):
                rows = [m for m in res["models"]
                        if m["kind"] == "poisoned" and m["size"] == size and m["fraction"] == f]
                assert power == sum(m["tests"][r]["relies"] for m in rows) / len(rows) and lo <= power <= hi
            # False positives: clean models of other seeds (for the placebos, the controls too).
            kinds = ("clean",) if r == "clean" else ("clean", "control")
            clean = [m for m in res["models"] if m["kind"] in kinds and m["size"] == size]
            assert d["clean_models"] == len(clean)
            assert d["false_positive"] == sum(m["tests"][r]["relies"] for m in clean) / len(clean)
    strong = res["curve"]["clean"]["4"]
    assert strong["power"][-1] == 1.0  # every shirt marked: the smoke model is caught against its control
    (tmp_path / out["figure"]).unlink()  # a deleted figure makes the job stale
    CAL.run("smoke", store)
    assert len(calls) == 2 and (tmp_path / out["figure"]).exists()


def test_the_placebo_fits_the_marker():
    """A marker that leaves room is moved; one that covers the image (the lightness gradient) can only be
    turned, and the verdict names which placebo it was measured against."""
    from xai.shortcuts import placebo as PL
    from xai.shortcuts import poisoned as P

    specs = P.standard_specs()
    square, gradient = specs["square"].plants[0].marker, specs["gradient"].plants[0].marker
    assert PL.fitting_placebo(square.weight) == "moved"
    assert PL.fitting_placebo(gradient.weight) == "mirrored"
    with pytest.raises(XaiError, match="no room"):
        PL.placebo_weights(gradient.weight, "moved", 1)
    turned = PL.placebo_weights(gradient.weight, PL.fitting_placebo(gradient.weight), 2)
    assert not torch.equal(turned[0], gradient.weight) and torch.equal(turned[0], gradient.weight.flip(0, 1))
