"""xai.concepts: TCAV and its test, concept images, NMF and concept discovery, dissection, CRP.

Closed forms on toy models first, then the Clever Hans smoke models, whose marker is a concept with
known truth. Numerical bounds name their rule in tests/tolerance.py.
"""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import tolerance as tol
from tolerance import DIFFERENT, NETWORK, OPTIMIZED, SIGMA, network_close, ulps
from xai.concepts import crp, discovery, dissection, sources, tcav as T
from xai.concepts.taps import layer_activations, layer_gradients
from xai.concepts.nmf import merge_signs, nmf, nmf_transform, split_signs
from xai.errors import UnknownNameError, XaiError

D = 16  # toy activation width


class LinearToy(nn.Module):
    """``feat`` is the flattened input; logit 1 is ``u . feat`` exactly, so its gradient is ``u`` everywhere."""

    def __init__(self, u: torch.Tensor, hidden: bool = False):
        super().__init__()
        self.feat = nn.Identity()
        self.act = nn.ReLU() if hidden else nn.Identity()
        self.head = nn.Linear(D, 3)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[1] = u
            self.head.weight[2] = -u

    def forward(self, x):
        return self.head(self.act(self.feat(x.flatten(1))))


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(D, generator=g)
    u = u / u.norm()
    return LinearToy(u).eval(), u, g


def _noise(g, n):
    return torch.randn(n, 1, 4, 4, generator=g)


# -- TCAV ---------------------------------------------------------------------------------------------
def test_tcav_score_is_one_along_the_logits_direction_and_zero_against_it(toy):
    model, u, g = toy
    concepts = {"aligned": _noise(g, 30) + 3 * u.view(1, 4, 4), "opposite": _noise(g, 30) - 3 * u.view(1, 4, 4)}
    res = T.tcav(model, _noise(g, 40), 1, concepts, _noise(g, 300), ["feat"], runs=20, seed=1)
    aligned, opposite = res.get("aligned", "feat"), res.get("opposite", "feat")
    # Closed form: the gradient is u for every image, so a run scores exactly 1 when its CAV has a positive
    # component along u and exactly 0 otherwise; the concepts are shifted by 3 sigma along +-u.
    assert aligned.scores == [1.0] * 20 and opposite.scores == [0.0] * 20
    assert aligned.significant and opposite.significant  # two-sided: a concept that lowers the score counts
    assert aligned.reported == 1.0 and opposite.reported == 0.0
    assert aligned.alpha == 0.05 / 2  # Bonferroni over the two concepts at one layer
    assert min(aligned.accuracies) > 0.5 and res.null_accuracy["feat"] < max(aligned.accuracies)
    # Random-vs-random CAVs point anywhere: their scores are 0 or 1 by the sign of a random direction on u.
    assert set(aligned.null_scores) <= {0.0, 1.0} and 0 < sum(aligned.null_scores) < 20


