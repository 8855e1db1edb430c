"""Every ```python snippet of the README runs as written (in a scratch directory, in order, one namespace);
so does the fine-tuning example (a ```bash block of the environment's Python's commands), command by command."""
import os
import re
import shlex

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


def _commands(block):
    """The block's commands (each starts a line with ``.venv/bin/python``) as argument lists: bash's quoting
    and line continuations."""
    starts = [m.start() for m in re.finditer(r"^\.venv/bin/python ", block, re.M)] + [len(block)]
    assert starts[0] == 0, block
    return [shlex.split(block[a:b].replace("\\\n", " ")) for a, b in zip(starts, starts[1:])]


def _run_in_process(argv):
    """One ``.venv/bin/python -c CODE`` / ``-m swin_ext.train|predict ARGS`` command of the block, run in this
    process (each would otherwise start a Python that imports torch and timm again: ~7 s of CPU apiece);
    returns its exit status."""
    from swin_ext import predict
    from swin_ext import train as T

    assert argv[0] == ".venv/bin/python", argv  # the README's commands are the environment's Python
    if argv[1] == "-c":
        exec(compile(argv[2], "README.md fine-tuning example", "exec"), {"__name__": "__main__"})
        return 0
    mains = {"swin_ext.train": T.main, "swin_ext.predict": predict.main}
    assert argv[1] == "-m" and argv[2] in mains, argv
    try:
        return mains[argv[2]](argv[3:])
    except SystemExit as e:
        return e.code


@pytest.mark.slow
def test_readme_finetune_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = _commands(_finetune_example())
    assert [c[1:3] for c in commands][1:] == [["-m", "swin_ext.train"]] * 2 + [["-m", "swin_ext.predict"]]
    out = ""
    for argv in commands:
        rc = _run_in_process(argv)
        o, e = capsys.readouterr()
        out += o
        assert rc == 0, (argv, o[-3000:] + e[-3000:])
    assert "pretrained: loaded" in out and "(timm layout)" in out and "a new head of 10 classes" in out
    assert "FINAL_METRICS" in out and re.search(r"top-1 \d+\.\d\d%  top-5 \d+\.\d\d%", out)
    assert re.search(r"^my_images/3/3.png\n(  +\d+\.\d\d%  \d  \(\d\)\n){5}", out, re.M), out[-2000:]
