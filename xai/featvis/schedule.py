"""How a rendering's learning rate and the model's input resolution change over its steps.

A :class:`Schedule` is a list of stages, each a share of the steps with a learning-rate factor and an
input scale: at scale 0.5 the transformed image is resampled to half the model's input size before the
network, so that step's passes cost about a quarter. The rendered image keeps its own size throughout;
only what the network sees is coarser. Every image of a batch follows the same schedule (it depends on
the step only), so batched rendering still reproduces one-by-one rendering.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UnknownNameError, XaiError
from .transforms import Compose, Jitter, Resize, Transform


@dataclass(frozen=True)
class Stage:
    share: float  # of the steps
    lr: float = 1.0  # factor on the rendering's learning rate
    scale: float = 1.0  # of the model's input size
    # How a smaller input is made: "resize" the whole view (coarser), or "crop" a random part of it
    # (each image's own offset, from its generator) at the full view's resolution.
    view: str = "resize"


@dataclass(frozen=True)
class Schedule:
    """Stages run in order over ``steps``; the last one takes whatever steps the shares leave.

    ``betas``: Adam's two averaging rates for this schedule (None: PyTorch's and Lucid's 0.9 and 0.999).
    They set how many steps Adam's step size remembers (about ``1 / (1 - beta)``); the other optimizers
    keep no averages and ignore them.
    """

    stages: tuple[Stage, ...] = (Stage(1.0),)
    betas: tuple[float, float] | None = None

    def __post_init__(self):
        if not self.stages:
            raise XaiError("a schedule needs at least one stage")
        for st in self.stages:
            if not (st.share >= 0 and st.lr > 0 and 0 < st.scale <= 1 and st.view in ("resize", "crop")):
                raise XaiError(f"a stage needs share >= 0, lr > 0, 0 < scale <= 1 and view 'resize' or "
                               f"'crop', got {st}")
        if self.betas is not None and not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise XaiError(f"Adam's betas must be two numbers in [0, 1), got {self.betas!r}")

    def stage(self, step: int, steps: int) -> Stage:
        end = 0.0
        for st in self.stages[:-1]:
            end += st.share
            if step < round(end * steps):
                return st
        return self.stages[-1]

    def lr_factor(self, step: int, steps: int) -> float:
        return self.stage(step, steps).lr

    def transforms(self, transform: Transform, size: tuple[int, int], steps: int) -> Callable[[int], Transform]:
        """For each step, the pipeline ending at that stage's share of ``size`` (the full-scale output).
        The extra resize joins the composed map, so each step still resamples once."""
        parts = transform.transforms if isinstance(transform, Compose) else [transform]
        made: dict[tuple[float, str], Transform] = {}
        for st in self.stages:
            key = (st.scale, st.view)
            if st.scale == 1:
                made[key] = transform
            elif key not in made:
                small = (max(1, round(size[0] * st.scale)), max(1, round(size[1] * st.scale)))
                last = Resize(small) if st.view == "resize" else _Crop(size, small)
                made[key] = Compose([*parts, last])
        return lambda step: made[(lambda st: (st.scale, st.view))(self.stage(step, steps))]


class _Crop(Jitter):
    """A random ``small`` part of a ``size`` view (square crops only move by one offset range)."""

    def __init__(self, size: tuple[int, int], small: tuple[int, int]):
        super().__init__(size[0] - small[0])
        self.small = small

    def geometry(self, size, gens):
        a, b, _ = super().geometry(size, gens)
        return a, b, self.small


SCHEDULES: dict[str, Schedule] = {
    # The plain loop: Adam at the rendering's lr with PyTorch's betas (Lucid's and lucent's loop).
    "constant": Schedule(),
    # Adam with shorter memories: beta1 = 0.5 averages the gradient over ~2 steps (0.9: ~10) and beta2 =
    # 0.99 its square over ~100 (0.999: ~1000), so each element's step follows the current gradient rather
    # than the first steps'. Chosen by time to lucent's quality (the bench's featvis row), measured on
    # efficientnet_lite0 (128 px Fourier images, input 224, 256 steps, channels 0-3 of blocks.3 and
    # blocks.5; medians over those 8 units): 44 steps to lucent's final 256-step activation (constant: 60),
    # with a higher final activation (mean 44.9 vs 43.3 and 70.9 vs 69.2). Also measured, and not taken:
    # twice the step on top (36 steps, but a total-variation kink flipped by rounding then moved a batched
    # image 8e-3 from its one-by-one rendering on the tiny test CNN, past rule 6); a first quarter at half
    # the input resolution (Stage(scale=0.5)): 120 to 152 steps on blocks.3, since what is learnt at low
    # resolution does not score at full resolution. sgd and normalized_sgd keep no averages, so for them
    # this is the constant loop.
    "fast": Schedule(betas=(0.5, 0.99)),
}
DEFAULT_SCHEDULE = "fast"


def schedule_named(schedule: str | Schedule) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    return SCHEDULES[schedule]
