"""Semantic segmentation: UperNet over swin_ext Swin (V1 and V2), its checkpoint layouts, metrics, export.

Parity is checked against transformers' own ``UperNetForSemanticSegmentation`` (random weights, float64).
"""
from __future__ import annotations

import math
import os
import re
import warnings

import pytest
import torch
import torch.nn as nn

import swin_ext
from swin_ext import CheckpointError, ConversionError, from_transformers, load_pretrained, segmentation
from swin_ext.layers.pos_bias import relative_position_index
from swin_ext.segmentation import UperNet, miou, upernet
from swin_ext.segmentation.weights import to_mmseg_state_dict

from swin_test_utils import assert_unchanged, rel_err, snapshot

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

NCLS = 5
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, drop_path_rate=0.0)


def _randomize(model, std=0.3):
    """Non-trivial values everywhere: parameters, and BatchNorm statistics (eval mode reads them)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
    return model


def _tiny(v2=False, **kw):
    name = "swinv2_tiny_window8_256" if v2 else "swin_tiny_patch4_window7_224"
    kw = {**TINY, **kw}
    return upernet(name, NCLS, channels=24, aux_channels=12, **kw)


def _hf_upernet(v2=False, img=64, depths=(2, 2, 2, 2), **bkw):
    """transformers' UperNet with a tiny SwinBackbone / Swinv2Backbone (window 4 at 64 px: stage 4 is 2x2)."""
    transformers = pytest.importorskip("transformers")
    C = transformers.Swinv2Config if v2 else transformers.SwinConfig
    bc = C(image_size=img, patch_size=4, embed_dim=16, depths=list(depths), num_heads=[1, 1, 2, 2], window_size=4,
           out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0, hidden_dropout_prob=0.0,
           attention_probs_dropout_prob=0.0, **bkw)
    cfg = transformers.UperNetConfig(backbone_config=bc, hidden_size=24, auxiliary_channels=12, num_labels=NCLS)
    return _randomize(transformers.UperNetForSemanticSegmentation(cfg)).double().eval()


@pytest.fixture(scope="module")
def hf_models():
    """One transformers UperNet per backbone kind for the module's tests (built once: building is the slow part)."""
    return {False: _hf_upernet(False), True: _hf_upernet(True)}


