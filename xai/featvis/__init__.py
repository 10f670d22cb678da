"""Feature visualization by batched activation maximization, in four small modules (the Lucid layout):

- ``param``: how an image is represented (pixels; a decorrelated Fourier spectrum; MACO's fixed magnitude),
- ``transforms``: random pads, shifts, scalings and rotations, drawn per image,
- ``objectives``: what to maximise, one value per image, composable with ``+ - *``,
- ``render``: the Adam loop that optimizes many units at once, one image per unit.
"""
from . import objectives, param, transforms
from .render import DEFAULT_LR, DEFAULT_STEPS, Penalties, Rendering, activations, evaluate, forward, render

__all__ = ["objectives", "param", "transforms", "render", "activations", "evaluate", "forward", "Penalties", "Rendering",
           "DEFAULT_LR", "DEFAULT_STEPS"]
