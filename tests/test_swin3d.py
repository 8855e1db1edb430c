"""Video Swin (``swin_ext.SwinTransformer3d``): parity with torchvision's ``swin3d``, its layout, conversion,
checkpoints of every video layout, the 2-D -> 3-D inflation, features_only."""
from __future__ import annotations

import functools
import os
import re

import pytest
import torch
import torch.nn as nn

import swin_ext
from swin_ext import CheckpointError, ConversionError, SwinTransformer3d

tvv = pytest.importorskip("torchvision.models.video.swin_transformer")

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
F64 = torch.float64

# A tiny Video Swin: window (4, 3, 3) shrinks and shifts on small clips as (8, 7, 7) does on real ones.
TINY = dict(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=[4, 3, 3],
            num_classes=7)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights far from the initialisation (biases, LayerNorm affines, bias tables too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.2 if p.dim() > 1 else 0.5))
    return model


def _built_fast(ctor, **kw) -> nn.Module:
    """``ctor(**kw)`` built on the meta device and given random weights on the CPU (skips the slow
    truncated-normal initialisation of a full-size model); the index buffers recomputed."""
    with torch.device("meta"):
        m = ctor(**kw)
    m = _randomize(m.to_empty(device="cpu"))
    for mod in m.modules():
        if isinstance(mod, tvv.ShiftedWindowAttention3d):
            mod.define_relative_position_index()
    return m


def _pair(dtype=F64, cfg=TINY, **kw):
    """torchvision's model with random weights and a swin_ext copy through its own state_dict."""
    tv = _randomize(tvv.SwinTransformer3d(**cfg)).to(dtype).eval()
    me = SwinTransformer3d(**cfg, **kw).to(dtype).eval()
    me.load_state_dict(tv.state_dict(), strict=True)
    return tv, me


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _logits_and_input_grad(model, x, cot):
    x = x.detach().clone().requires_grad_()
    y = model(x)
    (g,) = torch.autograd.grad(y, x, cot)
    return y, g


