"""swin_ext as a torchvision detection backbone (FPN)."""
from collections import OrderedDict

import pytest
import torch

import swin_ext

from swin_test_utils import randomize, small

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


def test_fpn_backbone_keeps_always_partition():
    # a classification model copied into the backbone keeps its window rule (the official detection backbone's)
    assert swin_ext.fpn_backbone(small(always_partition=True)).body.always_partition
    assert not swin_ext.fpn_backbone(small()).body.always_partition


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


# ----------------------------------------------------------------------------- Mask R-CNN and detection checkpoints


def _mask_rcnn(bb):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(bb, num_classes=3, min_size=96, max_size=128, rpn_anchor_generator=anchors,
                    rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64,
                    rpn_post_nms_top_n_test=32, box_batch_size_per_image=32)


def _boxes_and_masks(size, boxes, labels):
    masks = torch.zeros(len(boxes), *size, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[int(y0):int(y1), int(x0):int(x1)] = 1
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels), masks=masks)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_mask_rcnn_trains_a_step_and_evaluates(v2):
    """torchvision's MaskRCNN on fpn_backbone: one step on synthetic boxes + masks reaches every backbone
    parameter (a finite, non-zero gradient), and eval returns boxes, labels, scores and masks."""
    name = "swinv2_tiny_window8_256" if v2 else "swin_tiny_patch4_window7_224"
    bb = swin_ext.fpn_backbone(name, out_channels=32, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                               window_size=4, drop_path_rate=0.0)
    if v2:  # V2's res-post-norms start at zero (each block the identity, its branch without gradient): set to 1
        with torch.no_grad():
            for blk in (b for layer in bb.body.layers for b in layer.blocks):
                blk.norm1.weight.fill_(1.0)
                blk.norm2.weight.fill_(1.0)
    det = _mask_rcnn(bb)
    images = [torch.rand(3, 96, 128), torch.rand(3, 90, 110)]
    targets = [_boxes_and_masks((96, 128), [[10.0, 20.0, 60.0, 90.0]], [1]),
               _boxes_and_masks((90, 110), [[5.0, 5.0, 40.0, 30.0], [50.0, 40.0, 100.0, 85.0]], [2, 1])]
    det.train()
    losses = det(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in bb.body.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    before = bb.body.layers[3].blocks[0].attn.qkv.weight.detach().clone()
    torch.optim.SGD(det.parameters(), lr=1e-2).step()
    assert not torch.equal(before, bb.body.layers[3].blocks[0].attn.qkv.weight)
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and all({"boxes", "labels", "scores", "masks"} <= set(o) for o in out)
    assert out[0]["masks"].shape[1:] == (1, 96, 128)


@pytest.mark.parametrize("layout", ["official", "mmdet"])
def test_backbone_loads_a_mask_rcnn_checkpoint(layout):
    """A detector checkpoint (backbone + neck + heads) gives fpn_backbone its Swin; the neck and heads are not read."""
    src = randomize(small(features_only=True))
    sd = src.state_dict()
    if layout == "mmdet":  # mmdet's SwinTransformer keys, the merging weights in nn.Unfold's channel order
        sd = swin_ext.weights.to_openmmlab(sd)
        assert "stages.1.blocks.0.attn.w_msa.qkv.weight" in sd and "stages.2.downsample.reduction.weight" in sd
    ckpt = {"backbone." + k: v for k, v in sd.items()}
    ckpt["neck.lateral_convs.0.conv.weight"] = torch.randn(64, 32, 1, 1)
    ckpt["rpn_head.rpn_conv.weight"] = torch.randn(64, 64, 3, 3)
    ckpt["roi_head.mask_head.conv_logits.weight"] = torch.randn(80, 64, 1, 1)
    bb = swin_ext.fpn_backbone("swin_tiny_patch4_window7_224", out_channels=32, pretrained={"state_dict": ckpt},
                               embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
    res = bb.body.pretrained_result
    assert res.format == ("openmmlab" if layout == "mmdet" else "official")
    assert {"neck.lateral_convs.0.conv.weight", "rpn_head.rpn_conv.weight",
            "roi_head.mask_head.conv_logits.weight"} <= set(res.ignored_keys)
    for k, v in src.state_dict().items():
        assert torch.equal(bb.body.state_dict()[k], v), k