def test_random_concepts_pass_the_test_at_the_nominal_rate():
    """A 'concept' drawn afresh from the random distribution every run is the null hypothesis itself: the
    t-test must reject it in about alpha of the trials (rule 7: within SIGMA standard errors of alpha)."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(D, generator=g)
    model = LinearToy(u / u.norm(), hidden=True).eval()  # ReLU: the gradient varies per image, scores are fractions
    trials, alpha, rejected = 30, 0.05, 0
    for trial in range(trials):
        gen = torch.Generator().manual_seed(100 + trial)
        res = T.tcav(model, torch.randn(20, 1, 4, 4, generator=gen), 1,
                     {"random": torch.randn(200, 1, 4, 4, generator=gen)}, torch.randn(200, 1, 4, 4, generator=gen),
                     ["act"], runs=8, set_size=10, seed=trial, alpha=alpha)
        rejected += res.tests[0].significant
    rate = rejected / trials
    assert rate <= alpha + SIGMA * (alpha * (1 - alpha) / trials) ** 0.5


def test_significance_edge_cases():
    assert T.significance([1.0, 1.0], [0.0, 0.0]) == 0.0  # no spread, different: certainly different
    assert T.significance([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert T.significance([0.9, 0.95, 0.92], 0.5) < 0.01  # the paper's one-sample form
    with pytest.raises(XaiError, match="at least 2"):
        T.significance([1.0], [0.0, 1.0])


def test_fit_cav_is_the_regularised_optimum():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 300, generator=g, dtype=torch.float64)  # far more dimensions than images: separable
    y = torch.cat([torch.ones(20), torch.zeros(20)]).double()
    x[:20] += 0.5
    l2 = 0.01
    w, b = T._ridge_logistic(x[None], y[None], l2, 50)
    w, b = w[0], b[0]
    p = torch.sigmoid(x @ w + b)
    grad_w = x.T @ (p - y) / len(y) + l2 * w
    # Rule 2 (float32 spacing as a loose bound on a float64 solve): each entry is a sum of 40 products
    # of magnitude <= max|x|.
    assert float(grad_w.abs().max()) <= ulps(40, float(x.abs().max()))
    assert abs(float((p - y).mean())) <= ulps(40)
    v, acc = T.fit_cav(x[:20], x[20:], held_out=0)
    assert torch.allclose(v.double(), w / w.norm(), atol=ulps(4)) and acc == 1.0  # rule 2: one normalisation
    with pytest.raises(XaiError, match="differ in size"):
        T.fit_cav(x[:20], x[20:, :10])


def test_tcav_scores_match_captum_on_the_same_cavs(tmp_path, smoke_pair, fmnist_test):
    """captum's TCAV, given our classifier, scores the same CAVs as ours: sign counts equal and the mean
    directional derivative (its "magnitude") within rule 3 (its layer gradient is another graph)."""
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier
    from torch.utils.data import DataLoader, TensorDataset

    poisoned, _, marker = smoke_pair
    x, y = fmnist_test
    model, layer = poisoned.model, "relu3"
    concept_x, random_x, cls = sources.marker_images(marker, 20), x[500:520], x[:40][y[:40] == 6][:8]

    class Ours(Classifier):
        def __init__(self):
            self.v = None

        def train_and_eval(self, dataloader, **kw):
            xs, ys = zip(*dataloader)
            xs, ys = torch.cat(xs), torch.cat(ys)
            self.v, _ = T.fit_cav(xs[ys == 0], xs[ys == 1], held_out=0)

        def weights(self):
            return torch.stack([self.v, -self.v])

        def classes(self):
            return [0, 1]

    def concept(i, name, data):
        loader = DataLoader(TensorDataset(data), batch_size=10, collate_fn=lambda b: torch.stack([t[0] for t in b]))
        return Concept(i, name, loader)

    tc = TCAV(model, [layer], classifier=Ours(), save_path=str(tmp_path))
    out = tc.interpret(cls, [[concept(0, "marker", concept_x), concept(1, "random", random_x)]], target=6)
    theirs = next(iter(out.values()))[layer]
    v, _ = T.fit_cav(layer_activations(model, concept_x, layer), layer_activations(model, random_x, layer), held_out=0)
    _, grads, _ = layer_gradients(model, cls, layer, 6)
    dd = T.directional_derivatives(grads, v[None])[:, 0]
    assert float(dd.abs().min()) > NETWORK * float(dd.abs().max())  # no sign within rule 3 of flipping
    assert float(theirs["sign_count"][0]) == float(T.tcav_scores(grads, v[None])[0])
    assert network_close(theirs["magnitude"][:1].float(), dd.mean()[None])


# -- concept images -----------------------------------------------------------------------------------
def test_textures_have_their_period_and_vary():
    a = sources.texture("stripes", 4, 64, period=16, seed=0)
    assert a.shape == (4, 3, 64, 64) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, sources.texture("stripes", 4, 64, period=16, seed=0))  # rule 1: seeded
    grey = a.mean(1) - a.mean((1, 2, 3))[:, None, None]
    spec = torch.fft.fft2(grey).abs()
    f = torch.fft.fftfreq(64)
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    peak = torch.stack([radius.flatten()[s.flatten().argmax()] for s in spec])
    # The fundamental of a square wave of period p (drawn within +-15 %) sits at 1/p, up to one FFT bin.
    assert bool(((peak > 1 / (16 * 1.15) - 1 / 64) & (peak < 1 / (16 * 0.85) + 1 / 64)).all())
    assert float((a[0] - a[1]).abs().mean()) > DIFFERENT  # another orientation and phase per image
    kinds = sources.standard_textures(2, 32)
    assert set(kinds) == {f"{k}-{p}px" for k in sources.TEXTURES for p in (8, 24)}
    with pytest.raises(UnknownNameError, match="did you mean: stripes"):
        sources.texture("stripe", 1, 8)


def test_photo_crops_come_from_their_boxes():
    from xai.data import images

    for concept, boxes in sources.PHOTO_CROPS.items():
        for pid, (t, l, b, r) in boxes:
            h, w = images.load(pid).shape[1:]
            assert 0 <= t < b <= h and 0 <= l < r <= w, (concept, pid)
    c = sources.photo_crops("sky", 4, 32, seed=2)
    assert c.shape == (4, 3, 32, 32) and torch.equal(c, sources.photo_crops("sky", 4, 32, seed=2))
    assert float(c[:, 2].mean()) > float(c[:, 0].mean())  # sky is bluer than it is red
    assert sources.crop_sources("fur") == ["chelsea", "pekinese", "baboon"]
    r = sources.random_photo_crops(3, 32, photos=["coffee", "baboon"], seed=0)
    assert r.shape == (3, 3, 32, 32)


def test_marker_images_carry_exactly_the_marker():
    from xai.shortcuts import markers

    m = markers.square(4, "top-left")
    blank = sources.marker_images(m, 3)
    assert torch.equal(blank[0, 0], m.weight)  # rule 1: 1 * w on black is exactly w for an opaque square
    bg = torch.rand(3, 1, 28, 28)
    assert torch.equal(sources.marker_images(m, 2, background=bg), m.apply(bg[:2]))


# -- NMF and concept discovery ------------------------------------------------------------------------
def test_nmf_reconstructs_a_nonnegative_low_rank_matrix():
    g = torch.Generator().manual_seed(1)
    w0 = torch.rand(60, 3, generator=g) * (torch.rand(60, 3, generator=g) > 0.5)
    h0 = torch.rand(3, 40, generator=g) * (torch.rand(3, 40, generator=g) > 0.5)
    v = w0 @ h0
    f = nmf(v, 3, seed=0)
    rel = float(torch.linalg.norm(v - f.W @ f.H) / torch.linalg.norm(v))
    assert rel <= OPTIMIZED and f.error <= OPTIMIZED  # rule 6: the iterates of an optimizer
    assert bool((f.W >= 0).all() and (f.H >= 0).all())
    assert torch.allclose(f.H.norm(dim=1), torch.ones(3), atol=ulps(40))  # rule 2: unit rows
    again = nmf(v, 3, seed=0)
    assert torch.equal(f.W, again.W) and torch.equal(f.H, again.H)  # rule 1: seeded
    w = nmf_transform(v, f.H)
    assert float(torch.linalg.norm(v - w @ f.H) / torch.linalg.norm(v)) <= OPTIMIZED  # rule 6
    with pytest.raises(XaiError, match="non-negative"):
        nmf(v - 1, 2)


def test_signed_split_round_trips():
    a = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    s, signed = split_signs(a)
    assert signed and torch.equal(s, torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]]))
    assert torch.equal(merge_signs(s, signed), a)  # rule 1: exact subtraction of disjoint parts
    same, signed = split_signs(a.abs())
    assert not signed and torch.equal(same, a.abs())


def test_factor_relevance_splits_gradient_x_activation_exactly():
    g = torch.Generator().manual_seed(2)
    acts, grads = torch.randn(3, 5, 4, 4, generator=g), torch.randn(3, 5, 4, 4, generator=g)
    v, signed = split_signs(discovery.activation_matrix(acts))
    f = nmf(v, 3, seed=0)
    rel = discovery.factor_relevance(acts, grads, f.W, f.H, signed)
    total = (acts.double() * grads.double()).sum((1, 2, 3))
    # Rule 2: the shares of an entry sum to one, so the factors' sums differ from the total by rounding
    # over the 5 * 4 * 4 entries of an image.
    scale = float((acts * grads).abs().sum((1, 2, 3)).max())
    assert torch.allclose(rel.double().sum((1, 2, 3)), total, atol=ulps(80, scale))
    # Hand case: one factor owns a channel outright, so it gets all of that channel's relevance.
    a = torch.tensor([[[[2.0]], [[3.0]]]])  # [1, 2, 1, 1]
    w, h = torch.tensor([[1.0, 1.0]]), torch.eye(2)
    r = discovery.factor_relevance(a, torch.ones_like(a), w, h, False)
    assert torch.equal(r.flatten(), torch.tensor([2.0, 3.0]))  # rule 1: shares of exactly 1 and 0


# -- dissection -------------------------------------------------------------------------------------------------
def test_dissection_iou_by_hand():
    """Identity 'layer' on 4x4 images (no upsampling): unit 0 is high exactly on the labelled 2x2 block of
    image 0 and on one more pixel of image 1; unit 1 is high elsewhere."""
    x = torch.zeros(2, 2, 4, 4)
    x[0, 0, :2, :2] = 5.0
    x[1, 0, 3, 3] = 5.0
    x[0, 1, 2:, 2:] = 5.0
    label = torch.zeros(4, 4, dtype=torch.bool)
    label[:2, :2] = True
    model = nn.Sequential(OrderedDict([("feat", nn.Identity()), ("flat", nn.Flatten())]))
    d = dissection.dissect(model, x, label, ["feat"], quantile=0.75)["feat"]
    # 32 values per unit; the ceil(0.75 * 32) = 24th smallest is 0 for both units, so "> 0" is the mask.
    assert d.thresholds.tolist() == [0.0, 0.0]
    # Unit 0: intersection 4 (image 0), union 4 + 1 (its extra pixel) + 4 (image 1's label, missed) = 9.
    # Unit 1: intersection 0.
    assert d.iou.tolist() == pytest.approx([4 / 9, 0.0], abs=ulps(9))  # rule 2: one division
    assert d.detectors == [0] and d.top(1) == [(0, pytest.approx(4 / 9, abs=ulps(9)))]


def test_top_quantile_leaves_the_top_share_above():
    a = torch.arange(1000.0).view(1, 1, 10, 100)
    t = dissection.top_quantile(a, 0.995)
    assert float(t) == 994.0 and int((a > t).sum()) == 5  # the 995th smallest of 0..999


# -- CRP ---------------------------------------------------------------------------------------------------------
def test_conditional_heatmaps_sum_to_gradient_x_input(smoke_pair, fmnist_test):
    from xai.attribution import gradient_x_input

    poisoned, _, _ = smoke_pair
    x, _ = fmnist_test
    imgs = x[:3]
    gxa = crp.GradientTimesActivation()
    res = crp.conditional_heatmaps(poisoned.model, imgs, 6, "relu2", channels=list(range(32)), propagation=gxa)
    whole = gradient_x_input(poisoned.model, imgs, 6)
    # Rule 3: the 32 conditioned backward passes and captum's one pass are two float32 computations
    # of the same gradient through the network.
    assert network_close(res.heatmaps.sum(1), whole)
    top = crp.conditional_heatmaps(poisoned.model, imgs, 6, "relu2", top=3, propagation=gxa)
    assert top.channels.shape == (3, 3) and top.heatmaps.shape == (3, 3, 1, 28, 28)
    assert top.propagation == "gradient_x_activation"
    order = res.layer_relevance.argsort(dim=1, descending=True)[:, :3]
    assert torch.equal(top.channels, order)  # rule 1: the same relevance, the same ranking
    with pytest.raises(XaiError, match="top must be"):
        crp.conditional_heatmaps(poisoned.model, imgs, 6, "relu2", top=99)


def _bare(entry):
    """The entry's module without its input normalisation, and a function giving what it would see."""
    import copy

    from xai.attribution.lrp import _network_input

    net = copy.deepcopy(entry.model)
    net._forward_pre_hooks.clear()
    return net, lambda x: _network_input(entry.model, x)