def _assert_matches(tv, me, clip, seed, classes):
    """Logits and input gradients of ``me`` within 1e-9 (relative) of torchvision's ``tv``, float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*clip, dtype=F64, generator=g)
    cot = torch.randn(clip[0], classes, dtype=F64, generator=g)
    want, gwant = _logits_and_input_grad(tv, x, cot)
    got, ggot = _logits_and_input_grad(me, x, cot)
    assert _rel(got, want) <= 1e-9 and _rel(ggot, gwant) <= 1e-9, (_rel(got, want), _rel(ggot, gwant))


# ----------------------------------------------------------------------------- parity with torchvision

# clip (B, C, T, H, W): T' <= wt (window shrinks, no temporal shift); odd T/H/W (padded on every axis, shifted,
# the late stages shrinking their windows); T' = 1.
CLIPS = [(2, 3, 8, 24, 24), (1, 3, 9, 37, 29), (1, 3, 2, 17, 45)]


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: "x".join(map(str, c[2:])))
def test_logits_and_input_grads_match_torchvision(clip, backend):
    tv, me = _pair(backend=backend)
    _assert_matches(tv, me, clip, 1, TINY["num_classes"])


def _bias_forms(model, clip, monkeypatch):
    """The dims of the ``bias`` each fused attention call of ``model(clip)`` gets (2: the table)."""
    import swin_ext.layers.attention as attention

    seen, op = [], attention._window_attention_op
    monkeypatch.setattr(attention, "_window_attention_op", lambda q, b, *a: seen.append(b.dim()) or op(q, b, *a))
    with torch.no_grad():
        model(torch.randn(*clip, dtype=F64))
    return seen


def test_the_table_goes_to_the_op_unless_the_index_is_not_the_standard_one(monkeypatch):
    """Full windows pass the table itself (the op reads the standard index); shrunk windows and a
    loaded or written non-standard index keep the gather, so the model still matches torchvision."""
    tv, me = _pair()
    clip = (1, 3, 8, 24, 24)  # stages 1-2 full windows, 3-4 shrunk to the map
    assert _bias_forms(me, clip, monkeypatch) == [2, 2, 2, 2, 3, 3, 3, 3]
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, tvv.ShiftedWindowAttention3d):
                mod.relative_position_index.copy_(mod.relative_position_index.flip(-1))  # another lookup
    me.load_state_dict(tv.state_dict())
    assert _bias_forms(me, clip, monkeypatch) == [3] * 8
    _assert_matches(tv, me, clip, 0, 7)
    with torch.no_grad():  # the standard index written back in place: the table again
        for mod in me.modules():
            if hasattr(mod, "relative_position_index") and hasattr(mod, "_takes_table"):
                mod.relative_position_index.copy_(mod.relative_position_index.flip(-1))
    assert _bias_forms(me, clip, monkeypatch) == [2, 2, 2, 2, 3, 3, 3, 3]


def test_swin3d_t_default_config_matches_torchvision():
    """torchvision's swin3d_t itself (window (8, 7, 7), N = 392) on a clip that shifts in time: T' = 9 > 8
    (padded to 16, shifted by 4), 8 x 8 tokens (padded to 14, shifted by 3), then shrinking windows."""
    tv = _built_fast(tvv.swin3d_t).to(F64).eval()
    with torch.device("meta"):
        me = swin_ext.swin3d_t()
    me = me.to_empty(device="cpu").to(F64).eval()
    me.load_state_dict(tv.state_dict(), strict=True)
    _assert_matches(tv, me, (1, 3, 18, 32, 32), 2, 400)


# swin3d_t's geometry (patch (2, 4, 4), window (8, 7, 7), four stages, a shifted block in each) at a width that
# keeps the default clip cheap: the windows, shifts, padding and masks depend on the clip, not on the width.
SWIN3D_T_NARROW = dict(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                       window_size=[8, 7, 7], stochastic_depth_prob=0.1, num_classes=11)


@pytest.mark.slow
def test_swin3d_t_geometry_at_the_default_clip_matches_torchvision():
    """The default Kinetics clip, 32 x 224 x 224 (tokens 16 x 56 x 56: every stage shifted in time, the last
    one's 7 x 7 map with its window clamped and unshifted in space), float64, at swin3d_t's geometry."""
    tv, me = _pair(cfg=SWIN3D_T_NARROW)
    _assert_matches(tv, me, (1, 3, 32, 224, 224), 3, SWIN3D_T_NARROW["num_classes"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SWIN_EXT_FULL_SIZE"),
                    reason="minutes on 2 cores: set SWIN_EXT_FULL_SIZE=1 (the narrow test above covers the geometry)")
def test_swin3d_t_at_the_default_clip_matches_torchvision():
    """swin3d_t itself at the default Kinetics clip, 32 x 224 x 224 (tokens 16 x 56 x 56), float64."""
    tv = _built_fast(tvv.swin3d_t).to(F64).eval()
    me = swin_ext.swin3d_t().to(F64).eval()
    me.load_state_dict(tv.state_dict(), strict=True)
    _assert_matches(tv, me, (1, 3, 32, 224, 224), 3, 400)


def test_training_step_gradients_match_torchvision_float32():
    """A training step (dropouts off, stochastic depth off): every parameter's gradient, float32."""
    tv, me = _pair(torch.float32)
    tv.train(), me.train()
    for m in (tv, me):
        for mod in m.modules():
            if hasattr(mod, "p") and isinstance(mod.p, float):
                mod.p = 0.0  # torchvision's StochasticDepth
            if hasattr(mod, "drop_prob"):
                mod.drop_prob = 0.0
    x = torch.randn(2, 3, 9, 37, 29)
    for m in (tv, me):
        m.zero_grad()
        m(x).logsumexp(-1).sum().backward()
    tg = dict(tv.named_parameters())
    for name, p in me.named_parameters():
        torch.testing.assert_close(p.grad, tg[name].grad, rtol=2e-4, atol=2e-5, msg=name)


# ----------------------------------------------------------------------------- layout and constructors


def test_state_dict_is_torchvisions_both_ways():
    with torch.device("meta"):
        a, b = tvv.swin3d_t().state_dict(), swin_ext.swin3d_t().state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    tv, me = tvv.SwinTransformer3d(**TINY), SwinTransformer3d(**TINY)
    a, b = tv.state_dict(), me.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a if k.endswith("relative_position_index"))
    tv.load_state_dict(_randomize(me).state_dict(), strict=True)


