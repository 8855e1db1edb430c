"""Every ```python snippet of the README runs as written (in a scratch directory, in order, one namespace);
so does the fine-tuning example (a ```bash block), with the environment's Python."""
import os
import re
import subprocess
import sys

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


def _finetune_example():
    text = open(os.path.join(REPO, "README.md")).read()
    blocks = [b for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M) if "swin_ext.predict" in b]
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_readme_finetune_example_runs(tmp_path):
    script = _finetune_example().replace(".venv/bin/python", sys.executable)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "pretrained: loaded" in out and "(timm layout)" in out and "a new head of 10 classes" in out
    assert "FINAL_METRICS" in out and re.search(r"top-1 \d+\.\d\d%  top-5 \d+\.\d\d%", out)
    assert re.search(r"^my_images/3/3.png\n(  +\d+\.\d\d%  \d  \(\d\)\n){5}", out, re.M), out[-2000:]
