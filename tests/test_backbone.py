"""The model as a detection/segmentation backbone: forward_intermediates and
features_only, at any input size, against timm, torchvision and transformers."""
import copy
import math

import pytest
import torch

import swin_ext
from swin_ext import CheckpointError, SwinTransformer, create_model, load_pretrained

from swin_test_utils import DEPTHS, EMBED, HEADS, WINDOW, randomize, rel_err, small

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

CHANNELS = [32, 64, 128, 256]
STRIDES = [4, 8, 16, 32]


def expected_shapes(B, H, W, channels=CHANNELS, strides=STRIDES):
    return [(B, c, math.ceil(H / s), math.ceil(W / s)) for c, s in zip(channels, strides)]


# ----------------------------------------------------------------------------- forward_intermediates


# (200, 333) is an 800x1333 detection input scaled down 4x; none of these is window-divisible.
@pytest.mark.parametrize("size", [(200, 333), (61, 77), (30, 18)])
def test_forward_intermediates_strides_any_size(size):
    m = small().eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        final, feats = m.forward_intermediates(x)
        assert [tuple(f.shape) for f in feats] == expected_shapes(1, *size)
        assert all(f.is_contiguous() for f in feats)
        torch.testing.assert_close(final, m.forward_features(x), rtol=0, atol=0)
        # the last stage normed by the final norm is what forward_features returns (NCHW)
        _, normed = m.forward_intermediates(x, norm=True)
        torch.testing.assert_close(normed[-1], final.permute(0, 3, 1, 2), rtol=0, atol=0)
        torch.testing.assert_close(normed[0], feats[0], rtol=0, atol=0)


def test_forward_intermediates_options():
    m = small().eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        _, allf = m.forward_intermediates(x)
        _, last2 = m.forward_intermediates(x, indices=2)
        assert [f.shape for f in last2] == [f.shape for f in allf[2:]]
        sel = m.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        assert len(sel) == 2 and torch.equal(sel[0], allf[0]) and torch.equal(sel[1], allf[3])
        nhwc = m.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        for a, b in zip(nhwc, allf):
            assert torch.equal(a.permute(0, 3, 1, 2), b)
        final, early = m.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early[0], allf[1])
        assert final.shape == (2, 12, 20, 64)  # stage 1's map, not merged further, no final norm
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(x, output_fmt="NLC")
    for bad in (5, 0, [4], [], [-5]):
        with pytest.raises(ValueError, match="indices"):
            m.forward_intermediates(x, indices=bad)
    with pytest.raises(TypeError, match="indices"):
        m.forward_intermediates(x, indices=1.5)
    with pytest.raises(ValueError, match="channels"):
        m.forward_intermediates(torch.randn(1, 4, 32, 32))


def test_forward_intermediates_backward():
    m = small()
    x = torch.randn(1, 3, 52, 68, requires_grad=True)
    feats = m.forward_intermediates(x, intermediates_only=True)
    sum(f.square().mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert m.layers[3].blocks[1].attn.qkv.weight.grad is not None
    assert m.norm.weight.grad is None  # norm=False: the final norm is not used


def test_forward_intermediates_matches_timm():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=EMBED, depths=DEPTHS,
                            num_heads=HEADS, num_classes=5)
    ref = randomize(ref).double().eval()
    m = small().double().eval()
    load_pretrained(m, ref.state_dict())
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        for kw in (dict(norm=True), dict(indices=[0, 2], stop_early=True)):
            f_ours, i_ours = m.forward_intermediates(x, **kw)
            f_ref, i_ref = ref.forward_intermediates(x, **kw)
            assert len(i_ours) == len(i_ref)
            for a, b in zip(i_ours, i_ref):
                assert a.shape == b.shape and rel_err(a, b) <= 1e-9, kw
            assert f_ours.shape == f_ref.shape and rel_err(f_ours, f_ref) <= 1e-9, kw


def test_forward_intermediates_matches_torchvision_stages_non_divisible():
    tvs = pytest.importorskip("torchvision.models.swin_transformer")
    ref = tvs.SwinTransformer(patch_size=[4, 4], embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS),
                              window_size=[WINDOW, WINDOW], num_classes=5)
    ref = randomize(ref).double().eval()
    m = small().double().eval()
    load_pretrained(m, ref.state_dict())
    x = torch.randn(1, 3, 100, 132, dtype=torch.float64)
    with torch.no_grad():
        ours = m.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        y = ref.features[0](x)
        for i in range(4):
            y = ref.features[2 * i + 1](y)  # stage i's blocks
            assert ours[i].shape == y.shape and rel_err(ours[i], y) <= 1e-9, i
            if i < 3:
                y = ref.features[2 * i + 2](y)  # merging


# ----------------------------------------------------------------------------- features_only


def test_features_only_layout_and_keys():
    m = small(features_only=True)
    sd = m.state_dict()
    for i in range(4):
        assert sd[f"norm{i}.weight"].shape == (CHANNELS[i],)
    assert not any(k.startswith(("norm.", "head.")) for k in sd)
    assert m.norm is None and m.head is None and m.num_classes == 0
    assert "layers.2.downsample.reduction.weight" in sd  # the trunk keeps the official keys
    assert m.out_indices == (0, 1, 2, 3) and m.out_channels == CHANNELS
    assert [f["reduction"] for f in m.feature_info] == STRIDES
    with pytest.raises(RuntimeError, match="no head"):
        m.forward_head(torch.randn(1, 7, 7, 256))

    sub = small(features_only=True, out_indices=(1, -1))
    assert sub.out_indices == (1, 3) and sub.out_channels == [64, 256]
    assert {k.split(".")[0] for k in sub.state_dict() if k.startswith("norm")} == {"norm1", "norm3"}
    for bad in ((4,), (), (0, 7)):
        with pytest.raises(ValueError, match="out_indices"):
            small(features_only=True, out_indices=bad)
    cfg = dict(image_size=224, embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS), window_size=7,
               features_only=True, out_indices=[2, 3])
    assert SwinTransformer(cfg).out_indices == (2, 3)


