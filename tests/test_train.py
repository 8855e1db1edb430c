"""Training CLI: data, schedule, parameter groups, atomic checkpoints, exact
resume, ImageFolder/AMP smoke run, and 2-process DDP on the CPU (gloo)."""
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import swin_ext
from swin_ext import train as T
from swin_ext.train.data import build_datasets, load_digits_split

from swin_test_utils import Evil, flip_tensor_byte

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 16x16 digits, patch 4 -> 4x4 tokens in shifted 2x2 windows, then 2x2 tokens.
TINY = ["--data", "digits", "--img-size", "16", "--patch-size", "4", "--embed-dim", "12", "--depths", "1,2",
        "--num-heads", "1,2", "--window-size", "2", "--batch-size", "8", "--no-progress", "--threads", "1"]


def _run(tmp, *extra, plot=False):
    argv = TINY + ["--output-dir", str(tmp)] + list(extra) + ([] if plot else ["--no-plot"])
    return T.train(T.build_parser().parse_args(argv))


def _sd(path):
    return T.load_checkpoint(path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- pieces


def test_digits_split_is_deterministic_stratified_and_disjoint():
    x_tr, y_tr, x_te, y_te = load_digits_split(img_size=32, in_chans=3, test_fraction=0.2, seed=0)
    assert x_tr.shape[1:] == (3, 32, 32) and x_te.shape[1:] == (3, 32, 32)
    assert x_tr.shape[0] + x_te.shape[0] == 1797
    assert abs(x_te.shape[0] / 1797 - 0.2) < 0.01
    # every class in both splits, in proportion
    assert torch.bincount(y_te, minlength=10).min() >= 30
    x2 = load_digits_split(img_size=32, in_chans=3, test_fraction=0.2, seed=0)
    assert torch.equal(x_tr, x2[0]) and torch.equal(y_te, x2[3])
    x3 = load_digits_split(img_size=32, in_chans=3, test_fraction=0.2, seed=1)
    assert not torch.equal(y_te, x3[3]) or not torch.equal(x_te, x3[2])
    # disjoint: no test image equals a training image of the same split
    flat_tr = {tuple(v.tolist()) for v in x_tr[:, 0, ::4, ::4].flatten(1)}
    dup = sum(tuple(v.tolist()) in flat_tr for v in x_te[:, 0, ::4, ::4].flatten(1))
    assert dup < 5  # the raw data set itself has a handful of identical digits
    assert abs(x_tr.mean().item()) < 1e-4 and abs(x_tr.std().item() - 1) < 1e-3


def test_digits_augmentation_translates_and_keeps_shape():
    train, test, n = build_datasets("digits", 16, 1, augment=True, limit=16)
    assert n == 10 and len(train) == 16 and len(test) == 16
    torch.manual_seed(0)
    xs = [train[0][0] for _ in range(20)]
    assert all(x.shape == (1, 16, 16) for x in xs)
    assert any(not torch.equal(x, train.images[0]) for x in xs)
    assert torch.equal(test[0][0], test.images[0])


def test_lr_schedule_warmup_then_cosine():
    f = lambda s: T.lr_factor(s, total_steps=100, warmup_steps=10, min_ratio=0.01)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(100) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_param_groups_weight_decay_and_layer_decay():
    model = swin_ext.SwinTransformer(img_size=16, patch_size=4, embed_dim=12, depths=(1, 2), num_heads=(1, 2),
                                     window_size=2, num_classes=10)
    groups = T.param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = {n: g for g in groups for n in g["names"]}
    assert len(names) == len(list(model.parameters()))
    for n, g in names.items():
        no_decay = n.endswith(".bias") or "norm" in n or "relative_position_bias_table" in n
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
    # timm's layers (patch_embed, 3 blocks, head): stage 0's merging joins stage 1's first block, the final
    # norm the last block (tests/test_timm_api.py compares every parameter with timm's own Swin)
    L = sum(model.depths) + 2
    assert names["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5 ** (L - 1))
    assert names["layers.0.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.5 ** (L - 2))
    assert names["layers.0.downsample.reduction.weight"]["lr_scale"] == pytest.approx(0.5 ** (L - 3))
    assert names["layers.1.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.5 ** (L - 3))
    assert names["layers.1.blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5 ** (L - 4))
    assert names["norm.weight"]["lr_scale"] == pytest.approx(0.5 ** (L - 4))
    assert names["head.weight"]["lr_scale"] == 1.0
    # without layer decay: one scale
    assert {g["lr_scale"] for g in T.param_groups(model, 0.05)} == {1.0}


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    good = {"format": T.CHECKPOINT_FORMAT, "step": 3, "w": torch.arange(1000.0)}
    T.save_checkpoint(good, str(path))
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # all bytes into the temp file ...
        f.truncate(100)  # ... then a torn write and a crash before the rename
        raise RuntimeError("simulated crash during save")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.save_checkpoint({"format": T.CHECKPOINT_FORMAT, "step": 4, "w": torch.zeros(1000)}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    back = T.load_checkpoint(str(path))
    assert back["step"] == 3 and torch.equal(back["w"], good["w"])
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind
    # and a good save replaces it
    T.save_checkpoint({"format": T.CHECKPOINT_FORMAT, "step": 5}, str(path))
    assert T.load_checkpoint(str(path))["step"] == 5


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": 1}, p)
    with pytest.raises(ValueError, match="not a swin_ext.train checkpoint"):
        T.load_checkpoint(str(p))


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_resume_continues_from_saved_step_exactly(tmp_path, capsys):
    # 40 samples / batch 8 = 5 steps per epoch; 8 steps cross an epoch boundary.
    common = ["--limit", "40", "--max-steps", "8", "--layer-decay", "0.8", "--grad-checkpoint",
              "--drop-path", "0.2", "--clip-grad", "1.0"]
    full = _run(tmp_path / "full", *common, plot=True)
    assert full["step"] == 8 and full["start_step"] == 0
    assert os.path.isfile(tmp_path / "full" / "curves.png")
    m = json.load(open(tmp_path / "full" / "metrics.json"))
    assert m["step"] == 8 and 0.0 <= m["test_acc"] <= 1.0 and len(m["history"]) == 1
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("FINAL_METRICS ")][-1]
    assert json.loads(line[len("FINAL_METRICS "):])["step"] == 8

    # Interrupted after 3 steps (mid-epoch), then resumed twice: 3 -> 7 (across the epoch end) -> 8.
    part = _run(tmp_path / "part", *common, "--stop-after-steps", "3")
    assert part["stopped_early"] and part["step"] == 3
    st = T.load_checkpoint(str(tmp_path / "part" / "last.pt"))
    assert (st["step"], st["epoch"], st["step_in_epoch"]) == (3, 0, 3)
    assert st["scheduler"]["last_epoch"] == 3 and len(st["rng"]) == 1
    mid = _run(tmp_path / "part", *common, "--resume", "auto", "--stop-after-steps", "4")
    assert mid["start_step"] == 3 and mid["step"] == 7 and mid["resumed_from"]["step"] == 3
    res = _run(tmp_path / "part", *common, "--resume", str(tmp_path / "part" / "last.pt"))
    assert res["start_step"] == 7 and res["step"] == 8 and not res["stopped_early"]
    # Same weights, optimizer state and metrics as the uninterrupted run.
    _assert_same_weights(_sd(tmp_path / "full" / "last.pt"), _sd(tmp_path / "part" / "last.pt"))
    assert res["replica_sha256"] == full["replica_sha256"]
    assert res["test_acc"] == full["test_acc"]
    a = T.load_checkpoint(str(tmp_path / "full" / "last.pt"))["optimizer"]["state"]
    b = T.load_checkpoint(str(tmp_path / "part" / "last.pt"))["optimizer"]["state"]
    for k in a:
        assert torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"])


def test_resume_refuses_a_different_model(tmp_path):
    _run(tmp_path, "--limit", "16", "--max-steps", "1")
    with pytest.raises(ValueError, match="model config"):
        _run(tmp_path, "--limit", "16", "--max-steps", "2", "--resume", "auto", "--embed-dim", "24")


def test_cli_min_acc_exit_status_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--help"])
    assert e.value.code == 0
    argv = TINY + ["--limit", "16", "--max-steps", "1", "--no-save", "--no-plot", "--output-dir", str(tmp_path)]
    assert T.main(argv + ["--min-acc", "0.0"]) == 0
    assert T.main(argv + ["--min-acc", "1.01"]) == 1
    assert "--min-acc" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "last.pt")


@pytest.mark.slow
def test_imagefolder_with_bf16_autocast(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in ("cat", "dog", "eel"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                arr = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
                PIL.fromarray(arr).save(d / f"{i}.png")
    argv = ["--data", str(tmp_path / "data"), "--img-size", "16", "--patch-size", "4", "--embed-dim", "12",
            "--depths", "1,1", "--num-heads", "1,2", "--window-size", "2", "--batch-size", "4", "--max-steps", "2",
            "--workers", "0", "--amp", "bf16", "--no-progress", "--no-plot", "--threads", "1",
            "--output-dir", str(tmp_path / "run")]
    m = T.train(T.build_parser().parse_args(argv))
    assert m["step"] == 2 and m["test_count"] == 12 and math.isfinite(m["test_loss"])
    st = T.load_checkpoint(str(tmp_path / "run" / "last.pt"))
    assert st["model_config"]["in_chans"] == 3 and st["model_config"]["num_classes"] == 3


# --------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out_dir, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "swin_ext.train", *TINY, "--limit", "48", "--output-dir", str(out_dir), "--no-plot", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.load(open(os.path.join(out_dir, "metrics.json"))), p.stdout


@pytest.mark.slow
def test_ddp_two_cpu_processes_identical_weights_and_resume(tmp_path):
    out = tmp_path / "ddp"
    # 48 samples, 24 per rank, batch 8 -> 3 steps per epoch; stop at step 2, resume to step 5.
    m1, log1 = _torchrun(out, "--max-steps", "5", "--stop-after-steps", "2")
    assert m1["world_size"] == 2 and m1["step"] == 2 and m1["stopped_early"]
    assert len(m1["replica_sha256"]) == 2 and m1["replica_sha256"][0] == m1["replica_sha256"][1]
    st = T.load_checkpoint(str(out / "last.pt"))
    assert st["step"] == 2 and st["world_size"] == 2 and len(st["rng"]) == 2
    # the RNG streams of the two ranks differ (augmentation / drop path per rank)
    assert not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])
    # the saved weights are the weights both ranks hold
    model = T.build_model(st["model_config"])
    model.load_state_dict(st["model"])
    assert T.state_dict_sha256(model) == m1["replica_sha256"][0]
    assert log1.count("FINAL_METRICS") == 1  # only rank 0 prints

    m2, log2 = _torchrun(out, "--max-steps", "5", "--resume", "auto")
    assert "resumed from" in log2
    assert m2["start_step"] == 2 and m2["step"] == 5 and not m2["stopped_early"]
    assert m2["replica_sha256"][0] == m2["replica_sha256"][1] != m1["replica_sha256"][0]
    assert T.load_checkpoint(str(out / "last.pt"))["step"] == 5


# ----------------------------------------------------------------------------- bad arguments, checkpoints, data
# (one clear error line each)

# TINY plus: no plot, 32 samples
TINY_RUN = TINY + ["--no-plot", "--limit", "32"]


CLI_ARGUMENT_CASES = [
    # (argv, flag the one error line names, text); was: all accepted
    (["--epochs", "-3"], "--epochs", "must be >= 1, got -3"),
    (["--warmup-epochs", "-5"], "--warmup-epochs", "must be in"),
    (["--save-every", "-1"], "--save-every", "must be >= 0, got -1"),
    (["--max-steps", "-5"], "--max-steps", "must be >= 1, got -5"),
    (["--stop-after-steps", "0"], "--stop-after-steps", "must be >= 1, got 0"),
    (["--layer-decay", "0"], "--layer-decay", r"must be in \(0.0, 1.0\]"),
    (["--lr", "inf"], "--lr", "must be finite"),
    (["--lr", "nan"], "--lr", "must be finite"),
    (["--lr", "0.1", "--min-lr", "1"], "--min-lr", "is above --lr"),
    (["--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["--mlp-ratio", "inf"], "--mlp-ratio", "must be finite"),
    (["--label-smoothing", "1"], "--label-smoothing", "must be in"),
    (["--depths", "2,0"], "--depths", "positive ints"),
]


@pytest.mark.parametrize("extra,flag,text", CLI_ARGUMENT_CASES, ids=[" ".join(c[0]) for c in CLI_ARGUMENT_CASES])
def test_cli_refuses_bad_argument(extra, flag, text, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        T.main(TINY_RUN + ["--output-dir", str(tmp_path)] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and re.search(text, err), err
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A 2-step run's directory; tests copy its last.pt."""
    d = tmp_path_factory.mktemp("good")
    assert T.main(TINY_RUN + ["--max-steps", "2", "--output-dir", str(d)]) == 0
    return d


def _copy_run(good_run, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "last.pt").write_bytes((good_run / "last.pt").read_bytes())
    return d


@pytest.mark.slow
def test_training_checkpoint_loads_with_weights_only(good_run):
    st = torch.load(good_run / "last.pt", weights_only=True)  # was: needed weights_only=False (numpy RNG state)
    assert st["format"] == T.CHECKPOINT_FORMAT and st["step"] == 2
    assert isinstance(st["rng"][0]["numpy"]["keys"], torch.Tensor)


def _resume_case(name, d):
    """Prepare ``d/last.pt``; returns (expected error text, whether last.pt must stay byte-identical)."""
    ck = d / "last.pt"
    if name == "crafted-pickle":  # was: ran the payload on --resume auto
        torch.save({"format": T.CHECKPOINT_FORMAT, "step": 0, "x": Evil(str(d / "marker"))}, ck)
        return r"last.pt: torch.load\(weights_only=True\) refused it.*io\.open"
    if name == "truncated":  # was: a raw zip traceback
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
        return r"last.pt: not a readable swin_ext.train checkpoint"
    if name == "empty":
        ck.write_bytes(b"")
        return r"last.pt: not a readable swin_ext.train checkpoint: the file is empty"
    if name == "random":
        ck.write_bytes(os.urandom(4096))
        return r"last.pt: not a readable swin_ext.train checkpoint"
    if name == "flipped-byte":  # was: resumed on corrupted state
        entry = flip_tensor_byte(ck)
        return rf"last.pt: damaged: the stored checksum \(CRC-32\) of its entry '{entry}'"
    if name == "foreign":
        torch.save({"weights": torch.zeros(3)}, ck)
        return r"last.pt is not a swin_ext.train checkpoint"
    if name == "other-batch-size":  # was: silently ended early on the old schedule
        return r"last.pt was written with --batch-size 8 .* this run has --batch-size 4"
    if name == "directory":
        ck.unlink()
        ck.mkdir()
        return r"last.pt is a directory"
    raise KeyError(name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["crafted-pickle", "truncated", "empty", "random", "flipped-byte", "foreign", "other-batch-size", "directory"],
)
def test_resume_from_bad_checkpoint_is_one_clear_line(name, good_run, tmp_path, capsys):
    d = _copy_run(good_run, tmp_path)
    match = _resume_case(name, d)
    ck = d / "last.pt"
    before = ck.read_bytes() if ck.is_file() else None
    argv = TINY_RUN + ["--max-steps", "4", "--output-dir", str(d), "--resume", "auto"]
    if name == "other-batch-size":
        argv[argv.index("--batch-size") + 1] = "4"
    assert T.main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("swin-ext-train: error: "), err
    assert re.search(match, err[0]), err[0]
    assert not (d / "marker").exists()
    if before is not None:
        assert ck.read_bytes() == before  # the checkpoint stays as it was
    assert not (d / "metrics.json").exists()


@pytest.mark.slow
def test_diverged_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    # was: trained on, exit 0, NaN weights saved over the last good checkpoint
    d = tmp_path / "run"
    rc = T.main(
        TINY_RUN + ["--max-steps", "30", "--lr", "1e6", "--clip-grad", "0", "--save-every", "1", "--output-dir", str(d)]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "keeps the last good checkpoint" in err
    st = T.load_checkpoint(str(d / "last.pt"))
    assert all(torch.isfinite(v).all() for v in st["model"].values())
    assert not (d / "metrics.json").exists()


@pytest.mark.slow
def test_nan_loss_stops_before_any_save(tmp_path, capsys):
    d = tmp_path / "run"
    rc = T.main(
        TINY_RUN + ["--max-steps", "30", "--lr", "1e6", "--clip-grad", "0", "--output-dir", str(d), "--limit", "64"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "the training loss is nan" in err and "training diverged" in err and "no checkpoint was written" in err
    assert not (d / "last.pt").exists()  # no checkpoint of a diverged run


@pytest.mark.slow
def test_stale_temporary_checkpoints_are_removed(good_run, tmp_path, capsys):
    # was: a save killed midway left .last.pt.*.tmp behind for good
    d = _copy_run(good_run, tmp_path)
    stale = d / ".last.pt.k2j4h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert T.main(TINY_RUN + ["--max-steps", "3", "--output-dir", str(d), "--resume", "auto"]) == 0
    assert not stale.exists()
    assert f"removed {stale}" in capsys.readouterr().out
    assert T.load_checkpoint(str(d / "last.pt"))["step"] == 3


def _image_folder(root, classes, n=4, broken=None):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    if broken:
        path = root / classes[0] / "0.png"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if broken == "truncated" else b"\x89PNG garbage")
        return path
    return None


IMAGE_ARGS = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "12", "--depths", "1,1", "--num-heads", "1,2",
              "--window-size", "2", "--batch-size", "2", "--max-steps", "3", "--no-progress", "--no-plot",
              "--threads", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["one-class", "truncated-image", "garbage-image", "truncated-image-in-worker"])
def test_image_folder_problems_are_one_clear_line(case, tmp_path, capsys):
    pytest.importorskip("PIL")
    pytest.importorskip("torchvision")
    root = tmp_path / "data"
    if case == "one-class":  # was: trained a one-class classifier silently
        _image_folder(root, ["cat"])
        match = "needs at least 2 class folders to train a classifier, found 1"
    else:
        bad = _image_folder(root, ["cat", "dog"], broken="garbage" if case == "garbage-image" else "truncated")
        match = f"{bad}: cannot read this image"  # was: a raw PIL traceback
    workers = "1" if case.endswith("worker") else "0"
    rc = T.main(
        IMAGE_ARGS
        + ["--data", str(root), "--workers", workers, "--output-dir", str(tmp_path / "run"), "--test-fraction", "0.25"]
    )
    assert rc == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("swin-ext-train: error: ") and match in err[0], err


# --------------------------------------------------------------------------- issue 17: data edges


def _images(root, classes, n=2):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        d = root / c
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")


@pytest.mark.parametrize("train,evals", [("training", "val"), ("train", "validation"), ("Train", "Test"),
                                         ("train", "valid")])
def test_split_folders_are_recognised_by_name(train, evals, tmp_path):
    # was: root/{training,val} trained a 2-class model on the split names
    pytest.importorskip("torchvision")
    for split in (train, evals):
        _images(tmp_path / split, ["cat", "dog", "eel"])
    tr, te, n = build_datasets(str(tmp_path), 16, 3)
    assert n == 3 and tr.classes == ["cat", "dog", "eel"] and len(tr) == 6 and len(te) == 6
    assert all(os.sep + train + os.sep in p for p, _ in tr.samples)
    assert all(os.sep + evals + os.sep in p for p, _ in te.samples)


@pytest.mark.parametrize("folders,match", [
    (["train"], "a training split folder with no evaluation folder"),
    (["val", "test"], r"evaluation split folders \['val', 'test'\] but no training split folder"),
    (["train", "training", "val"], r"2 training split folders \['train', 'training'\]"),
    (["train", "val", "validation"], r"2 validation folders \['val', 'validation'\]"),
    (["train", "val", "cat"], r"mixes split folders \['train', 'val'\] .* with other folders \['cat'\]"),
])
def test_ambiguous_split_folders_are_refused(folders, match, tmp_path):
    from swin_ext.train.data import DataError, split_folders

    for f in folders:
        (tmp_path / f / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=match):
        split_folders(str(tmp_path))
    assert split_folders(str(tmp_path / folders[0])) is None  # class folders only: one tree


def test_folder_scan_skips_loops_links_across_splits_and_fifos(tmp_path):
    # was: a loop counted its images ~40x and leaked the val split into train; a FIFO *.png blocked the reader
    pytest.importorskip("torchvision")
    from swin_ext.train.data import DataWarning

    root = tmp_path / "data"
    for split in ("train", "val"):
        _images(root / split, ["cat", "dog"])
    (root / "train" / "cat" / "loop").symlink_to("../..")  # the data root: a loop, and it holds val/
    (root / "train" / "dog" / "val-dog").symlink_to(root / "val" / "dog")  # a directory of the other split
    (root / "train" / "cat" / "leak.png").symlink_to(root / "val" / "cat" / "0.png")  # an image of the other split
    os.mkfifo(root / "train" / "cat" / "pipe.png")
    (root / "train" / "dog" / "broken.png").symlink_to("nowhere.png")
    outside = tmp_path / "more-dogs"  # a link to images outside the data set is followed
    _images(outside, ["x"], n=1)
    (root / "train" / "dog" / "more").symlink_to(outside / "x")
    with pytest.warns(DataWarning) as w:
        tr, te, n = build_datasets(str(root), 16, 3)
    msg = str(w[0].message)
    for entry, why in [("cat/loop", "a loop"), ("dog/val-dog", "another class or split"),
                       ("cat/leak.png", "another class or split"), ("cat/pipe.png", "a FIFO"),
                       ("dog/broken.png", "a broken link")]:
        assert re.search(f"{entry}: [^;]*{why}", msg), (entry, msg)
    assert "skipped 5 entries" in msg
    rel = sorted(os.path.relpath(p, tmp_path) for p, _ in tr.samples)
    assert rel == ["data/train/cat/0.png", "data/train/cat/1.png", "data/train/dog/0.png", "data/train/dog/1.png",
                   "data/train/dog/more/0.png"]
    assert len(te) == 4


def test_one_tree_folder_scan_keeps_torchvision_order(tmp_path):
    tv = pytest.importorskip("torchvision")
    _images(tmp_path, ["b", "a"], n=3)
    _images(tmp_path / "a" / "sub", ["z"], n=2)
    from swin_ext.train.data import ImageFolderDataset

    ours = ImageFolderDataset(str(tmp_path))
    theirs = tv.datasets.ImageFolder(str(tmp_path))
    assert ours.samples == theirs.samples and ours.classes == theirs.classes


def test_digits_limit_is_applied_before_upscaling(monkeypatch):
    # was: the whole set was upscaled, then cut (--img-size 2048 --limit 16: 30 GB)
    from swin_ext.train import data as D

    sizes, real = [], D.F.interpolate
    monkeypatch.setattr(D.F, "interpolate", lambda x, *a, **k: sizes.append(x.shape[0]) or real(x, *a, **k))
    tr, te, n = build_datasets("digits", 64, 1, limit=16)
    assert len(tr) == 16 and len(te) == 16 and tr.images.shape == (16, 1, 64, 64)
    assert sizes and max(sizes) <= 16
    monkeypatch.setattr(D, "_available_memory", lambda: 1 << 20)
    with pytest.raises(D.DataError, match=r"--img-size 2048: 1797 images .* use --limit or a smaller --img-size"):
        build_datasets("digits", 2048, 1)


# --------------------------------------------------------------------------- issue 17: resume and CLI edges


def test_resume_applies_new_lr_and_weight_decay_and_says_so(tmp_path, capsys):
    # was: the checkpoint's lr and weight decay were kept silently
    _run(tmp_path, "--limit", "32", "--max-steps", "4", "--stop-after-steps", "2")
    capsys.readouterr()
    m = _run(tmp_path, "--limit", "32", "--max-steps", "4", "--resume", "auto", "--lr", "1e-3",
             "--weight-decay", "0.2", "--warmup-steps", "0", "--stop-after-steps", "1")
    out = capsys.readouterr().out
    assert m["start_step"] == 2 and m["step"] == 3
    assert "resume: --lr 0.001 (the checkpoint's run: 0.002): applied" in out
    assert "resume: --weight-decay 0.2 (the checkpoint's run: 0.05): applied" in out
    assert "resume: --warmup-steps 0 (the checkpoint's run: None): applied" in out
    st = T.load_checkpoint(str(tmp_path / "last.pt"))
    factor = T.lr_factor(3, 4, 0, 1e-5 / 1e-3)
    for g in st["optimizer"]["param_groups"]:
        assert g["initial_lr"] == 1e-3 * g["lr_scale"] and g["lr"] == pytest.approx(1e-3 * g["lr_scale"] * factor)
        assert g["weight_decay"] in (0.0, 0.2)
    assert {g["weight_decay"] for g in st["optimizer"]["param_groups"]} == {0.0, 0.2}
    assert st["scheduler"]["base_lrs"] == [g["initial_lr"] for g in st["optimizer"]["param_groups"]]
    # the fused AdamW where torch has one for the device (the CPU from torch 2.4), kept across the resume
    from swin_ext.train.optim import adamw_kwargs

    assert adamw_kwargs(torch.device("cpu")) == {"fused": True}
    assert all(g["fused"] is True for g in st["optimizer"]["param_groups"])


@pytest.mark.parametrize("extra,match", [
    (["--seed", "1"], r"--seed 1 \(the checkpoint's run: 0\) would change the train/test split"),
    (["--test-fraction", "0.3"], r"--test-fraction 0.3 .* would change the train/test split"),
    (["--layer-decay", "0.9"], r"--layer-decay 0.9 \(the checkpoint's run: None\) would change the optimizer"),
])
def test_resume_refuses_arguments_that_change_the_run(extra, match, tmp_path):
    _run(tmp_path, "--limit", "32", "--max-steps", "1")
    with pytest.raises(T.TrainError, match=match):
        _run(tmp_path, "--limit", "32", "--max-steps", "2", "--resume", "auto", *extra)


@pytest.fixture(scope="module")
def good_state(tmp_path_factory):
    """The state of a 2-step run's last.pt (the tests below craft copies of it)."""
    d = tmp_path_factory.mktemp("good17")
    _run(d, "--limit", "32", "--max-steps", "2")
    return T.load_checkpoint(str(d / "last.pt"))


def _crafted(st, case):
    import copy

    st = copy.deepcopy(st)
    if case == "negative-step":
        st["step"] = -5
    elif case == "rng-not-a-dict":
        st["rng"] = ["not a state"]
    elif case == "rng-torch-string":
        st["rng"][0]["torch"] = "seed"
    elif case == "rng-python-short":
        st["rng"][0]["python"] = (3, (1, 2, 3), None)
    elif case == "optimizer-lr-string":
        st["optimizer"]["param_groups"][0]["lr"] = "fast"
    elif case == "optimizer-step-string":
        st["optimizer"]["state"][0]["step"] = "two"
    elif case == "optimizer-groups-list":
        st["optimizer"]["param_groups"] = "all"
    elif case == "scheduler-extra-field":
        st["scheduler"]["optimizer"] = {}
    elif case == "scheduler-behind":
        st["scheduler"]["last_epoch"] = 1
    elif case == "history-epochs-string":
        st["history"]["epochs"] = "none"
    elif case == "history-steps-bad":
        st["history"]["steps"] = [(1, "x")]
    elif case == "scaler-bad":
        st["scaler"] = {"scale": -1.0}
    elif case == "world-size-zero":
        st["world_size"] = 0
    elif case == "exp-avg-shape":  # only the restore finds it: shapes need the model
        st["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    return st


CRAFTED = {
    "negative-step": "step is -5, negative", "rng-not-a-dict": r"rng\[0\] is a str, not a dict",
    "rng-torch-string": r"rng\[0\]\['torch'\] is not a 1-d uint8 tensor",
    "rng-python-short": r"rng\[0\]\['python'\] is not a Python random state",
    "optimizer-lr-string": "optimizer param group 0: lr 'fast' is not a finite number",
    "optimizer-step-string": "optimizer state 0: step 'two' is not a count",
    "optimizer-groups-list": r"optimizer\['param_groups'\] is not a list of dicts",
    "scheduler-extra-field": r"scheduler has unknown fields \['optimizer'\]",
    "scheduler-behind": "the scheduler is at step 1, the checkpoint at step 2",
    "history-epochs-string": r"history\['epochs'\] is not a list", "history-steps-bad": r"history\['steps'\] is not",
    "scaler-bad": "scaler is not a GradScaler state", "world-size-zero": "world_size is 0, not >= 1",
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_checkpoint_problems_names_each_damaged_field(case, good_state):
    assert T.checkpoint_problems(good_state) == []
    problems = T.checkpoint_problems(_crafted(good_state, case))
    assert any(re.search(CRAFTED[case], p) for p in problems), problems


@pytest.mark.parametrize("case", ["negative-step", "rng-torch-string", "optimizer-step-string", "exp-avg-shape"])
def test_resume_from_crafted_checkpoint_is_one_clear_line(case, good_state, tmp_path, capsys):
    # was: a negative step was accepted; wrong-typed RNG/optimizer fields gave tracebacks
    torch.save(_crafted(good_state, case), tmp_path / "last.pt")  # written by torch.save: every CRC is valid
    argv = TINY + ["--limit", "32", "--max-steps", "4", "--no-plot", "--output-dir", str(tmp_path), "--resume", "auto"]
    assert T.main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "last.pt: damaged or incompatible swin_ext.train checkpoint: " in err[0], err
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("extra,text", [
    (["--seed", "2**70"], "argument --seed: expected an int, got '2**70'"),  # was: a RuntimeError traceback
    (["--seed", str(2**70)], "argument --seed: must be <= 4294967295"),
    (["--device", "meta"], "--device meta: training runs on cpu or cuda"),  # was: a traceback
    (["--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    # was: a traceback
    (["--num-heads", "5,6"], "--model swin_digits with these options: num_heads[0]=5 does not divide"),
    (["--output-dir", "FILE/run"], "--output-dir FILE/run: cannot be created"),
])
def test_argument_errors_are_one_line_with_status_2(extra, text, tmp_path, capsys):
    (tmp_path / "FILE").write_text("a file, not a directory")
    extra = [e.replace("FILE", str(tmp_path / "FILE")) for e in extra]
    text = text.replace("FILE", str(tmp_path / "FILE"))
    argv = ["--data", "digits", "--limit", "16", "--batch-size", "8", "--max-steps", "1", "--no-progress", "--no-plot",
            "--threads", "1", "--output-dir", str(tmp_path / "run")] + extra
    try:
        rc = T.main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("swin-ext-train: error: ") and text in err[0], err


def test_full_output_dir_is_refused_before_training(tmp_path, capsys, monkeypatch):
    # was: found only when the first checkpoint was written, after the training
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 4096, 4096))
    rc = T.main(TINY + ["--limit", "16", "--max-steps", "1", "--no-plot", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 2 and "MiB free, but a checkpoint of this run needs about" in err
    assert "FINAL_METRICS" not in out and not (tmp_path / "last.pt").exists()


def test_single_tree_image_folder_split_is_stratified_by_class(tmp_path):
    # was: one seeded permutation of all images, so a small class could land wholly on one side
    pytest.importorskip("PIL")
    pytest.importorskip("torchvision")
    counts = {"ant": 2, "bee": 3, "cat": 12, "dog": 7}
    for c, n in counts.items():
        _images(tmp_path / "data", [c], n=n)
    for seed in (0, 1, 2):
        train, test, k = build_datasets(str(tmp_path / "data"), 16, 3, test_fraction=0.3, seed=seed, augment=False)
        assert k == 4
        tr = [train.dataset.targets[i] for i in train.indices]
        te = [test.dataset.targets[i] for i in test.indices]
        assert sorted(train.indices + test.indices) == list(range(sum(counts.values())))
        for c, n in counts.items():
            ci = train.dataset.class_to_idx[c]
            assert te.count(ci) == min(round(n * 0.3), n - 1) and tr.count(ci) == n - te.count(ci), (seed, c)
    again = build_datasets(str(tmp_path / "data"), 16, 3, test_fraction=0.3, seed=2, augment=False)[1]
    assert again.indices == test.indices  # deterministic per seed
