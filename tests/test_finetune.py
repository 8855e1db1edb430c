"""Issue 21: fine-tuning from pretrained checkpoints, timm's augmentation, EMA, exact resume with DataLoader
workers, --eval-only and swin_ext.predict -- on tiny models and image folders made here."""
import json
import re

import pytest
import torch

import swin_ext
from swin_ext import train as T
from swin_ext.train.data import SeededDataset, build_datasets, sample_seed
from swin_ext.weights.layouts import to_timm, to_torchvision

from swin_test_utils import Evil

pytest.importorskip("timm")
pytest.importorskip("torchvision")
pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

CLASSES = ("cat", "dog", "eel")
# 16 px, patch 4: 4x4 tokens in shifted 2x2 windows, then 2x2 tokens; 11k parameters
ARCH = dict(img_size=16, patch_size=4, embed_dim=12, depths=(1, 1), num_heads=(1, 2), window_size=2)
ARGS = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "12", "--depths", "1,1", "--num-heads", "1,2",
        "--window-size", "2", "--batch-size", "4", "--no-progress", "--no-plot", "--threads", "1"]


def _folder(root, n_train=4, n_val=2):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("images") / "data")


def _main(argv, capsys):
    try:
        rc = T.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _ckpt(path):
    return T.load_checkpoint(str(path))


def _official(num_classes=7, **kw):
    torch.manual_seed(1)
    return swin_ext.SwinTransformer(**{**ARCH, "num_classes": num_classes, **kw})


# --------------------------------------------------------------------------- --pretrained


def _peer_checkpoint(layout, tmp_path):
    """A 7-class checkpoint of the tiny architecture in ``layout``, written as its users write them."""
    if layout == "official":
        path = tmp_path / "swin.pth"
        torch.save({"model": _official().state_dict()}, path)
    elif layout == "timm":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(to_timm(_official().state_dict()), str(path))
    elif layout == "torchvision":
        path = tmp_path / "swin_tv.pt"
        torch.save(to_torchvision(_official().state_dict()), path)
    else:
        transformers = pytest.importorskip("transformers")
        cfg = transformers.SwinConfig(image_size=16, patch_size=4, num_channels=3, embed_dim=12, depths=[1, 1],
                                      num_heads=[1, 2], window_size=2, num_labels=7)
        torch.manual_seed(1)
        path = tmp_path / "pytorch_model.bin"
        torch.save(transformers.SwinForImageClassification(cfg).state_dict(), path)
    return path