@pytest.mark.parametrize("size", [(200, 333), (120, 200), (64, 64)])
def test_features_only_forward_any_size(size):
    cls = randomize(small()).eval()
    m = small(features_only=True).eval()
    res = load_pretrained(m, cls.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = m(x)
        raw = cls.forward_intermediates(x, intermediates_only=True)
    assert isinstance(feats, list) and [tuple(f.shape) for f in feats] == expected_shapes(2, *size)
    for i, (f, r) in enumerate(zip(feats, raw)):
        want = getattr(m, f"norm{i}")(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(f, want, rtol=1e-6, atol=1e-6)
    assert set(res.initialized_keys) == {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def test_features_only_out_indices_subset_stops_early():
    m = randomize(small(features_only=True, out_indices=(0, 1))).eval()
    m.layers[2].forward_blocks = None  # would fail if called: the stages after the last output do not run
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        feats = m(x)
    assert [tuple(f.shape) for f in feats] == expected_shapes(1, 72, 100)[:2]
    with pytest.raises(ValueError, match="no output norm"):
        randomize(small(features_only=True, out_indices=(0, 1))).forward_intermediates(x, indices=[2], norm=True)


def test_features_only_training_backward_fused_equals_reference():
    m = randomize(small(features_only=True), std=0.1).double()
    r = copy.deepcopy(m).set_backend("reference")
    x = torch.randn(2, 3, 60, 92, dtype=torch.float64)
    outs = []
    for model in (m, r):
        feats = model(x)
        loss = sum((f * torch.linspace(-1, 1, f.shape[1], dtype=f.dtype)[None, :, None, None]).sum() for f in feats)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        outs.append((feats, grads))
    for a, b in zip(outs[0][0], outs[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert outs[0][1][-1].abs().sum() > 0  # norm3.bias gets a gradient


def test_classification_checkpoint_into_backbone_strict():
    cls = randomize(small())
    m = small(features_only=True)
    res = load_pretrained(m, cls.state_dict(), strict=True)
    assert not res.missing_keys and not res.unexpected_keys and res.new_head is None
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} <= set(res.ignored_keys)
    assert torch.equal(m.layers[3].blocks[1].mlp.fc1.weight, cls.layers[3].blocks[1].mlp.fc1.weight)
    # ... but the architecture must still match
    with pytest.raises(CheckpointError, match="embed_dim"):
        load_pretrained(small(features_only=True, embed_dim=64, num_heads=(2, 4, 8, 16)), cls.state_dict())


def test_detection_checkpoint_with_backbone_prefix():
    # The official detection repo / mmdet save the backbone under "backbone." next to neck and heads.
    src = randomize(small(features_only=True))
    sd = {"backbone." + k: v for k, v in src.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.randn(16, 32, 1, 1)
    sd["rpn_head.rpn_cls.weight"] = torch.randn(3, 16, 1, 1)
    m = small(features_only=True, out_indices=(1, 2, 3))
    res = load_pretrained(m, {"state_dict": sd, "meta": {"epoch": 12}})
    assert res.format == "official" and not res.missing_keys and not res.unexpected_keys
    assert "neck.lateral_convs.0.conv.weight" in res.ignored_keys
    assert "backbone.norm0.weight" in res.ignored_keys  # stage 0 is not an output of this backbone
    for i in (1, 2, 3):
        assert torch.equal(getattr(m, f"norm{i}").weight, getattr(src, f"norm{i}").weight)
    assert not res.initialized_keys


def test_transformers_swin_backbone_parity():
    # SwinBackbone (hidden_states_norms.stageN -> norm{N-1}).  It always shifts, even on a map no
    # larger than the window (always_partition); we do not shift there (torchvision's and the
    # official classifier's rule), so compare at a size where every stage map exceeds the window.
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SwinConfig(image_size=224, patch_size=4, embed_dim=EMBED, depths=list(DEPTHS),
                                  num_heads=list(HEADS), window_size=4, drop_path_rate=0.0,
                                  out_features=["stage1", "stage2", "stage3", "stage4"])
    ref = randomize(transformers.SwinBackbone(cfg)).double().eval()
    m = small(features_only=True, window_size=4).double().eval()
    res = load_pretrained(m, ref.state_dict())
    assert res.format == "transformers" and not res.missing_keys and not res.initialized_keys
    x = torch.randn(1, 3, 200, 264, dtype=torch.float64)  # maps 50x66, 25x33, 13x17, 7x9: none window-divisible
    with torch.no_grad():
        want = ref(pixel_values=x).feature_maps
        got = m(x)
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-9


def test_create_model_backbone_full_size_meta():
    with torch.device("meta"):
        m = create_model("swin_tiny_patch4_window7_224", features_only=True)
        feats = m(torch.empty(2, 3, 800, 1333))
    assert m.out_channels == [96, 192, 384, 768]
    assert [tuple(f.shape) for f in feats] == expected_shapes(2, 800, 1333, [96, 192, 384, 768])
    assert feats[0].shape == (2, 96, 200, 334) and feats[3].shape == (2, 768, 25, 42)