def _float(sd):
    """A float64 state dict in float32 (integer buffers as they are)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _labels(shape, ignore_rows=2):
    y = torch.randint(0, NCLS, shape)
    y[:, :ignore_rows] = 255  # some ignored pixels
    return y


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_logits_at_input_resolution_any_size(v2):
    m = _tiny(v2).double().eval()
    x = torch.randn(1, 3, 33, 90, dtype=torch.float64)
    with torch.no_grad():
        logits, aux = m(x, return_aux=True)
        plain = m(x)
    assert logits.shape == aux.shape == (1, NCLS, 33, 90)
    assert torch.equal(plain, logits) and torch.isfinite(logits).all()
    m_noaux = upernet(m.backbone, NCLS, channels=24, aux=False).eval()
    assert m_noaux.auxiliary_head is None
    assert m_noaux(torch.randn(1, 3, 40, 40, dtype=torch.float64), return_aux=True)[1] is None


def test_builders_match_the_papers_models():
    # parameter counts of the paper's UperNet models (60M, 81M, 121M, 234M at 150 classes); built on meta: no memory
    want = {"t": (59.9, 7), "l": (234.0, 12)}  # (Swin-S / B: 81.3M / 121.3M, the same code)
    for size, (mparams, window) in want.items():
        with torch.device("meta"):
            m = getattr(segmentation, f"upernet_swin_{size}")(150)
        assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == mparams, size
        assert m.backbone.window_size == window and m.backbone.always_partition
        assert m.decode_head.channels == 512 and m.auxiliary_head.channels == 256 and m.aux_weight == 0.4
        assert m.auxiliary_head.in_channels == m.backbone.out_channels[2]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="features_only"):
        UperNet(swin_ext.swin_t(**TINY), NCLS)
    with pytest.raises(ValueError, match="num_classes"):
        UperNet(_tiny().backbone, 0)
    with pytest.raises(ValueError, match="aux_in_index"):
        UperNet(_tiny().backbone, NCLS, aux_in_index=7)
    with pytest.raises(ValueError, match="backbone keywords"):
        upernet(_tiny().backbone, NCLS, embed_dim=32)
    with pytest.raises(TypeError, match="without_output_norms"):
        segmentation.without_output_norms(_tiny().backbone)


def test_loss_weights_ignores_and_checks():
    m = _tiny()
    logits, aux = torch.randn(2, NCLS, 8, 6), torch.randn(2, NCLS, 8, 6)
    y = _labels((2, 8, 6))
    ce = nn.functional.cross_entropy
    want = ce(logits, y, ignore_index=255) + 0.4 * ce(aux, y, ignore_index=255)
    assert torch.allclose(m.loss(logits, y, aux_logits=aux), want)
    assert torch.allclose(m.loss(logits, y), ce(logits, y, ignore_index=255))
    y7 = y.clone()
    y7[y7 == 255] = 7
    assert torch.allclose(m.loss(logits, y7, ignore_index=7), ce(logits, y7, ignore_index=7))
    assert m.loss(logits, torch.full((2, 8, 6), 255)).item() == 0.0  # nothing to learn: 0, not NaN
    with pytest.raises(ValueError, match=r"labels \[9\] outside \[0, 5\)"):
        m.loss(logits, torch.full((2, 8, 6), 9))
    with pytest.raises(ValueError, match="does not match"):
        m.loss(logits, y[:, :4])
    with pytest.raises(TypeError, match="integer"):
        m.loss(logits, y.float())


# ----------------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("v2", [False, True], ids=["SwinBackbone", "Swinv2Backbone"])
def test_from_transformers_same_logits_and_loss(v2):
    """Eval and train mode (dropout 0), window-divisible and odd sizes, float64: <= 1e-9 relative."""
    hf = _hf_upernet(v2)  # its own: this test trains it
    ours = from_transformers(hf)
    assert isinstance(ours, UperNet) and ours.backbone.features_only and not ours.training
    assert isinstance(ours.backbone, swin_ext.SwinTransformerV2) == v2
    for size in [(64, 64), (61, 47)]:
        x, y = torch.randn(1, 3, *size, dtype=torch.float64), _labels((1, *size))
        with torch.no_grad():
            out = hf(pixel_values=x, labels=y)
            logits, aux = ours(x, return_aux=True)
        assert rel_err(logits, out.logits) <= 1e-9, size
        assert abs(ours.loss(logits, y, aux_logits=aux).item() - out.loss.item()) <= 1e-9 * abs(out.loss.item())
    hf.train()
    ours.train()
    x, y = torch.randn(2, 3, 64, 48, dtype=torch.float64), _labels((2, 64, 48))
    out = hf(pixel_values=x, labels=y)
    logits, aux = ours(x, return_aux=True)
    loss = ours.loss(logits, y, aux_logits=aux)
    assert rel_err(logits, out.logits) <= 1e-9
    assert abs(loss.item() - out.loss.item()) <= 1e-9 * abs(out.loss.item())
    # train mode used the batch statistics and updated the running ones alike
    assert rel_err(ours.decode_head.fpn_bottleneck.bn.running_var,
                   hf.decode_head.fpn_bottleneck.batch_norm.running_var) <= 1e-12
    out.loss.backward()
    loss.backward()
    assert rel_err(ours.decode_head.conv_seg.weight.grad, hf.decode_head.classifier.weight.grad) <= 1e-9
    hf_embed = (hf.backbone if v2 else hf.backbone.swin).embeddings.patch_embeddings.projection
    assert rel_err(ours.backbone.patch_embed.proj.weight.grad, hf_embed.weight.grad) <= 1e-9


def test_swin_backbone_needs_always_partition(hf_models):
    # transformers' SwinBackbone pads every map to the window and shifts (stage 4 at 64 px is 2x2, window 4);
    # swin_ext's default does not shift a map no larger than the window: a different model.
    hf = hf_models[False]
    ours = from_transformers(hf)
    assert ours.backbone.always_partition
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        for blk in (b for layer in ours.backbone.layers for b in layer.blocks):
            blk.always_partition = False
        assert rel_err(ours(x), want) > 1e-3


def test_from_transformers_refuses_what_it_cannot_reproduce():
    transformers = pytest.importorskip("transformers")
    with pytest.raises(ConversionError, match="hidden_act"):
        from_transformers(_hf_upernet(depths=(1, 1, 1, 1), hidden_act="relu"))
    bc = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    conv = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=bc, hidden_size=8, auxiliary_channels=8))
    with pytest.raises(ConversionError, match="SwinBackbone"):
        from_transformers(conv)


# ----------------------------------------------------------------------------- checkpoint layouts


def _same_outputs(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_load_pretrained_reads_the_transformers_layout(v2, hf_models):
    hf = hf_models[v2]
    ref = from_transformers(hf)
    sd = hf.state_dict()
    hub = {k.replace("backbone.swin.", "backbone."): v for k, v in sd.items()}  # the hub files' older prefix
    for source in (sd, hub) if not v2 else (sd,):
        # the matching swin_ext model: V2 with the per-stage windows transformers fixes at 64 px and no output norms
        m = (_tiny(v2, output_norms=False, window_size=[4, 4, 4, 2]) if v2 else _tiny()).double()
        res = load_pretrained(m, source)
        assert res.format.startswith("transformers UperNet") and not res.missing_keys and not res.unexpected_keys
        x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(m.eval()(x), ref.eval()(x)) <= 1e-12


def test_v2_output_norms_must_match_the_checkpoint(hf_models):
    hf = hf_models[True]
    m = _tiny(v2=True)  # with output norms: transformers' Swinv2Backbone has none
    snap = snapshot(m)
    with pytest.raises(CheckpointError, match="output_norms=False"):
        load_pretrained(m, _float(hf.state_dict()))
    assert_unchanged(m, snap)


def _mmseg_unfold_merge(x, norm_w, norm_b, red_w):
    """mmseg's PatchMerging (nn.Unfold 2x2, channel-major), as mmseg computes it, on (B, H, W, C)."""
    B, H, W, C = x.shape
    u = nn.functional.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # B, L, 4C
    u = nn.functional.layer_norm(u, (4 * C,), norm_w, norm_b)
    return (u @ red_w.t()).view(B, H // 2, W // 2, -1)


@pytest.mark.parametrize("openmmlab_backbone", [True, False], ids=["mmseg-swin", "official-swin"])
def test_mmseg_layout_round_trip(openmmlab_backbone):
    src = _randomize(_tiny()).double().eval()
    sd = to_mmseg_state_dict(src, openmmlab_backbone)
    heads = [k for k in sd if k.startswith(("decode_head.", "auxiliary_head."))]
    # mmseg's UPerHead / FCNHead / ConvModule names
    for key in ("decode_head.psp_modules.3.1.conv.weight", "decode_head.psp_modules.0.1.bn.running_var",
                "decode_head.bottleneck.bn.num_batches_tracked", "decode_head.lateral_convs.2.conv.weight",
                "decode_head.fpn_convs.0.bn.weight", "decode_head.fpn_bottleneck.conv.weight",
                "decode_head.conv_seg.bias", "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight"):
        assert key in heads, key
    if openmmlab_backbone:
        for key in ("backbone.patch_embed.projection.weight", "backbone.stages.0.blocks.1.attn.w_msa.qkv.weight",
                    "backbone.stages.1.blocks.0.ffn.layers.0.0.weight", "backbone.stages.3.blocks.1.ffn.layers.1.bias",
                    "backbone.stages.0.downsample.reduction.weight", "backbone.norm3.weight"):
            assert key in sd, key
        for k in [k for k in sd if k.endswith("w_msa.relative_position_bias_table")]:  # mmseg saves the index too
            sd[k.replace("bias_table", "index")] = relative_position_index(4)
        # the merging weights are in nn.Unfold's order: mmseg's own merging reproduces ours
        x = torch.randn(2, 8, 6, 16, dtype=torch.float64)
        p = "backbone.stages.0.downsample."
        got = _mmseg_unfold_merge(x, sd[p + "norm.weight"], sd[p + "norm.bias"], sd[p + "reduction.weight"])
        with torch.no_grad():
            want = src.backbone.layers[0].downsample(x)
        assert rel_err(got, want) <= 1e-12
    ckpt = {"meta": {"mmseg_version": "1.2.2"}, "state_dict": sd}
    dst = _tiny().double()
    res = load_pretrained(dst, ckpt)
    assert res.format.startswith("mmseg UperNet (" + ("openmmlab" if openmmlab_backbone else "official"))
    assert not res.missing_keys and not res.unexpected_keys
    assert _same_outputs(src, dst, torch.randn(1, 3, 45, 70, dtype=torch.float64))
    if openmmlab_backbone:  # another bias lookup is refused under the checkpoint's own key name
        key = "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"
        sd[key] = sd[key].flip(0)
        with pytest.raises(CheckpointError, match=re.escape(key.split(".", 1)[1]) + ": .*not the standard Swin index"):
            load_pretrained(_tiny().double(), ckpt)


def test_backbone_only_checkpoint_and_new_classes():
    cls = _randomize(swin_ext.swin_t(**TINY, num_classes=10))
    m = _tiny()
    heads_before = {k: v.clone() for k, v in m.state_dict().items() if "head." in k}
    res = load_pretrained(m, cls.state_dict())
    assert "backbone only" in res.format and not res.missing_keys
    assert all(torch.equal(m.state_dict()[k], v) for k, v in heads_before.items())
    assert torch.equal(m.backbone.layers[1].blocks[0].attn.qkv.weight, cls.layers[1].blocks[0].attn.qkv.weight)
    # a UperNet checkpoint of another class count: strict refuses; the builder keeps its own classifiers
    src = _randomize(_tiny())
    snap = snapshot(m)
    other = upernet("swin_tiny_patch4_window7_224", NCLS + 2, channels=24, aux_channels=12, **TINY)
    with pytest.raises(CheckpointError, match="num_classes differs: checkpoint 5, model 7"):
        load_pretrained(other, src.state_dict())
    with pytest.warns(UserWarning, match="classifiers were not loaded"):
        built = upernet("swin_tiny_patch4_window7_224", NCLS + 2, pretrained=src.state_dict(), channels=24,
                        aux_channels=12, **TINY)
    assert "decode_head.conv_seg.weight" in built.pretrained_result.initialized_keys
    assert torch.equal(built.decode_head.fpn_bottleneck.conv.weight, src.decode_head.fpn_bottleneck.conv.weight)
    assert_unchanged(m, snap)


def test_failed_loads_leave_the_model_unchanged():
    src = _randomize(_tiny())
    m = _tiny()
    snap = snapshot(m)
    bad_head = src.state_dict()
    bad_head["decode_head.fpn_convs.0.conv.weight"] = torch.randn(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match="fpn_convs.0.conv.weight"):
        load_pretrained(m, bad_head)
    bad_backbone = src.state_dict()  # the heads are fine, the backbone is not: nothing may be copied
    bad_backbone["backbone.patch_embed.proj.weight"] = torch.randn(16, 3, 8, 8)
    with pytest.raises(CheckpointError, match="patch_size"):
        load_pretrained(m, bad_backbone)
    nan = src.state_dict()
    nan["auxiliary_head.conv_seg.bias"] = torch.full((NCLS,), float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_pretrained(m, nan)
    missing = {k: v for k, v in src.state_dict().items() if not k.startswith("auxiliary_head.convs")}
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(m, missing)
    assert_unchanged(m, snap)
    res = load_pretrained(m, missing, strict=False)  # tolerated: reported, the rest loaded
    assert "auxiliary_head.convs.0.conv.weight" in res.missing_keys
    noaux = upernet(_tiny().backbone, NCLS, channels=24, aux=False)
    res = load_pretrained(noaux, src.state_dict())
    assert all(why == "the model has no auxiliary head" for k, why in res.ignored_keys.items()
               if k.startswith("auxiliary_head."))


# ----------------------------------------------------------------------------- metrics


def test_miou_by_hand():
    # 3 classes, 255 ignored.  Confusion (rows target, cols pred) over the 8 valid pixels:
    # class 0: target 3 px, pred 0,0,1 ; class 1: target 3 px, pred 1,1,2 ; class 2: target 2 px, pred 2,0
    target = torch.tensor([[0, 0, 0, 1, 255], [1, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 2], [1, 2, 2, 0, 1]])
    m = miou(pred, target, num_classes=3)
    # IoU0 = 2 / (3 + 3 - 2) = 1/2; IoU1 = 2 / (3 + 3 - 2) = 1/2; IoU2 = 1 / (2 + 2 - 1) = 1/3
    assert torch.allclose(m.iou, torch.tensor([0.5, 0.5, 1 / 3], dtype=torch.float64))
    assert math.isclose(m.miou, (0.5 + 0.5 + 1 / 3) / 3)
    assert math.isclose(m.pixel_accuracy, 5 / 8)
    assert m.confusion.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    # a class absent from both is NaN and left out of the mean
    m4 = miou(pred, target, num_classes=4)
    assert math.isnan(m4.iou[3]) and math.isclose(m4.miou, m.miou)
    acc = segmentation.SegmentationMetric(3)
    acc.update(pred[:1], target[:1])
    acc.update(pred[1:], target[1:])
    assert math.isclose(acc.compute().miou, m.miou)
    with pytest.raises(ValueError, match=r"pred holds labels \[3\]"):
        miou(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="argmax"):
        miou(torch.randn(2, 2), torch.zeros(2, 2, dtype=torch.long), 3)


# ----------------------------------------------------------------------------- export and the example


@pytest.mark.slow
def test_onnx_export_with_a_dynamic_batch(tmp_path):
    pytest.importorskip("onnxscript")
    rt = pytest.importorskip("onnxruntime")
    # a small graph (the export is the slow part): two stages, no auxiliary head
    body = swin_ext.SwinTransformer(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                                    features_only=True, out_indices=(0, 1))
    m = _randomize(upernet(body, NCLS, channels=16, aux=False), std=0.1).eval()
    path = str(tmp_path / "upernet.onnx")
    swin_ext.export_onnx(m, path, torch.randn(2, 3, 64, 48), dynamic_batch=True, check=True)
    sess = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 48)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = m(x)
        assert got.shape == tuple(want.shape) and rel_err(torch.from_numpy(got), want) <= 1e-4


@pytest.mark.slow
def test_segmentation_example_runs(tmp_path):
    import runpy

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "segmentation_finetune.py")
    mod = runpy.run_path(path, run_name="example")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mod["main"](["--steps", "1", "--batch", "2", "--img-size", "32", "--val-images", "1",
                           "--out-dir", str(tmp_path)])
    assert 0.0 <= res["miou"] <= 1.0 and os.path.getsize(res["png"]) > 0


def test_docs_segmentation_snippets_run(tmp_path, monkeypatch):
    """docs/segmentation.md's ```python snippets run as written (a tiny model: a few seconds)."""
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "segmentation.md")
    snippets = re.findall(r"^```python\n(.*?)^```", open(path).read(), flags=re.S | re.M)
    assert snippets
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(snippets):
        exec(compile(code, f"docs/segmentation.md snippet {i}", "exec"), {"__name__": "__docs__"})
