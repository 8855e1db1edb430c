import os
import sys
import zlib

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def test_seed(nodeid: str) -> int:
    """The seed of a test: a stable hash of its id (``hash()`` changes between interpreters)."""
    return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test, reproducible from the test id.
    torch.manual_seed(test_seed(request.node.nodeid))
    yield


@pytest.fixture
def seed_generator(request) -> torch.Generator:
    """A CPU generator seeded from the test id (inputs independent of other tests' draws)."""
    return torch.Generator().manual_seed(test_seed(request.node.nodeid))