@pytest.mark.parametrize("layout", ["official", "timm", "torchvision", "transformers"])
def test_finetune_starts_from_each_layout(layout, folder, tmp_path, capsys):
    ck = _peer_checkpoint(layout, tmp_path)
    window = ["--window-size", "4"] if layout == "timm" else []  # another window: the bias tables are resized
    rc, out, err = _main(ARGS + window + ["--data", folder, "--pretrained", ck, "--lr", "1e-6", "--min-lr", "0",
                                          "--warmup-steps", "0", "--max-steps", "1", "--workers", "0",
                                          "--output-dir", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert f"pretrained: loaded 35 tensors of {ck} ({layout} layout)" in out
    assert "pretrained: a new head of 3 classes, initialised afresh (num_classes differs: checkpoint 7, model 3)" in out
    assert ("resized 2 relative-position bias tables" in out) == (layout == "timm")
    # the backbone is the checkpoint's, one step at lr 1e-6 later; the head is new
    ref = swin_ext.SwinTransformer(**{**ARCH, "num_classes": 3, "window_size": 4 if window else 2})
    with pytest.warns(UserWarning, match="head was not loaded"):
        swin_ext.load_pretrained(ref, str(ck), strict=False, allow_new_head=True)
    tuned = _ckpt(tmp_path / "run" / "last.pt")["model"]
    moved = 0.0
    for k, v in ref.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(tuned[k], v, atol=1e-5, rtol=0)
            moved = max(moved, (tuned[k] - v).abs().max().item())
    assert moved > 0  # it trained
    assert tuned["head.weight"].shape == (3, 24)


def test_pretrained_resizes_v2_coordinates_to_the_run_and_resumes(folder, tmp_path, capsys):
    # an official Swin V2 file stores its coordinate tables: trained at window 2, fine-tuned at window 4
    torch.manual_seed(2)
    v2 = swin_ext.SwinTransformerV2(**{**ARCH, "num_classes": 5})
    sd = dict(v2.state_dict())
    for i in range(2):  # the official shape, (1, 2w - 1, 2w - 1, 2)
        sd[f"layers.{i}.blocks.0.attn.relative_coords_table"] = v2.layers[i].blocks[0].attn.relative_coords_table.view(
            1, 3, 3, 2)
    torch.save(sd, tmp_path / "swinv2.pth")
    argv = ARGS + ["--model", "swinv2_tiny_window8_256", "--window-size", "4", "--data", folder, "--pretrained",
                   tmp_path / "swinv2.pth", "--max-steps", "2", "--workers", "0", "--output-dir", tmp_path / "run"]
    rc, out, err = _main(argv + ["--stop-after-steps", "1"], capsys)
    assert rc == 0, err
    assert "the checkpoint's windows [2, 2] are not this run's: --pretrained-window-sizes 2,2" in out
    assert _ckpt(tmp_path / "run" / "last.pt")["model_config"]["pretrained_window_sizes"] == [2, 2]
    rc, out, err = _main(argv + ["--resume", "auto"], capsys)  # the resumed run keeps them (no file read)
    assert rc == 0 and "resumed from" in out and "pretrained:" not in out, err


def test_pretrained_problems_are_one_clear_line(folder, tmp_path, capsys):
    torch.save(_official().state_dict(), tmp_path / "swin.pth")
    base = ARGS + ["--data", folder, "--max-steps", "1", "--workers", "0", "--output-dir", tmp_path / "run"]
    rc, out, err = _main(base + ["--pretrained", tmp_path / "swin.pth", "--embed-dim", "24", "--num-heads", "2,4"],
                         capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"--pretrained .*swin.pth: the official checkpoint does not match the model's architecture: "
                     r"embed_dim: checkpoint 12, model 24; num_heads: .*; \(so 35 tensors have other shapes\) "
                     r"\(the --model and its options", err), err
    torch.save({"model": swin_ext.SwinTransformerV2(**ARCH).state_dict()}, tmp_path / "v2.pth")
    rc, out, err = _main(base + ["--pretrained", tmp_path / "v2.pth"], capsys)
    assert rc == 1 and "this is a Swin V2 checkpoint" in err
    sd = _official().state_dict()
    sd["extra.weight"] = sd.pop("norm.bias")
    torch.save(sd, tmp_path / "partial.pth")  # loads, and says what is missing and what is not used
    argv = base + ["--pretrained", tmp_path / "partial.pth", "--output-dir", tmp_path / "partial"]
    rc, out, err = _main(argv, capsys)
    assert rc == 0, err
    assert "pretrained: missing from the checkpoint, left as initialised: norm.bias" in out
    assert "pretrained: in the checkpoint but not used: extra.weight" in out
    torch.save({"model": Evil(str(tmp_path / "marker"))}, tmp_path / "evil.pth")  # never executed
    rc, out, err = _main(base + ["--pretrained", tmp_path / "evil.pth"], capsys)
    assert rc == 1 and "weights_only=True" in err and not (tmp_path / "marker").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_frozen_stages_and_head_only_do_not_change(folder, tmp_path, capsys):
    torch.save(_official(num_classes=3).state_dict(), tmp_path / "swin.pth")
    pre = _official(num_classes=3).state_dict()
    base = ARGS + ["--data", folder, "--pretrained", tmp_path / "swin.pth", "--lr", "1e-2", "--warmup-steps", "0",
                   "--max-steps", "2", "--workers", "0"]
    rc, out, err = _main(base + ["--freeze-stages", "1", "--output-dir", tmp_path / "a"], capsys)
    assert rc == 0 and "frozen: the patch embedding and 1 of 2 stages" in out, err
    sd = _ckpt(tmp_path / "a" / "last.pt")["model"]
    for k in pre:
        frozen = k.startswith(("patch_embed.", "layers.0."))
        assert torch.equal(sd[k], pre[k]) == frozen, k
    rc, out, err = _main(base + ["--head-only", "--output-dir", tmp_path / "b"], capsys)
    assert rc == 0, err
    sd = _ckpt(tmp_path / "b" / "last.pt")["model"]
    assert [k for k in pre if not torch.equal(sd[k], pre[k])] == ["head.weight", "head.bias"]
    rc, out, err = _main(base + ["--max-steps", "3", "--resume", "auto", "--output-dir", tmp_path / "b"], capsys)
    assert rc == 1 and "--head-only False (the checkpoint's run: True) would change the parameters that train" in err


# --------------------------------------------------------------------------- augmentation


def test_no_augment_is_honoured_for_image_folders(folder):
    # was: build_datasets did not pass augment to the image folder (random crops with --no-augment)
    import timm.data
    from PIL import Image

    def two_draws(train):
        ds = SeededDataset(train)
        return ds[(0, sample_seed(0, 0, 0))][0], ds[(0, sample_seed(0, 0, 1))][0]

    tr, te, n = build_datasets(str(folder), 16, 3, augment=False, aug=T.data.Augment(aa="rand-m9-mstd0.5-inc1"))
    a, b = two_draws(tr)
    assert n == 3 and a.shape == (3, 16, 16) and torch.equal(a, b)
    tr, _, _ = build_datasets(str(folder), 16, 3, aug=T.data.Augment(aa="rand-m9-mstd0.5-inc1", reprob=0.5))
    a, b = two_draws(tr)
    assert not torch.equal(a, b)
    assert torch.equal(SeededDataset(tr)[(0, 7)][0], SeededDataset(tr)[(0, 7)][0])  # a seed gives one sample
    # evaluation: timm's transform of the model's pretrained_cfg
    m = swin_ext.SwinTransformer(**ARCH)
    img = Image.open(te.samples[0][0]).convert("RGB")
    torch.testing.assert_close(te[0][0], timm.data.create_transform(**timm.data.resolve_data_config({}, model=m))(img))
    gray, _, _ = build_datasets(str(folder), 16, 1)
    assert gray[0][0].shape == (1, 16, 16)
    with pytest.raises(T.TrainArgumentError, match="--aa 'rand-x9' is not a timm augmentation policy"):
        build_datasets(str(folder), 16, 3, aug=T.data.Augment(aa="rand-x9"))


def test_mixup_gives_soft_targets_seeded_by_the_batch(tmp_path, monkeypatch):
    import timm.loss

    seen = []
    real = timm.loss.SoftTargetCrossEntropy.forward
    monkeypatch.setattr(timm.loss.SoftTargetCrossEntropy, "forward",
                        lambda self, x, target: seen.append(target.clone()) or real(self, x, target))
    argv = ["--data", "digits", "--limit", "16", "--batch-size", "8", "--max-steps", "2", "--mixup", "0.8",
            "--cutmix", "1.0", "--smoothing", "0.1", "--img-size", "16", "--embed-dim", "12", "--depths", "1,1",
            "--num-heads", "1,2", "--window-size", "2", "--no-progress", "--no-plot", "--threads", "1"]
    for run in ("a", "b"):
        T.train(T.build_parser().parse_args(argv + ["--output-dir", str(tmp_path / run)]))
    assert len(seen) == 4
    for t in seen:
        assert t.shape == (8, 10) and torch.allclose(t.sum(-1), torch.ones(8))
        assert t.min() >= 0.1 / 10 - 1e-6  # label smoothing's off-value
    assert all((t > 0.011).sum(-1).max() == 2 for t in seen)  # each row mixes two labels
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])  # seeded: runs repeat
    assert not torch.equal(seen[0], seen[1])