def test_lrp_conditional_heatmaps_add_up_to_the_lrp_heatmap(smoke_pair, fmnist_test):
    from xai.attribution.lrp import propagate

    poisoned, _, _ = smoke_pair
    x, _ = fmnist_test
    imgs, t = x[:3], torch.tensor([6, 0, 3])
    full = propagate(poisoned.model, imgs, t, layer="relu2")
    every = crp.conditional_heatmaps(poisoned.model, imgs, t, "relu2", channels=list(range(32)))
    assert every.propagation == "lrp_epsilon_plus_flat"
    scale = float(full.relevance.abs().max())
    assert scale > 0
    # relu2 is a cut of the network (every path to the output runs through it), and the rules are
    # linear in the relevance they receive: the 32 conditioned passes sum to the one unconditioned pass.
    # Rule 3: 32 float32 passes summed against one, through the layers below relu2.
    assert tol.network_close(every.heatmaps.sum(1), full.relevance)
    # The relevance at the layer is the full pass's, channel by channel (rule 1: the same pass).
    assert torch.equal(every.layer_relevance, full.layer_relevance.flatten(2).sum(2))
    # Top channels plus the rest of them: the same whole, and the top ones ranked by their relevance.
    top = crp.conditional_heatmaps(poisoned.model, imgs, t, "relu2", top=3, rest=True)
    assert torch.equal(top.channels, every.layer_relevance.topk(3, dim=1).indices)
    assert tol.network_close(top.heatmaps.sum(1) + top.rest, full.relevance)
    # Each channel's heatmap carries that channel's relevance minus what the merged norms' biases
    # below relu2 absorb: for a trained model, most of it, and never more than all of it.
    got = top.heatmaps.flatten(2).sum(2)
    assert ((got - top.channel_relevance).abs() <= top.channel_relevance.abs() + tol.NETWORK * scale).all()
    assert not torch.allclose(top.heatmaps[:, 0], top.heatmaps[:, 1])  # conditioning changes the map


