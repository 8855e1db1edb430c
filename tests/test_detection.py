"""swin_ext as a torchvision detection backbone (FPN)."""
from collections import OrderedDict

import pytest
import torch

import swin_ext

from swin_test_utils import small

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
tv = pytest.importorskip("torchvision")


def test_fpn_backbone_contract():
    bb = swin_ext.fpn_backbone(small(), out_channels=64)
    assert bb.out_channels == 64 and isinstance(bb.out_channels, int)
    out = bb(torch.randn(2, 3, 128, 96))
    assert isinstance(out, OrderedDict) and list(out) == ["0", "1", "2", "3", "pool"]
    strides = [4, 8, 16, 32, 64]
    for (k, f), s in zip(out.items(), strides):
        assert f.shape == (2, 64, -(-128 // s), -(-96 // s)), (k, f.shape)


def test_fpn_backbone_from_name_and_bad_input():
    bb = swin_ext.fpn_backbone("swin_tiny_patch4_window7_224", out_channels=32, out_indices=(1, 2, 3),
                               embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
    assert list(bb(torch.randn(1, 3, 64, 64))) == ["0", "1", "2", "pool"]
    with pytest.raises(TypeError, match="name_or_model"):
        swin_ext.fpn_backbone(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="out_channels"):
        swin_ext.fpn_backbone(small(), out_channels=0)


def test_faster_rcnn_trains_a_step_and_runs_in_eval():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    bb = swin_ext.fpn_backbone(small(), out_channels=32)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    det = FasterRCNN(bb, num_classes=3, min_size=128, max_size=160, rpn_anchor_generator=anchors)
    images = [torch.rand(3, 128, 160), torch.rand(3, 120, 150)]
    targets = [
        dict(boxes=torch.tensor([[10.0, 20.0, 60.0, 90.0]]), labels=torch.tensor([1])),
        dict(boxes=torch.tensor([[5.0, 5.0, 40.0, 30.0], [50.0, 40.0, 120.0, 110.0]]), labels=torch.tensor([2, 1])),
    ]
    det.train()
    opt = torch.optim.SGD(det.parameters(), lr=1e-3)
    losses = det(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    before = bb.body.patch_embed.proj.weight.detach().clone()
    loss.backward()
    opt.step()
    assert not torch.equal(before, bb.body.patch_embed.proj.weight)  # the Swin body trained
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and all({"boxes", "labels", "scores"} <= set(o) for o in out)


@pytest.mark.slow
def test_detection_example_runs():
    import os
    import runpy

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "detection_finetune.py"
    )
    mod = runpy.run_path(path, run_name="example")
    mod["main"](["--small", "--steps", "1", "--size", "96"])


def _example():
    import os
    import runpy

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(repo, "examples", "detection_finetune.py")
    return runpy.run_path(path, run_name="example")


@pytest.mark.parametrize("argv,text", [
    (["--steps", "0"], "argument --steps: must be >= 1, got 0"),  # was: NameError after no step
    (["--num-classes", "1"], "argument --num-classes: must be >= 2, got 1"),  # was: ValueError from random.randint
    (["--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["--images", "."], "--images and --annotations go together"),
])
def test_detection_example_refuses_bad_arguments(argv, text, capsys):
    with pytest.raises(SystemExit) as e:
        _example()["main"](["--small"] + argv)
    assert e.value.code == 2
    assert text in capsys.readouterr().err


def test_detection_example_fewer_images_than_batch_is_refused(tmp_path, capsys):
    # was: folder_batches spun forever looking for a complete batch
    import json

    ann = tmp_path / "boxes.json"
    ann.write_text(json.dumps([{"file": "a.png", "boxes": [[1, 1, 9, 9]], "labels": [1]}]))
    mod = _example()
    with pytest.raises(SystemExit) as e:
        mod["main"](["--small", "--images", str(tmp_path), "--annotations", str(ann), "--batch", "2"])
    assert e.value.code == 2
    assert "lists 1 image, fewer than --batch 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="none would ever be complete"):
        next(mod["folder_batches"](str(tmp_path), [], 2))
    ann.write_text(json.dumps([{"file": "a.png", "boxes": [[1, 1, 9, 9]], "labels": [4]}]))
    with pytest.raises(SystemExit):
        mod["main"](["--small", "--images", str(tmp_path), "--annotations", str(ann), "--batch", "1"])
    assert r"labels [4] are outside 1..3" in capsys.readouterr().err


def _eps_model(version, eps):
    cls = swin_ext.SwinTransformer if version == "v1" else swin_ext.SwinTransformerV2
    m = cls(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=3)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.eps = eps
    return m.eval()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fpn_backbone_keeps_the_models_layernorm_eps(version):
    model = _eps_model(version, 0.1)  # an eps large enough to change every norm's output
    bb = swin_ext.fpn_backbone(model, out_channels=8, out_indices=(0, 1))
    assert {m.eps for m in bb.body.modules() if isinstance(m, torch.nn.LayerNorm)} == {0.1}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = bb.body(x)
        maps = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for i, (g, t) in enumerate(zip(got, maps)):
        norm = getattr(bb.body, f"norm{i}")
        want = torch.nn.functional.layer_norm(t, (t.shape[-1],), norm.weight, norm.bias, 0.1).permute(0, 3, 1, 2)
        torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fpn_backbone_of_a_float64_model_runs_in_float64(version):
    model = _eps_model(version, 1e-5).double()
    for bb in (swin_ext.fpn_backbone(model, out_channels=8, out_indices=(0, 1)),
               swin_ext.SwinFPN(swin_ext.fpn_backbone(model, out_channels=8, out_indices=(0, 1)).body, 8)):
        out = bb(torch.randn(1, 3, 64, 64, dtype=torch.float64))
        assert list(out) == ["0", "1", "pool"] and all(f.dtype == torch.float64 for f in out.values())
