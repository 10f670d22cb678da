"""TCAV (Kim et al. 2018): does a human concept move a class score, and is that more than chance?

* A **concept activation vector** (CAV) is the normal of a linear classifier separating a layer's
  activations (flattened, ``C*H*W``) on images of the concept from those on random images.
* The **directional derivative** of the class score along a CAV is ``grad_a h_k(a(x)) . v``; the
  **TCAV score** is the fraction of the class's images where it is positive.
* The **test**: the CAV is trained ``runs`` times, each against another random set, and the scores
  are compared by a two-sided t-test with scores of CAVs that separate one random set from another.
  Only concepts that pass (Bonferroni-corrected over every concept and layer of the call) have a
  :attr:`ConceptTest.reported` score. With ``null=0.5`` the scores are tested against 0.5 instead
  (one-sample), the wording of the paper; the two-sample form is what its code and captum's tutorial do.

Own code, not captum's ``TCAV``, for four reasons: captum's default classifier needs scikit-learn,
which the project does not depend on; it keeps activations and CAVs as files under ``save_path``; its
train/test split shuffles with Python's global ``random``; and the significance test is left to the
user. The score itself is captum's ``sign_count`` (the tests check ours against it on the same CAVs).

The classifier is an L2-regularised logistic regression (``mean log-loss + l2/2 |w|^2``, an
unpenalised intercept) solved exactly by Newton's method in float64. With far fewer images than
dimensions its solution lies in the span of the training activations, so it is solved there
(through the eigenvectors of their Gram matrix): an ``n``-dimensional problem instead of a
``C*H*W``-dimensional one, deterministic, and converged to machine precision in a few steps.

**Random sets.** Each run draws its random set afresh from ``random_images`` (without replacement
within a set); each null score separates two freshly drawn random sets, so null scores are
independent of each other. A *fixed* random set tested as a concept shares its positive images across
runs and is then often "significant": the concept set, not only the class, shapes every CAV. (On the
smoke Clever Hans CNN at ``relu3``, each of 20 fixed sets of 50 random test images scored more than 0.3
away from 0.5 in a single run, 13 had p < 0.05 over 20 runs, and 7 passed the Bonferroni-corrected test.)
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaiError
from .taps import activations_at, layer_gradients

_FIT_BYTES = 1 << 28  # float64 activations solved in one batch of CAV fits (256 MB)


# -- the classifier ---------------------------------------------------------------------------------------
def fit_cav(positive: torch.Tensor, negative: torch.Tensor, *, l2: float = 0.01, held_out: float = 1 / 3,
            seed: int = 0, iters: int = 50) -> tuple[torch.Tensor, float]:
    """``(unit CAV [D], held-out accuracy)`` of a logistic regression of ``positive`` against ``negative``
    activations (each ``[n, ...]``, flattened). ``held_out`` of each side (seeded) is kept out of the fit to
    measure the accuracy; with ``held_out=0`` the fit uses every image and the accuracy is on the
    training images."""
    v, acc = fit_cavs(positive[None], negative[None], l2=l2, held_out=held_out, seeds=[seed], iters=iters)
    return v[0], float(acc[0])


def fit_cavs(positives: torch.Tensor, negatives: torch.Tensor, *, l2: float = 0.01, held_out: float = 1 / 3,
             seeds: Sequence[int] | None = None, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_cav` for ``R`` problems at once (``positives`` ``[R, n, ...]``, ``negatives`` ``[R, m, ...]``),
    solved as one batch; problem ``r``'s split is seeded ``seeds[r]`` (default ``r``). Returns ``([R, D], [R])``."""
    pos, neg = positives.flatten(2), negatives.flatten(2)
    r_count, n_pos, d = pos.shape
    n_neg = neg.shape[1]
    if neg.shape[2] != d or neg.shape[0] != r_count:
        raise XaiError(f"concept and random activations differ in size: {tuple(pos.shape)} vs {tuple(neg.shape)}")
    if min(n_pos, n_neg) < 2:
        raise XaiError("a CAV needs at least 2 images on each side")
    if not 0 <= held_out < 1:
        raise XaiError(f"held_out must be a fraction in [0, 1), got {held_out}")
    seeds = list(range(r_count)) if seeds is None else list(seeds)
    t_pos, t_neg = (min(n - 1, int(round(held_out * n))) for n in (n_pos, n_neg))
    orders = []
    for s in seeds:
        gen = torch.Generator().manual_seed(s)
        orders.append((torch.randperm(n_pos, generator=gen), torch.randperm(n_neg, generator=gen)))
    op = torch.stack([o[0] for o in orders])[:, :, None].expand(-1, -1, d)
    on = torch.stack([o[1] for o in orders])[:, :, None].expand(-1, -1, d)
    pos, neg = pos.gather(1, op).double(), neg.gather(1, on).double()  # each problem's images in its own order
    x = torch.cat([pos[:, t_pos:], neg[:, t_neg:]], 1)
    y = torch.cat([torch.ones(n_pos - t_pos), torch.zeros(n_neg - t_neg)]).double().expand(r_count, -1)
    w, b = _ridge_logistic(x, y, l2, iters)
    if held_out > 0:
        x_test = torch.cat([pos[:, :t_pos], neg[:, :t_neg]], 1)
        y_test = torch.cat([torch.ones(t_pos), torch.zeros(t_neg)]).double().expand(r_count, -1)
    else:
        x_test, y_test = x, y
    pred = ((x_test @ w[:, :, None]).squeeze(-1) + b[:, None]) > 0
    accuracy = (pred.double() == y_test).double().mean(1)
    norm = w.norm(dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise XaiError("the concept and random activations cannot be told apart: the CAV is zero")
    return (w / norm).float(), accuracy.float()


def _ridge_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each problem of the batch (``x`` ``[R, n, D]``, ``y`` ``[R, n]``), minimise
    ``mean BCE(x w + b, y) + l2/2 |w|^2`` over ``w`` in the row span of ``x`` (where the optimum lies), by
    damped Newton steps on ``(z, b)`` with ``w = basis z``. Returns ``w [R, D]`` and ``b [R]``."""
    if l2 <= 0:
        raise XaiError(f"l2 must be positive (without it separable concepts have no finite CAV), got {l2}")
    r_count, n, _ = x.shape
    evals, evecs = torch.linalg.eigh(x @ x.transpose(1, 2))
    # Directions of (numerically) zero variance get no feature: their coefficient only pays the penalty and
    # stays 0, so every problem keeps the same shape whatever its rank.
    keep = evals > evals.amax(1, keepdim=True) * n * torch.finfo(torch.float64).eps
    s = evals.clamp_min(0).sqrt()
    feats = evecs * torch.where(keep, s, torch.zeros_like(s))[:, None, :]  # x on an orthonormal basis of its rows
    inv = torch.where(keep, 1 / s.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(s))
    design = torch.cat([feats, torch.ones(r_count, n, 1, dtype=torch.float64)], 2)  # [R, n, n + 1]
    penalty = torch.cat([torch.full((n,), l2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    theta = torch.zeros(r_count, n + 1, dtype=torch.float64)

    def objective(t: torch.Tensor) -> torch.Tensor:
        z = (design @ t[:, :, None]).squeeze(-1)
        return F.softplus(z).mean(1) - (y * z).mean(1) + 0.5 * (penalty * t * t).sum(1)

    value = objective(theta)
    for _ in range(iters):
        p = torch.sigmoid((design @ theta[:, :, None]).squeeze(-1))
        grad = (design.transpose(1, 2) @ (p - y)[:, :, None]).squeeze(-1) / n + penalty * theta
        hess = (design * (p * (1 - p))[:, :, None]).transpose(1, 2) @ design / n + torch.diag(penalty)
        hess[:, -1, -1] += 1e-12  # the intercept's curvature vanishes where every image is classified surely
        step = torch.linalg.solve(hess, grad)
        # Newton's decrement, half the objective decrease a full step predicts: below float64's resolution
        # of the objective, a problem has converged and keeps its value.
        active = (grad * step).sum(1) > 1e-13 * value.abs().clamp_min(1)
        if not bool(active.any()):
            break
        # Backtracking, per problem: Newton's full step can overshoot far from the optimum.
        scale = torch.ones(r_count, 1, dtype=torch.float64)
        accepted = ~active
        nxt, nxt_value = theta.clone(), value.clone()
        for _ in range(40):
            cand = theta - scale * step
            cv = objective(cand)
            ok = (cv <= value) & ~accepted
            nxt[ok], nxt_value[ok] = cand[ok], cv[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            scale = torch.where(accepted[:, None], scale, scale / 2)
        theta, value = nxt, nxt_value
    coef = (evecs @ (inv * theta[:, :n])[:, :, None]).squeeze(-1)  # [R, n]: w = x^T coef
    w = (x.transpose(1, 2) @ coef[:, :, None]).squeeze(-1)
    return w, theta[:, n]


# -- scores --------------------------------------------------------------------------------------------
def directional_derivatives(grads: torch.Tensor, cavs: torch.Tensor) -> torch.Tensor:
    """``[N, K]``: each image's score gradient (``[N, ...]``, flattened) dotted with each CAV ``[K, D]``."""
    return grads.flatten(1).float() @ cavs.float().T


def tcav_scores(grads: torch.Tensor, cavs: torch.Tensor) -> torch.Tensor:
    """``[K]``: the fraction of images whose directional derivative along each CAV is positive."""
    return (directional_derivatives(grads, cavs) > 0).float().mean(0)


def significance(scores: Sequence[float], null: Sequence[float] | float) -> float:
    """Two-sided p-value that ``scores`` and ``null`` (random-vs-random scores, or one number such as
    0.5) have the same mean: Student's two-sample t-test (as the paper's code), or a one-sample one.
    Samples without spread that differ are certainly different (p = 0); equal ones are not (p = 1)."""
    from scipy import stats

    a = torch.as_tensor(list(scores), dtype=torch.float64)
    if isinstance(null, (int, float)):
        if len(a) < 2:
            raise XaiError("the t-test needs at least 2 scores")
        if float(a.std()) == 0:
            return 0.0 if float(a.mean()) != float(null) else 1.0
        return float(stats.ttest_1samp(a.numpy(), float(null)).pvalue)
    b = torch.as_tensor(list(null), dtype=torch.float64)
    if len(a) < 2 or len(b) < 2:
        raise XaiError("the t-test needs at least 2 scores on each side")
    if float(a.std()) == 0 and float(b.std()) == 0:
        return 0.0 if float(a.mean()) != float(b.mean()) else 1.0
    with warnings.catch_warnings():  # one side without spread (all runs scored 1) is a valid sample here
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a.numpy(), b.numpy()).pvalue)
    return p if not math.isnan(p) else 1.0


