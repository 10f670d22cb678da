"""Seeded runs of captum's samplers, which draw from torch's and numpy's global generators."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's and numpy's global generators seeded, and give the caller's generator
    states back afterwards, so a seeded method neither depends on nor disturbs anyone else's draws."""
    state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)
