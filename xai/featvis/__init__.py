"""Feature visualization by batched activation maximization, in four small modules (the Lucid layout):

- ``param``: how an image is represented (pixels; a decorrelated Fourier spectrum; MACO's fixed magnitude),
- ``transforms``: random pads, shifts, scalings and rotations, drawn per image,
- ``objectives``: what to maximise, one value per image, composable with ``+ - *``,
- ``render``: the loop that optimizes many units at once, one image per unit, with its ``optimize``
  (Adam, plain or normalised gradient ascent) and ``schedule`` (learning rate, input resolution).

Built on them: ``blocks`` (Building Blocks: activation grid, semantic dictionary, neuron groups),
``microscope`` (every channel's visualization and top dataset exemplars) and ``receptive`` (receptive
fields read off the network's geometry).
"""
from . import blocks, microscope, objectives, optimize, param, receptive, schedule, transforms
from .optimize import OPTIMIZERS
from .render import (DEFAULT_LR, DEFAULT_STEPS, Penalties, Rendering, activations, evaluate, forward, render,
                     render_chunked)
from .schedule import SCHEDULES, Schedule, Stage

__all__ = ["blocks", "microscope", "objectives", "param", "receptive", "transforms", "render", "activations", "evaluate",
           "forward", "Penalties", "Rendering", "DEFAULT_LR", "DEFAULT_STEPS", "render_chunked", "optimize", "schedule",
           "OPTIMIZERS", "SCHEDULES", "Schedule", "Stage"]