# -- the experiment ------------------------------------------------------------------------------------------
@dataclass
class ConceptTest:
    """One concept at one layer: its scores over runs, the null's, and the verdict."""

    concept: str
    layer: str
    scores: list[float]
    accuracies: list[float]  # held-out accuracy of each run's CAV
    null_scores: list[float]
    p_value: float
    alpha: float  # the corrected threshold the p-value is compared with
    significant: bool
    mean: float
    std: float

    @property
    def reported(self) -> float | None:
        """The mean score where the test passed, else None: the paper reports nothing else."""
        return self.mean if self.significant else None

    def to_json(self) -> dict:
        return {**asdict(self), "reported": self.reported}


@dataclass
class TcavResult:
    target: int
    layers: list[str]
    runs: int
    set_size: int
    images: int  # class images whose gradients were taken
    null: str  # "random" or the number tested against
    tests: list[ConceptTest] = field(default_factory=list)
    null_accuracy: dict[str, float] = field(default_factory=dict)  # per layer, mean held-out accuracy

    def get(self, concept: str, layer: str) -> ConceptTest:
        for t in self.tests:
            if t.concept == concept and t.layer == layer:
                return t
        raise XaiError(f"no test of concept {concept!r} at layer {layer!r}")

    def to_json(self) -> dict:
        return {"target": self.target, "layers": self.layers, "runs": self.runs, "set_size": self.set_size,
                "images": self.images, "null": self.null, "null_accuracy": self.null_accuracy,
                "tests": [t.to_json() for t in self.tests]}


