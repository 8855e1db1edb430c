"""Seeds, the executor fixture of the op tests, and the ``slow`` tier.

``pytest -m "not slow"`` is the inner loop (a few minutes on 2 cores): every
op on the CPU kernels, the models, loading, the CLI's argument checks.  The
``slow`` tier adds the CUDA kernels under the CPU harness, its ASan and
sm_86 re-runs, end-to-end training runs (DDP included), gradchecks, parity
against the peers at full size, ONNX export and torch.compile.  CI
(``scripts/run_tests.sh``) runs both.
"""
import os
import sys
import zlib

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import op_testing  # noqa: E402


def seed_of(nodeid: str) -> int:
    """The seed of a test: a stable hash of its id (``hash()`` changes between interpreters)."""
    return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test, reproducible from the test id.
    torch.manual_seed(seed_of(request.node.nodeid))
    yield


@pytest.fixture
def seed_generator(request) -> torch.Generator:
    """A CPU generator seeded from the test id (inputs independent of other tests' draws)."""
    return torch.Generator().manual_seed(seed_of(request.node.nodeid))


@pytest.fixture(params=op_testing.executor_names())
def executor(request):
    """Each op test runs once per executor: ``cpu``, ``harness-ordered``, ``harness-shuffled``, ``cuda``."""
    return op_testing.make_executor(request.param)


def pytest_collection_modifyitems(config, items):
    # The CUDA kernels under the harness run every thread of every block as a fiber: the slow tier.
    slow = pytest.mark.slow
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if str(params.get("executor", "")).startswith("harness"):
            item.add_marker(slow)