@pytest.mark.parametrize("name,params", [("swin3d_t", 28158070), ("swin3d_s", 49816678), ("swin3d_b", 88048984)])
def test_constructors_have_torchvisions_parameter_counts(name, params):
    with torch.device("meta"):
        m = getattr(swin_ext, name)()
    assert sum(p.numel() for p in m.parameters()) == params  # torchvision's metadata


@pytest.mark.parametrize("kw,exc,match", [
    (dict(norm_layer=nn.BatchNorm1d), ValueError, "norm_layer must build an nn.LayerNorm"),
    (dict(block=nn.Identity), ValueError, "block=.*is not supported"),
    (dict(window_size=[8, 7]), ValueError, "window_size must have 3 entries"),
    (dict(num_heads=[2, 3, 4, 4]), ValueError, "num_heads\\[1\\]=3 does not divide"),
    (dict(stochastic_depth_prob=1.0), ValueError, "stochastic_depth_prob"),
])
def test_constructor_refuses(kw, exc, match):
    cfg = dict(TINY, **kw)
    with pytest.raises(exc, match=match):
        SwinTransformer3d(**cfg)


def test_torchvision_weights_enum_is_refused_not_downloaded():
    with pytest.raises(TypeError, match="downloads nothing"):
        swin_ext.swin3d_t(weights=tvv.Swin3D_T_Weights.KINETICS400_V1)


def test_input_checks():
    m = SwinTransformer3d(**TINY)
    with pytest.raises(ValueError, match=r"input must be \(B, 3, T, H, W\)"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 4, 2, 32, 32))


# ----------------------------------------------------------------------------- conversion and checkpoints