def test_lrp_conditional_heatmaps_agree_with_zennit_crp(smoke_pair, fmnist_test):
    """zennit-crp (Achtibat et al.'s implementation) masks the relevance at the layer's output during the
    backward pass from the logit; we start a second pass at the layer. Same rules, same canonizer."""
    from crp.attribution import CondAttribution
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    poisoned, _, _ = smoke_pair
    net, normalise = _bare(poisoned)
    x, _ = fmnist_test
    xn, t = normalise(x[:2]), [6, 2]
    ours = crp.conditional_heatmaps(net, xn, torch.tensor(t), "relu2", top=3)
    attribution = CondAttribution(net)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    whole = attribution(xn.clone().requires_grad_(True), [{"y": [c]} for c in t], composite, record_layer=["relu2"])
    theirs_rel = whole.relevances["relu2"].flatten(2).sum(2)
    scale = float(theirs_rel.abs().max())
    # Rule 5 (LRP is as well-conditioned as the gradient here: ReLU passes, max-pool routes): the same
    # algorithm in another library's graph.
    assert torch.allclose(ours.layer_relevance, theirs_rel, rtol=0, atol=tol.CROSS_LIBRARY * scale)
    for i in range(2):
        conds = [{"relu2": [int(c)], "y": [t[i]]} for c in ours.channels[i]]
        theirs = attribution(xn[i:i + 1].expand(3, -1, -1, -1).clone().requires_grad_(True), conds, composite).heatmap
        mine = ours.heatmaps[i].sum(1)  # their heatmap sums the input channels
        assert tol.network_close(mine, theirs, tol.CROSS_LIBRARY), (i, (mine - theirs).abs().max())