# --------------------------------------------------------------------------- exact resume with workers


def test_resume_is_bit_identical_with_workers_and_random_augmentation(folder, tmp_path, capsys):
    # was: a mid-epoch resume with DataLoader workers ended with other weights (augmentation drew from
    # each worker's own stream); now each sample and batch draws under its own seed
    argv = ARGS + ["--data", folder, "--max-steps", "5", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.5",
                   "--mixup", "0.8", "--cutmix", "1.0", "--model-ema", "--model-ema-decay", "0.5", "--drop-path",
                   "0.2"]
    full, part, zero = tmp_path / "full", tmp_path / "part", tmp_path / "zero"
    logs = []
    for args in ([full, "--workers", "2"], [part, "--workers", "2", "--stop-after-steps", "2"],
                 [part, "--workers", "2", "--resume", "auto"], [zero, "--workers", "0"]):
        rc, out, err = _main(argv + ["--output-dir"] + args, capsys)
        assert rc == 0, err
        logs.append(out)
    assert "resumed from" in logs[2] and "(epoch 1, batch 2)" in logs[2]  # mid-epoch: 3 batches per epoch
    a, b, c = _ckpt(full / "last.pt"), _ckpt(part / "last.pt"), _ckpt(zero / "last.pt")
    assert a["step"] == b["step"] == 5 and "model_ema" in a
    for key in ("model", "model_ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)  # interrupted and resumed: the same
            assert torch.equal(a[key][k], c[key][k]), (key, k)  # no workers: the same
    assert any(not torch.equal(a["model"][k], a["model_ema"][k]) for k in a["model"])
    assert a["classes"] == list(CLASSES) and a["data_config"]["input_size"] == [3, 16, 16]


# --------------------------------------------------------------------------- evaluation and prediction


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    argv = ARGS + ["--data", str(folder), "--max-steps", "3", "--workers", "0", "--model-ema", "--lr", "1e-2",
                   "--output-dir", str(d)]
    T.train(T.build_parser().parse_args(argv))
    return d / "last.pt"


def _val_images(folder):
    return [str(folder / "val" / c / f"{i}.png") for c in CLASSES for i in range(2)]


def test_eval_only_prints_top1_top5_and_per_class(trained, folder, tmp_path, capsys):
    from swin_ext.predict import load_classifier, predict

    rc, out, err = _main(["--eval-only", "--pretrained", trained, "--data", folder, "--threads", "1",
                          "--no-progress", "--output-dir", tmp_path / "out"], capsys)
    assert rc == 0, err
    metrics = json.loads(out.split("EVAL_METRICS ", 1)[1])
    model, names, tf = load_classifier(str(trained))
    preds = [r["top"][0][0] for r in predict(model, tf, _val_images(folder))]
    truth = [i for i in range(3) for _ in range(2)]
    correct = [sum(p == t for p, t in zip(preds, truth) if t == c) for c in range(3)]
    assert metrics["per_class_correct"] == correct and metrics["per_class_count"] == [2, 2, 2]
    assert metrics["test_acc"] == pytest.approx(sum(correct) / 6) and metrics["test_top5"] == 1.0
    assert not (tmp_path / "out").exists()  # nothing written
    assert re.search(rf"top-1 {100 * sum(correct) / 6:.2f}%  top-5 100.00%", out)
    for c, ok in zip(CLASSES, correct):
        assert re.search(rf"^  {c}\s+{ok}\s+2\s+{100 * ok / 2:.2f}%$", out, re.M), out
    # a checkpoint whose head is not this data's classes
    torch.save(_official().state_dict(), tmp_path / "swin7.pth")
    rc, out, err = _main(ARGS + ["--eval-only", "--pretrained", tmp_path / "swin7.pth", "--data", folder], capsys)
    assert rc == 1 and "not a classifier of this data's 3 classes (num_classes differs: checkpoint 7" in err
    rc, out, err = _main(["--eval-only", "--data", folder], capsys)
    assert rc == 2 and "--eval-only needs --pretrained PATH" in err


def test_predict_prints_top_classes_with_probabilities(trained, folder, tmp_path, capsys):
    from swin_ext.predict import main

    images = _val_images(folder)
    assert main(["--checkpoint", str(trained), "--json", "--batch-size", "4"] + images) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == images
    for r in rows:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert {t["class"] for t in r["top"]} == set(CLASSES)
    assert main(["--checkpoint", str(trained), "--json", "--batch-size", "1"] + images) == 0  # batching: alike
    again = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    for r, s in zip(rows, again):
        assert [t["index"] for t in r["top"]] == [t["index"] for t in s["top"]]
        assert [t["probability"] for t in r["top"]] == pytest.approx([t["probability"] for t in s["top"]], abs=1e-6)
    assert main(["--checkpoint", str(trained), "--ema", "--top-k", "2", images[0], "missing.png", images[1]]) == 1
    out, err = capsys.readouterr()
    assert re.search(rf"^{re.escape(images[0])}\n  +\d+\.\d\d%  (cat|dog|eel)  \(\d\)\n  +\d+\.\d\d%  \w+  \(\d\)\n"
                     rf"{re.escape(images[1])}\n", out), out
    assert "swin-ext-predict: error: missing.png: no such image file" in err
    # another layout with --model: a 1,000-class head is named by ImageNet's labels
    torch.manual_seed(0)
    m = swin_ext.SwinTransformer(**{**ARCH, "img_size": 224, "num_classes": 1000})
    torch.save(to_timm(m.state_dict()), tmp_path / "timm.pth")
    assert main(["--checkpoint", str(tmp_path / "timm.pth"), "--model", "swin_tiny_patch4_window7_224", "--json",
                 images[0]]) == 1
    assert "embed_dim: checkpoint 12, model 96" in capsys.readouterr().err  # the wrong --model, said
    from swin_ext.predict import load_classifier

    with pytest.raises(ValueError, match="not a swin_ext.train checkpoint: name its model with --model"):
        load_classifier(str(tmp_path / "timm.pth"))


def test_predict_names_imagenet_classes(tmp_path, monkeypatch):
    from swin_ext import predict as P

    torch.manual_seed(0)
    m = swin_ext.SwinTransformer(**{**ARCH, "num_classes": 1000})
    torch.save(to_timm(m.state_dict()), tmp_path / "timm.pth")
    monkeypatch.setitem(swin_ext.factory._MODELS, "tiny_test", {**ARCH, "num_classes": 1000})
    model, names, tf = P.load_classifier(str(tmp_path / "timm.pth"), "tiny_test")
    assert len(names) == 1000 and names[1].startswith("goldfish")  # timm's tables: no download


# --------------------------------------------------------------------------- the recipe and arguments


def _resolved(*argv):
    args = T.build_parser().parse_args(list(argv))
    T.validate_args(args)
    return args


def test_recipe_finetune_fills_defaults_that_flags_override(tmp_path):
    a = _resolved("--data", str(tmp_path), "--recipe", "finetune", "--batch-size", "64")
    assert (a.epochs, a.warmup_epochs, a.weight_decay, a.layer_decay) == (30, 5.0, 1e-8, 0.9)
    assert a.lr == pytest.approx(2e-5 * 64 / 512) and a.min_lr == pytest.approx(2e-7 * 64 / 512)
    assert (a.aa, a.reprob, a.mixup, a.cutmix, a.label_smoothing) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1)
    cfg = T.run_config(_resolved("--recipe", "finetune", "--model", "swin_t"), 10)
    assert cfg["drop_path_rate"] == 0.1  # the official fine-tuning's, tiny
    assert T.run_config(_resolved("--recipe", "finetune", "--model", "swin_b"), 10)["drop_path_rate"] == 0.2
    b = _resolved("--data", str(tmp_path), "--recipe", "finetune", "--lr", "1e-4", "--mixup", "0", "--epochs", "3")
    assert (b.lr, b.mixup, b.epochs, b.cutmix) == (1e-4, 0.0, 3, 1.0)
    c = _resolved("--data", str(tmp_path), "--recipe", "finetune", "--no-augment")
    assert (c.aa, c.reprob, c.mixup, c.cutmix) == (None, 0.0, 0.0, 0.0)
    d = _resolved("--recipe", "finetune")  # the digits: no image augmentation
    assert (d.aa, d.reprob, d.mixup) == (None, 0.0, 0.8)
    e = _resolved()  # no recipe: the CLI's defaults
    assert (e.epochs, e.lr, e.min_lr, e.weight_decay, e.label_smoothing, e.mixup) == (40, 2e-3, 1e-5, 0.05, 0.1, 0.0)
    assert vars(_resolved()) == vars(e)  # validate_args twice changes nothing