def test_from_torchvision_reproduces_the_model():
    tv = _randomize(tvv.SwinTransformer3d(**TINY, dropout=0.1, attention_dropout=0.05,
                                          norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))).double().eval()
    me = swin_ext.from_torchvision(tv)
    assert isinstance(me, SwinTransformer3d) and not me.training and next(me.parameters()).dtype == F64
    assert {m.eps for m in me.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    assert me.features[0][1].attn.attention_dropout == 0.05 and me.pos_drop.p == 0.1
    x = torch.randn(1, 3, 9, 37, 29, dtype=F64)
    assert _rel(me(x), tv(x)) <= 1e-9


def test_from_torchvision_refuses_what_it_cannot_reproduce():
    tv = tvv.SwinTransformer3d(**TINY)
    tv.features[0][1].attn.shift_size = [0, 0, 0]
    with pytest.raises(ConversionError, match="shift_size"):
        swin_ext.from_torchvision(tv)


def _official(sd, mmaction2: bool):
    """torchvision's keys in the official Video Swin / mmaction2 recognizer layout."""
    out = {}
    for k, v in sd.items():
        if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", k):
            rest = m.group(3).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            out[f"backbone.layers.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{rest}"] = v
        elif m := re.fullmatch(r"features\.(\d+)\.(.+)", k):
            out[f"backbone.layers.{int(m.group(1)) // 2}.downsample.{m.group(2)}"] = v
        elif k.startswith("head."):
            out["cls_head.fc_cls." + k[5:]] = v
        elif k.startswith("norm."):
            out[("backbone.norm3." if mmaction2 else "backbone.norm.") + k[5:]] = v
        else:
            out["backbone." + k] = v
    return {"meta": {"epoch": 30}, "state_dict": out}


@pytest.mark.parametrize("layout", ["torchvision", "official", "mmaction2"])
def test_load_pretrained_video_layouts(layout, tmp_path):
    tv = _randomize(tvv.SwinTransformer3d(**TINY)).eval()
    sd = tv.state_dict() if layout == "torchvision" else _official(tv.state_dict(), layout == "mmaction2")
    path = tmp_path / "ck.pth"
    torch.save(sd, path)
    me = SwinTransformer3d(**TINY).eval()
    r = swin_ext.load_pretrained(me, str(path))
    assert not r.missing_keys and not r.unexpected_keys and r.new_head is None
    x = torch.randn(1, 3, 9, 37, 29)
    torch.testing.assert_close(me(x), tv(x), rtol=1e-4, atol=1e-5)


def test_failed_video_load_leaves_the_model_unchanged():
    me = SwinTransformer3d(**TINY)
    before = {k: v.clone() for k, v in me.state_dict().items()}
    other = tvv.SwinTransformer3d(**dict(TINY, window_size=[2, 3, 3])).state_dict()
    with pytest.raises(CheckpointError, match="3-D bias tables are not resized"):
        swin_ext.load_pretrained(me, other)
    other = tvv.SwinTransformer3d(**dict(TINY, num_classes=5)).state_dict()
    with pytest.raises(CheckpointError, match="num_classes differs"):
        swin_ext.load_pretrained(me, other)
    assert all(torch.equal(v, before[k]) for k, v in me.state_dict().items())
    with pytest.warns(UserWarning, match="head was not loaded"):
        r = swin_ext.load_pretrained(me, other, strict=False)
    assert r.new_head and set(r.initialized_keys) == {"head.weight", "head.bias"}


def _official_inflate(sd2d, window, patch_t):
    """The official Video Swin ``inflate_weights``, written out (no resize: the 2-D window is the model's)."""
    out = {k: v for k, v in sd2d.items() if "relative_position_index" not in k and "attn_mask" not in k}
    out["patch_embed.proj.weight"] = out["patch_embed.proj.weight"].unsqueeze(2).repeat(1, 1, patch_t, 1, 1) / patch_t
    for k in [k for k in out if "relative_position_bias_table" in k]:
        out[k] = out[k].repeat(2 * window[0] - 1, 1)
    return out


def test_inflated_image_model_reproduces_it_on_a_static_clip():
    """The official 2-D -> 3-D inflation (Video Swin's initialisation): on a clip of identical frames the
    inflated model's pooled features are the image model's (window 3 on 48 x 48: 12, 6, 3 tokens)."""
    cfg2d = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=3, num_classes=10)
    m2d = _randomize(swin_ext.SwinTransformer(**cfg2d)).double().eval()
    m3d = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4],
                            window_size=[2, 3, 3], num_classes=5).double().eval()
    r = swin_ext.load_pretrained(m3d, m2d.state_dict())
    assert r.format.endswith("(inflated)") and r.new_head and not r.missing_keys
    img = torch.randn(1, 3, 48, 48, dtype=F64)
    clip = img[:, :, None].expand(1, 3, 8, 48, 48)  # T' = 4 > 2: shifted in time
    want = m2d.forward_head(m2d.forward_features(img), pre_logits=True)
    got = m3d.forward_head(m3d.forward_features(clip), pre_logits=True)
    assert _rel(got, want) <= 1e-9
    # ... and the values are the official code's
    off = _official_inflate(m2d.state_dict(), (2, 3, 3), 2)  # swin_ext's 2-D keys are the official ones
    sd3 = m3d.state_dict()
    torch.testing.assert_close(sd3["patch_embed.proj.weight"], off["patch_embed.proj.weight"])
    torch.testing.assert_close(sd3["features.2.1.attn.relative_position_bias_table"],
                               off["layers.1.blocks.1.attn.relative_position_bias_table"])


def test_inflation_resizes_tables_bicubically():
    m2d = swin_ext.SwinTransformer(embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=5)
    m3d = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                            window_size=[4, 3, 3])
    r = swin_ext.load_pretrained(m3d, m2d.state_dict())
    assert len(r.resized_keys) == 4
    t2 = m2d.state_dict()["layers.0.blocks.0.attn.relative_position_bias_table"]
    want = torch.nn.functional.interpolate(t2.permute(1, 0).view(1, 2, 9, 9), size=(5, 5), mode="bicubic")
    want = want.view(2, 25).permute(1, 0).repeat(7, 1)
    torch.testing.assert_close(m3d.state_dict()["features.0.0.attn.relative_position_bias_table"], want)


