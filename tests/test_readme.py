"""Every ```python snippet of the README runs as written (in a scratch directory, in order, one namespace)."""
import os
import re

import pytest

import swin_ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")


def _snippets():
    text = open(os.path.join(REPO, "README.md")).read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_snippets():
    assert len(_snippets()) >= 3


@pytest.mark.parametrize("i", range(len(_snippets())))
def test_readme_snippet_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    exec(compile(_snippets()[i], f"README.md snippet {i}", "exec"), {"__name__": "__readme__"})