@pytest.mark.parametrize("argv,text", [
    (["--no-augment", "--mixup", "0.8"], "--no-augment turns off all training augmentation, but --mixup"),
    (["--aa", "rand-m9-mstd0.5-inc1"], "--aa and --reprob augment images of an image folder"),
    (["--mixup", "0.8", "--batch-size", "7"], "--batch-size must be even, got 7"),
    (["--head-only", "--freeze-stages", "1"], "--head-only freezes every stage"),
    (["--freeze-stages", "3"], "--freeze-stages 3: the model has 2 stages"),
    (["--eval-only", "--pretrained", "x.pth", "--resume", "auto"], "--eval-only evaluates --pretrained"),
    (["--recipe", "pretrain"], "argument --recipe: invalid choice"),
])
def test_bad_fine_tuning_arguments_are_one_line(argv, text, tmp_path, capsys):
    base = ["--data", "digits", "--limit", "16", "--batch-size", "8", "--max-steps", "1", "--no-progress", "--no-plot",
            "--depths", "1,1", "--num-heads", "1,2", "--output-dir", tmp_path / "run"]
    rc, out, err = _main(base + argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and text in err, err


def test_compile_flag_compiles_the_training_model(monkeypatch, tmp_path):
    # the compiled run itself is measured by hand (inductor takes minutes on 2 cores); here: what is compiled
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    args = T.build_parser().parse_args(["--data", "digits", "--limit", "16", "--batch-size", "8", "--max-steps", "1",
                                        "--compile", "--threads", "1",
                                        "--depths", "1,1", "--num-heads", "1,2", "--no-progress", "--no-plot",
                                        "--output-dir", str(tmp_path)])
    T.train(args)
    assert len(compiled) == 1 and isinstance(compiled[0], swin_ext.SwinTransformer)