# ----------------------------------------------------------------------------- features_only


def test_features_only_backbone():
    tv, _ = _pair(torch.float32)
    me = SwinTransformer3d(**TINY, features_only=True, out_indices=(0, 2)).eval()
    r = swin_ext.load_pretrained(me, tv.state_dict())
    assert set(r.initialized_keys) == {"norm0.weight", "norm0.bias", "norm2.weight", "norm2.bias"}
    assert me.out_channels == [16, 64] and me.head is None and me.norm is None
    x = torch.randn(1, 3, 9, 37, 29)
    feats = me(x)
    # torchvision's modules, run stage by stage
    with torch.no_grad():
        y = tv.patch_embed(x)
        maps = []
        for i, m in enumerate(tv.features):
            y = m(y)
            if i % 2 == 0:
                maps.append(y)
    for f, i in zip(feats, (0, 2)):
        want = getattr(me, f"norm{i}")(maps[i]).permute(0, 4, 1, 2, 3)
        assert f.shape == want.shape
        torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-5)


def test_compiles_in_one_graph_forward_and_backward():
    """torch.compile(fullgraph=True) takes the video model whole (no graph break at the merging or the
    bias cache) and gives eager's logits and gradients."""
    torch.manual_seed(0)
    m = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[2, 3, 3],
                          num_classes=5, stochastic_depth_prob=0.0)  # train mode: no random drop path
    x = torch.randn(1, 3, 4, 24, 24)
    torch._dynamo.reset()
    cm = torch.compile(m, fullgraph=True)
    out = cm(x)
    out.square().sum().backward()
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    want = m(x)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for g, p in zip(got, m.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    assert any(p.grad.abs().sum() > 0 for p in m.parameters())


# ----------------------------------------------------------------------------- the CUDA kernels, under the harness


@pytest.mark.slow
def test_swin3d_t_on_the_cuda_kernels_under_the_harness():
    """swin3d_t's window (8, 7, 7) and patch 2 x 4 x 4 at a tiny width (head_dim 16; heads 1 / 2 / 4 / 8,
    a third of swin3d_t's: the harness runs every thread as a fiber) and clip, its window attention on the
    CUDA kernel sources run by the CPU harness (float64: the SIMT kernels): stage 1 is N = 392, shifted and
    padded on every axis (27 regions); the later stages shrink the window on H / W.  Logits and input
    gradients equal the reference backend's (plain PyTorch)."""
    import op_testing

    hops = op_testing.harness_ops()
    cfg = dict(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
               window_size=[8, 7, 7], num_classes=5)
    ref = _randomize(SwinTransformer3d(**cfg, backend="reference")).to(F64).eval()
    fused = SwinTransformer3d(**cfg).to(F64).eval()
    fused.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 18, 32, 32, dtype=F64, generator=g)  # stage 1: 9 x 8 x 8 tokens, padded to 16 x 14 x 14
    cot = torch.randn(1, 5, dtype=F64, generator=g)
    want, gwant = _logits_and_input_grad(ref, x, cot)
    calls = []

    def on_harness(name):
        def run(*args):
            calls.append(name)
            return getattr(hops, name)(*args)
        return run

    # The harness kernels as swin_ext's CPU kernels of the two raw ops, for this test only.
    lib = torch.library.Library("swin_ext", "IMPL")
    try:
        for name in ("window_attention_fwd", "window_attention_bwd"):
            lib.impl(name, on_harness(name), "CPU")
        got, ggot = _logits_and_input_grad(fused, x, cot)
    finally:
        lib._destroy()
    assert calls.count("window_attention_fwd") == 8 and calls.count("window_attention_bwd") == 8, calls
    assert _rel(got, want) <= 1e-9 and _rel(ggot, gwant) <= 1e-9, (_rel(got, want), _rel(ggot, gwant))