def test_lrp_conditional_heatmaps_on_efficientnet_lite0(lite0):
    """A layer between two blocks of a network with residual adds and depthwise convolutions: its
    top channels and the rest add up to LRP of the logit through the model's own canonizers."""
    import torch.nn.functional as F

    from xai.attribution.lrp import propagate
    from xai.data import images

    x = F.interpolate(lite0.prepare(images.load("chelsea"))[None], size=(128, 128), mode="bilinear", antialias=True)
    res = crp.conditional_heatmaps(lite0.model, x, 281, "blocks.4", top=2, rest=True)
    full = propagate(lite0.model, x, 281, layer="blocks.4")
    assert res.layer_relevance.shape == (1, 112) and res.heatmaps.shape == (1, 2, 3, 128, 128)
    # Rule 3, through the canonized blocks below blocks.4.
    assert tol.network_close(res.heatmaps.sum(1) + res.rest, full.relevance)
    assert torch.equal(res.layer_relevance, full.layer_relevance.flatten(2).sum(2))


def test_lrp_conditioning_refuses_a_model_lrp_has_no_rules_for():
    from xai.errors import NotApplicableError

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(NotApplicableError, match="GELU"):
        crp.conditional_heatmaps(net, torch.rand(1, 1, 8, 8), 0, "1", top=2)
    # The gradient x activation propagation still serves it, under its own name.
    res = crp.conditional_heatmaps(net, torch.rand(1, 1, 8, 8), 0, "0", top=2, propagation=crp.GradientTimesActivation())
    assert res.propagation == "gradient_x_activation"


