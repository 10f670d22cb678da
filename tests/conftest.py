"""Shared fixtures. Tests run on the CPU with few threads: the suite must stay fast on 2 cores.

Numerical asserts follow the one tolerance policy in :mod:`tolerance` (tests/tolerance.py). To look for
asserts that hold only by luck on one CPU, run the suite under other arithmetic:

    ATEN_CPU_CAPABILITY=default make test     # no vector kernels (also: avx2, avx512)
    XAI_TEST_THREADS=1 make test              # another thread split of every reduction
    XAI_TEST_FLUSH_DENORMAL=1 make test       # denormals flushed to zero
"""
import functools
import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

# Under xdist's workers (pyproject's addopts) the cores are shared out: one thread per worker, and one
# for the builds a test starts (they inherit OMP_NUM_THREADS). Two workers of two OpenMP threads each
# on two cores spin against each other: the suite ran at a quarter of its speed.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("XAI_TEST_THREADS") or _THREADS))
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


# -- a localhost server and Chromium, one of each per session ----------------------------------------
# Here and not in a test module: a module that imports a session fixture from another module gets a
# second instance of it, and a second sync_playwright() inside the first one's event loop fails.

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A browser that navigates away mid-transfer (the root redirect) breaks the pipe; not an error.
        if not issubclass(sys.exc_info()[0], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="session")
def serve():
    """``serve(folder) -> base URL``; every server stops at the end of the session."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(folder))
        srv = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def chromium_path() -> str:
    for c in [os.environ.get("XAI_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"]:
        if c and os.access(c, os.X_OK):
            return c
    pytest.fail("no Chromium: run `.venv/bin/python scripts/setup-browser` (make test does) or set XAI_CHROMIUM")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` (pyproject's addopts) a test module runs on one worker, so a module's
    fixtures are built once; modules that must not run at the same time (two local Ray clusters) name a
    common group with ``pytestmark = pytest.mark.xdist_group(...)``."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