@dataclass
class CavBank:
    """Every CAV of an experiment, trained once and scored for any number of classes: per layer, the
    concepts' ``runs`` CAVs each (in ``concepts`` order) followed by ``runs`` random-vs-random CAVs."""

    concepts: list[str]
    layers: list[str]
    runs: int
    set_size: int
    vectors: dict[str, torch.Tensor]  # layer -> [(len(concepts) + 1) * runs, D]
    accuracies: dict[str, torch.Tensor]  # layer -> the same rows' held-out accuracies

    def concept_rows(self, layer: str, concept: str) -> slice:
        k = self.concepts.index(concept)
        return slice(k * self.runs, (k + 1) * self.runs)

    def null_rows(self, layer: str) -> slice:
        return slice(len(self.concepts) * self.runs, (len(self.concepts) + 1) * self.runs)


def train_cavs(model: nn.Module, concepts: Mapping[str, torch.Tensor], random_images: torch.Tensor,
               layers: Sequence[str], *, runs: int = 20, set_size: int | None = None, l2: float = 0.01,
               held_out: float = 1 / 3, seed: int = 0, batch: int = 32) -> CavBank:
    """Run ``i`` trains one CAV per concept against a random set drawn (seeded) from ``random_images``, of
    ``set_size`` images (default: the smallest concept set; a larger concept is subsampled per run), and
    one CAV between two freshly drawn random sets (the null). Activations are computed once per layer
    and the CAVs of a layer are fitted in batches."""
    if not concepts:
        raise XaiError("TCAV needs at least one concept")
    if runs < 2:
        raise XaiError(f"the significance test needs at least 2 runs, got {runs}")
    size = set_size or min(len(v) for v in concepts.values())
    if size < 2 or size > len(random_images):
        raise XaiError(f"random sets of {size} images cannot be drawn from {len(random_images)} random images")
    small = [k for k, v in concepts.items() if len(v) < size]
    if small:
        raise XaiError(f"concepts {small} have fewer than set_size={size} images")
    gen = torch.Generator().manual_seed(seed)

    def draw(n_from: int) -> torch.Tensor:
        return torch.randperm(n_from, generator=gen)[:size]

    negatives = [draw(len(random_images)) for _ in range(runs)]
    subsets = {k: [draw(len(v)) for _ in range(runs)] for k, v in concepts.items()}
    null_pairs = [(draw(len(random_images)), draw(len(random_images))) for _ in range(runs)]
    bank = CavBank(list(concepts), list(layers), runs, size, {}, {})
    rand_all = activations_at(model, random_images, layers, batch=batch)
    concept_acts = {name: activations_at(model, imgs, layers, batch=batch) for name, imgs in concepts.items()}
    for layer in layers:
        rand = rand_all[layer]
        problems = []  # (positive source, its indices, negative indices, seed); stacked per batch
        for name in concepts:
            acts = concept_acts[name][layer]
            problems += [(acts, subsets[name][i], negatives[i], seed + i) for i in range(runs)]
        problems += [(rand, a, b, seed + i) for i, (a, b) in enumerate(null_pairs)]
        cavs, accs = [], []
        per = max(1, _FIT_BYTES // (2 * size * rand[0].numel() * 8))  # problems per batch, memory-bound
        for start in range(0, len(problems), per):
            chunk = problems[start:start + per]
            pos = torch.stack([src[i] for src, i, _, _ in chunk])
            neg = torch.stack([rand[j] for _, _, j, _ in chunk])
            v, acc = fit_cavs(pos, neg, l2=l2, held_out=held_out, seeds=[sd for *_, sd in chunk])
            cavs.append(v), accs.append(acc)
        bank.vectors[layer], bank.accuracies[layer] = torch.cat(cavs), torch.cat(accs)
    return bank


def score(bank: CavBank, model: nn.Module, class_images: torch.Tensor, target: int, *, alpha: float = 0.05,
          null: str | float = "random", output: str = "logit", batch: int = 32) -> TcavResult:
    """Test every concept of ``bank`` for class ``target`` on ``class_images`` at every layer: the gradients
    once per layer, every CAV scored by one matrix product, ``alpha`` divided by concepts x layers."""
    if null != "random" and not isinstance(null, (int, float)):
        raise XaiError(f"null must be 'random' or a score such as 0.5, got {null!r}")
    alpha_eff = alpha / (len(bank.concepts) * len(bank.layers))
    result = TcavResult(target=int(target), layers=list(bank.layers), runs=bank.runs, set_size=bank.set_size,
                        images=int(class_images.shape[0]), null="random" if null == "random" else str(null))
    for layer in bank.layers:
        _, grads, _ = layer_gradients(model, class_images, layer, target, output=output, batch=batch)
        scores = tcav_scores(grads, bank.vectors[layer])
        null_scores = scores[bank.null_rows(layer)].tolist()
        result.null_accuracy[layer] = float(bank.accuracies[layer][bank.null_rows(layer)].mean())
        for name in bank.concepts:
            rows = bank.concept_rows(layer, name)
            mine = scores[rows].tolist()
            p = significance(mine, null_scores if null == "random" else float(null))
            m = torch.tensor(mine, dtype=torch.float64)
            result.tests.append(ConceptTest(
                concept=name, layer=layer, scores=[round(v, 6) for v in mine],
                accuracies=[round(v, 6) for v in bank.accuracies[layer][rows].tolist()],
                null_scores=[round(v, 6) for v in null_scores], p_value=p, alpha=alpha_eff,
                significant=p < alpha_eff, mean=float(m.mean()), std=float(m.std())))
    return result


def tcav(model: nn.Module, class_images: torch.Tensor, target: int, concepts: Mapping[str, torch.Tensor],
         random_images: torch.Tensor, layers: Sequence[str], *, runs: int = 20, set_size: int | None = None,
         l2: float = 0.01, held_out: float = 1 / 3, alpha: float = 0.05, null: str | float = "random",
         output: str = "logit", seed: int = 0, batch: int = 32) -> TcavResult:
    """TCAV of each concept (a batch of images) for class ``target`` on ``class_images``, at each layer:
    :func:`train_cavs` then :func:`score` (for several classes, train once and score each)."""
    bank = train_cavs(model, concepts, random_images, layers, runs=runs, set_size=set_size, l2=l2,
                      held_out=held_out, seed=seed, batch=batch)
    return score(bank, model, class_images, target, alpha=alpha, null=null, output=output, batch=batch)
