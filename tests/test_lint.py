"""The Python sources pass ruff (pyproject.toml's [tool.ruff]); CI runs this with ruff from requirements-dev.txt."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff():
    exe = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    if not os.path.exists(exe):
        pytest.skip("ruff is not installed (pip install -r requirements-dev.txt)")
    return exe


def test_ruff_check():
    p = subprocess.run([_ruff(), "check", "--no-cache", REPO], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
