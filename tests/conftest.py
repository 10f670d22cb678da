"""Shared fixtures. Tests run on the CPU with few threads: the suite must stay fast on 2 cores.

Numerical asserts follow the one tolerance policy in :mod:`tolerance` (tests/tolerance.py). To look for
asserts that hold only by luck on one CPU, run the suite under other arithmetic:

    ATEN_CPU_CAPABILITY=default make test     # no vector kernels (also: avx2, avx512)
    XAI_TEST_THREADS=1 make test              # another thread split of every reduction
    XAI_TEST_FLUSH_DENORMAL=1 make test       # denormals flushed to zero
"""
import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("XAI_TEST_THREADS") or max(1, min(2, os.cpu_count() or 1))))
if os.environ.get("XAI_TEST_FLUSH_DENORMAL"):
    torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def lite0():
    from xai import models

    return models.load("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def fmnist_cnn_smoke():
    from xai import models

    return models.load("fmnist_cnn", budget="smoke", device="cpu", progress=False)
