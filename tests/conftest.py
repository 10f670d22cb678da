"""Shared fixtures. Tests run on the CPU with few threads: the suite must stay fast on 2 cores."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def lite0():
    from xai import models

    return models.load("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def fmnist_cnn_smoke():
    from xai import models

    return models.load("fmnist_cnn", budget="smoke", device="cpu", progress=False)