# -- the Clever Hans smoke models: a concept with known truth -------------------------------------------------
@pytest.fixture(scope="module")
def smoke_pair():
    from xai.shortcuts import poisoned as P

    specs = P.standard_specs("Shirt", fraction=1.0)
    return (P.trained(specs["square"], "smoke", device="cpu"), P.trained(specs["clean"], "smoke", device="cpu"),
            specs["square"].plants[0].marker)


@pytest.fixture(scope="module")
def fmnist_test():
    from xai.data import fashion_mnist

    x, y = fashion_mnist.load("test")
    return x[:3000], y[:3000]


def test_tcav_of_the_marker_poisoned_vs_clean(smoke_pair, fmnist_test):
    poisoned, clean, marker = smoke_pair
    x, y = fmnist_test
    shirts = x[y == 6][:60]
    concepts = {"marker": sources.marker_images(marker, 30)}
    # Not rounding bounds: properties of the planted shortcut, with margins (another CPU trains another model).
    p = T.tcav(poisoned.model, shirts, 6, concepts, x[2000:2400], ["relu3"], runs=10).get("marker", "relu3")
    c = T.tcav(clean.model, shirts, 6, concepts, x[2000:2400], ["relu3"], runs=10).get("marker", "relu3")
    assert p.significant and p.mean > 0.8
    assert not (c.significant and c.mean > 0.5)


def test_a_discovered_concept_sits_on_the_marker_for_the_poisoned_model(smoke_pair, fmnist_test):
    poisoned, clean, marker = smoke_pair
    x, y = fmnist_test
    marked = marker.apply(x[y == 6][:60])
    best = {}
    for name, entry in (("poisoned", poisoned), ("clean", clean)):
        c = discovery.discover(entry.model, marked, "relu3", 6, k=6)
        loc = discovery.localisation(c, marker.region)
        g = max(range(c.k), key=lambda i: loc[i]["relevance_mass"])
        best[name] = (loc[g]["relevance_concentration"], float(c.importance()[g]))
        # Rule 2: the concepts' shares sum to the total up to rounding of the 6 x 7 x 7 float32 entries.
        scale = float(c.relevance.abs().sum((1, 2, 3)).max())
        assert torch.allclose(c.relevance.double().sum((1, 2, 3)), c.total_relevance.double(), atol=ulps(6 * 49, scale))
    # Effects with margins, not rounding bounds: a concept of the poisoned model concentrates its relevance
    # on the marker (several times its 2 % area share) and carries more of the class evidence than the clean
    # model's best-placed concept does.
    assert best["poisoned"][0] > 3 and best["poisoned"][0] > best["clean"][0]
    assert best["poisoned"][1] > best["clean"][1]


def test_dissection_finds_marker_units_beyond_the_first_layer_only_when_poisoned(smoke_pair, fmnist_test):
    poisoned, clean, marker = smoke_pair
    x, _ = fmnist_test
    marked = marker.apply(x[:400])
    found = {}
    for name, entry in (("poisoned", poisoned), ("clean", clean)):
        d = dissection.dissect(entry.model, marked, marker.region, ["relu1", "relu2", "relu3"])
        found[name] = {layer: r.detectors for layer, r in d.items()}
        assert d["relu2"].iou.shape == (32,) and len(d["relu3"].top(5)) == 5
    # The white square on black is a low-level edge both models' first layers see; deeper, only the
    # poisoned model keeps units that fire on it.
    deep = {k: len(v["relu2"]) + len(v["relu3"]) for k, v in found.items()}
    assert deep["poisoned"] > deep["clean"]
