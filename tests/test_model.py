"""The Swin model: sizes, FLOPs, backends, compile, bad configs and inputs."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import swin_ext
from swin_ext import SwinTransformer, swin_b, swin_l, swin_s, swin_t

from swin_test_utils import randomize, small

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

TINY = dict(
    img_size=64, patch_size=4, embed_dim=12, depths=(2, 2, 2), num_heads=(1, 2, 3), window_size=4, num_classes=7
)


def tiny(**kw):
    cfg = dict(TINY)
    cfg.update(kw)
    return SwinTransformer(**cfg)


@pytest.mark.parametrize(
    "factory,params,gflops",
    [(swin_t, 28_288_354, 4.5), (swin_s, 49_606_258, 8.7), (swin_b, 87_768_224, 15.4), (swin_l, 196_532_476, 34.5)],
)
def test_parameter_count_and_flops(factory, params, gflops):
    with torch.device("meta"):
        m = factory()
    assert sum(p.numel() for p in m.parameters()) == params
    assert round(m.flops() / 1e9, 1) == gflops


def test_swin_t_flops_exact():
    with torch.device("meta"):
        assert swin_t().flops() == 4_494_405_120  # the official code's count


def test_state_dict_keys_official_layout():
    with torch.device("meta"):
        sd = swin_t().state_dict()
    assert "layers.0.downsample.reduction.weight" in sd and "layers.2.downsample.norm.weight" in sd
    assert "layers.3.downsample.reduction.weight" not in sd
    assert "layers.0.blocks.1.attn.relative_position_bias_table" in sd
    assert "head.weight" in sd and "norm.weight" in sd and "patch_embed.proj.weight" in sd
    assert "layers.2.blocks.5.mlp.fc2.bias" in sd
    assert not any("relative_position_index" in k or "attn_mask" in k for k in sd)
    assert len(sd) == 173


def test_config_dict_constructor():
    cfg = dict(
        image_size=64,
        patch_size=4,
        in_channels=3,
        num_classes=5,
        embed_dim=12,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        mlp_ratio=4.0,
        dropout=0.0,
        drop_path_rate=0.1,
        use_checkpoint=False,
    )
    m = SwinTransformer(cfg)
    assert m.num_classes == 5 and m.depths == (2, 2) and m.window_size == 4
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown config keys"):
        SwinTransformer(dict(cfg, bogus=1))


@pytest.mark.parametrize("size", [(64, 64), (60, 44), (36, 100), (8, 8), (5, 7)])
def test_fused_equals_reference_float64(size):
    m = tiny(drop_path_rate=0.0).double().eval()
    r = copy.deepcopy(m).set_backend("reference")
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    out_f, out_r = m(x), r(x)
    torch.testing.assert_close(out_f, out_r, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out_f)
    gf = torch.autograd.grad(out_f, [x] + list(m.parameters()), g)
    gr = torch.autograd.grad(out_r, [x] + list(r.parameters()), g)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("size", [(36, 100), (5, 7)])
def test_always_partition_shifts_every_map_fused_equals_reference(size):
    # every shifted block shifts also a map padded to one window (36 x 100: the last stage's 3 x 7 map along H; 5 x 7:
    # every stage): another model than the default one, and the kernel's mask agrees with the reference's
    m = tiny(drop_path_rate=0.0, always_partition=True).double().eval()
    blk = m.layers[0].blocks[1]
    assert blk.effective_shift(4, 4) == (blk.shift_size,) * 2 and blk.shift_size > 0
    default = tiny(drop_path_rate=0.0).double().eval()
    default.load_state_dict(m.state_dict())
    r = copy.deepcopy(m).set_backend("reference")
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    out_f, out_r = m(x), r(x)
    assert not torch.allclose(out_f, default(x), atol=1e-6)
    torch.testing.assert_close(out_f, out_r, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out_f)
    gf = torch.autograd.grad(out_f, [x] + list(m.parameters()), g)
    gr = torch.autograd.grad(out_r, [x] + list(r.parameters()), g)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_forward_features_shape():
    m = tiny().eval()
    f = m.forward_features(torch.randn(2, 3, 64, 64))
    assert f.shape == (2, 4, 4, 48)  # H/16 for 3 stages (two merges) after patch 4
    with torch.device("meta"):
        t = swin_t()
    assert t.forward_features(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 7, 7, 768)


def test_channels_last_input():
    m = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), m(x))


def test_batch_zero():
    m = tiny().eval()
    out = m(torch.randn(0, 3, 64, 64))
    assert out.shape == (0, 7)


def test_nan_sample_is_isolated():
    m = tiny().eval()
    x = torch.randn(3, 3, 64, 64)
    x[1, 0, 5, 5] = float("nan")
    out = m(x)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    torch.testing.assert_close(out[0], m(x[:1])[0])


def _count_onednn(monkeypatch, enabled=True):
    """Records every oneDNN GEMM of swin_ext.layers.fast_linear: "gelu" (fc1 + GELU epilogue) or "none".
    The oneDNN paths are switched on (as SWIN_EXT_ONEDNN_MLP=1), whatever this CPU's default; ``enabled``
    None leaves them to the CPU's default."""
    import swin_ext.layers.fast_linear as L

    monkeypatch.setattr(swin_ext.layers.config, "_ONEDNN_ENABLED", enabled)
    calls = []
    real = L._lp

    def lp(x2d, weight, bias, act="none"):
        calls.append(act)
        return real(x2d, weight, bias, act)

    monkeypatch.setattr(L, "_lp", lp)
    return calls


def test_cpu_inference_gemm_epilogues_match_plain_path(monkeypatch):
    if not swin_ext.layers.onednn_available():
        pytest.skip("oneDNN linear+GELU op not available in this torch build")
    calls = _count_onednn(monkeypatch)
    m = tiny(drop_rate=0.1).eval()
    x = torch.randn(3, 3, 60, 52)  # padded windows, odd merge sizes
    blocks, merges = sum(TINY["depths"]), len(TINY["depths"]) - 1
    with torch.no_grad():
        fast = m(x)
        # per block: fc1 + GELU in one GEMM; qkv, proj, fc2 and each merge's reduction on oneDNN
        assert calls.count("gelu") == blocks and calls.count("none") == 3 * blocks + merges
        m.set_backend("reference")  # plain PyTorch through the same weights
        plain = m(x)
        m.set_backend("fused")
    assert len(calls) == 4 * blocks + merges
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    # the batch-0 and NaN-isolation guarantees hold on this path too
    with torch.inference_mode():
        assert m(torch.randn(0, 3, 64, 64)).shape == (0, 7)
        x[1, 0, 5, 5] = float("nan")
        out = m(x)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


def test_cpu_inference_mlp_in_row_chunks(monkeypatch):
    """A large hidden map runs fc1 + GELU -> fc2 in row chunks (layers.mlp_inference): the same logits
    as one GEMM per Linear, more GEMMs; never with autograd recording or an active dropout."""
    if not swin_ext.layers.onednn_available():
        pytest.skip("oneDNN linear+GELU op not available in this torch build")
    import swin_ext.layers.fast_linear as L

    calls = _count_onednn(monkeypatch)
    m = tiny(drop_rate=0.1).eval()
    randomize(m)
    x = torch.randn(3, 3, 60, 52)
    blocks, merges = sum(TINY["depths"]), len(TINY["depths"]) - 1
    with torch.inference_mode():
        whole = m(x)
        assert calls.count("gelu") == blocks
        calls.clear()
        # every MLP chunks, into pieces of at most 19,200 bytes of hidden map
        monkeypatch.setattr(L, "MLP_CHUNK_MIN_BYTES", 0)
        monkeypatch.setattr(L, "MLP_CHUNK_BYTES", 4 * 48 * 100)
        chunked = m(x)
    gelu = calls.count("gelu")
    # two blocks a stage of 3 * 15 * 13, 3 * 8 * 7 and 3 * 4 * 4 tokens, hidden 48, 96, 144 floats
    assert gelu == 2 * sum(-(-t * h * 4 // 19200) for t, h in ((585, 48), (168, 96), (48, 144))) == 24
    assert calls.count("none") == 2 * blocks + merges + gelu  # qkv, proj; fc2 once per chunk
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    # no chunks where a gradient is recorded (nor the epilogue), dropout is active (one epilogue GEMM
    # per MLP), or the oneDNN paths are switched off (no oneDNN GEMM)
    for setup, gelu in (("grad", 0), ("train", blocks), ("off", 0)):
        calls.clear()
        m.eval().set_cpu_inference_fusion(setup != "off")
        if setup == "train":
            m.train()
        with torch.no_grad() if setup != "grad" else torch.enable_grad():
            m(x)
        assert calls.count("gelu") == gelu and (setup != "off" or not calls), setup
    m.set_cpu_inference_fusion(True).eval()
    with torch.inference_mode():  # one image: fewer rows, other chunk boundaries, the same logits
        torch.testing.assert_close(m(x[:1]), whole[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_cpu_inference_stages_in_image_chunks(kind, monkeypatch):
    """A large stage map in CPU inference runs a few images at a time (layers.chunking): the same logits
    and features as the whole batch at once; never with grad on, in train mode, on the reference
    backend or in float64."""
    import swin_ext.layers.chunking as CH
    from swin_ext import SwinTransformerV2

    if kind == "v1":
        m = tiny(drop_path_rate=0.1)
    else:
        m = SwinTransformerV2(img_size=64, embed_dim=12, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=7)
    randomize(m)
    m.eval()
    x = torch.randn(5, 3, 60, 52)
    calls = []
    for blk in m.layers[0].blocks:
        blk.register_forward_hook(lambda mod, i, o: calls.append(i[0].shape[0]))
    with torch.inference_mode():
        whole, feats = m(x), m.forward_features(x)
    assert calls == [5] * 2 * len(m.layers[0].blocks)
    calls.clear()
    per_image = 15 * 13 * 12 * 4  # stage 1: 15 x 13 tokens of 12 float32 channels
    monkeypatch.setattr(CH, "STAGE_CHUNK_MIN_BYTES", 0)
    monkeypatch.setattr(CH, "STAGE_CHUNK_BYTES", 2 * per_image)  # two images a chunk: 2 + 2 + 1
    with torch.inference_mode():
        chunked, chunked_feats = m(x), m.forward_features(x)
    depth = len(m.layers[0].blocks)
    assert calls == [c for c in (2, 2, 1) for _ in range(depth)] * 2
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked_feats, feats, rtol=1e-6, atol=1e-6)
    for setup in ("grad", "train", "reference", "float64"):
        calls.clear()
        m.eval().set_backend("fused").float()
        if setup == "train":
            m.train()
        if setup == "reference":
            m.set_backend("reference")
        with torch.enable_grad() if setup == "grad" else torch.no_grad():
            m.double()(x.double()) if setup == "float64" else m(x)
        assert calls == [5] * len(m.layers[0].blocks), setup


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_drop_path_is_timms(dtype):
    """Stochastic depth draws and scales as timm's drop_path: the same bits forward and backward from the
    same seed (every dtype), one multiply over x; rate 1 drops every sample (no 0 / 0)."""
    timm_drop = pytest.importorskip("timm.layers.drop")
    from swin_ext.layers.drop import DropPath

    x = torch.randn(64, 5, 6, 7, dtype=dtype)
    g = torch.randn_like(x)
    for rate in (0.1, 0.5, 0.93):
        ours, theirs = DropPath(rate), timm_drop.DropPath(rate)
        outs = []
        for mod in (ours, theirs):
            torch.manual_seed(7)
            xi = x.clone().requires_grad_()
            y = mod.train()(xi)
            outs.append((y, torch.autograd.grad(y, xi, g)[0]))
        (y, gx), (ty, tgx) = outs
        assert torch.equal(y, ty) and torch.equal(gx, tgx), rate
        kept = (y.flatten(1) != 0).any(1)
        assert 0 < int(kept.sum()) < x.shape[0]  # some samples dropped, some kept
        assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
        scale = torch.tensor(1.0, dtype=dtype) / (1.0 - rate)  # the mask's scale, rounded to the dtype
        torch.testing.assert_close(y[kept], x[kept] * scale, rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(DropPath(1.0).train()(x), torch.zeros_like(x))
        assert DropPath(0.5).eval()(x) is x and DropPath(0.0).train()(x) is x


def test_inactive_dropouts_are_not_called():
    """The blocks skip the module call of a dropout / stochastic depth that cannot change its input
    (eval, or rate 0: layers.drop.maybe_drop), and call every active one, as nn.Module would."""
    import torch.nn as nn

    from swin_ext.layers.drop import DropPath

    def count_calls(model):
        calls = []
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Dropout, DropPath)) and name != "pos_drop":
                mod.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
        return calls

    x = torch.randn(2, 3, 32, 32)
    m = tiny(drop_rate=0.0, drop_path_rate=0.0)
    calls = count_calls(m)
    m(x).sum().backward()  # training, every rate 0
    m.eval()(x)
    assert calls == []
    m = tiny(drop_rate=0.1, drop_path_rate=0.2)
    calls = count_calls(m)
    m.eval()(x)
    assert calls == []
    torch.manual_seed(0)
    a = m.train()(x)
    blocks = sum(TINY["depths"])
    # per block: the attention's output dropout, the MLP's two, stochastic depth twice but the first
    # block's (rate 0)
    assert len(calls) == 3 * blocks + 2 * (blocks - 1)
    torch.manual_seed(0)
    b = m(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, m.eval()(x))


def test_gemm_epilogues_only_for_float32_inference(monkeypatch):
    calls = _count_onednn(monkeypatch)
    m = tiny(drop_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    m(x).sum().backward()  # autograd: oneDNN GEMMs (forward, input gradient), no GELU epilogue
    assert "gelu" not in calls and calls.count("none") == len(calls)
    # forward and input gradient of qkv, proj, fc1, fc2 and each merge's reduction
    want = 8 * sum(TINY["depths"]) + 2 * (len(TINY["depths"]) - 1)
    assert len(calls) == (want if swin_ext.layers.onednn_available() else 0)
    calls.clear()
    with torch.no_grad():
        m.double()(x.double())  # float64 stays on the plain path
        m.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)  # autocast chooses the Linear's dtype
        m.set_backend("reference")(x)  # the reference backend is plain PyTorch
    assert calls == []
    with torch.no_grad():
        m.set_backend("fused").set_cpu_inference_fusion(False)(x)  # switched off by the user
        m.set_backend("reference").set_backend("fused")(x)  # a backend switch keeps that choice
    assert calls == []
    m.set_cpu_inference_fusion(True)
    monkeypatch.setattr(swin_ext.layers.config, "_ONEDNN_OK", False)  # op missing / probe failed
    with torch.no_grad():
        m(x)
    assert calls == []
    monkeypatch.setattr(swin_ext.layers.config, "_ONEDNN_OK", None)
    monkeypatch.setattr(swin_ext.layers.config, "_ONEDNN_ENABLED", False)  # SWIN_EXT_ONEDNN_MLP=0
    with torch.no_grad():
        m(x)
    assert calls == []


def test_onednn_default_follows_the_cpu(monkeypatch, recwarn):
    """Unless chosen (SWIN_EXT_ONEDNN_MLP, set_onednn), the oneDNN GEMM paths are on only where ATen's
    CPU capability is AVX-512 and the build has no CPU GEMM of swin_ext's own (measured faster than
    oneDNN's on an AVX-512 CPU; ATen's faster than oneDNN's on an AVX2 CPU); the model then makes no
    oneDNN call at all."""
    cfg = swin_ext.layers.config
    calls = _count_onednn(monkeypatch, enabled=None)
    for own_gemm in (True, False):
        monkeypatch.setattr(cfg, "_CPU_GEMM_KERNEL", own_gemm)
        for capability, preferred in (("AVX512", not own_gemm), ("AVX2", False), ("DEFAULT", False)):
            monkeypatch.setattr(cfg, "CPU_CAPABILITY", capability)
            assert cfg.onednn_preferred() is preferred
            assert cfg.use_onednn() == (preferred and cfg.onednn_available())
    # from here on a build without swin_ext's CPU GEMM (the loop's last): oneDNN is AVX-512's default
    # an AVX2 CPU: the model's Linears and MLPs take ATen's GEMMs, training and inference alike
    m = tiny(drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    m(x).sum().backward()
    with torch.inference_mode():
        m.eval()(x)
    assert calls == []
    # a choice overrides the CPU's default, both ways; None restores it
    swin_ext.layers.set_onednn(True)
    assert cfg.use_onednn() == cfg.onednn_available()
    monkeypatch.setattr(cfg, "CPU_CAPABILITY", "AVX512")
    swin_ext.layers.set_onednn(False)
    assert not cfg.use_onednn()
    swin_ext.layers.set_onednn(None)
    assert cfg.use_onednn() == cfg.onednn_available()
    # the environment variable: 1 on, 0 off, unset / empty the default, anything else a warning
    for value, want in (("1", True), ("0", False), ("", None), (" 1 ", True)):
        monkeypatch.setenv("SWIN_EXT_ONEDNN_MLP", value)
        assert cfg._onednn_env() is want
    monkeypatch.delenv("SWIN_EXT_ONEDNN_MLP")
    assert cfg._onednn_env() is None and not recwarn.list
    monkeypatch.setenv("SWIN_EXT_ONEDNN_MLP", "yes")
    with pytest.warns(RuntimeWarning, match="SWIN_EXT_ONEDNN_MLP='yes' is not 0 or 1"):
        assert cfg._onednn_env() is None


def test_cpu_inference_gelu_in_place_without_onednn(monkeypatch):
    """Without oneDNN's epilogue, CPU inference runs fc1's GELU in place over the GEMM's output: the
    same bits as F.gelu(fc1(x)); never where a gradient is recorded, nor over an output that a forward
    hook of fc1 may have kept."""
    from swin_ext.layers import linear_gelu
    from swin_ext.layers.fast_linear import Linear

    monkeypatch.setattr(swin_ext.layers.config, "_ONEDNN_ENABLED", False)
    fc = Linear(24, 40)
    x = torch.randn(5, 7, 24)
    import swin_ext.layers.fast_linear as L

    inplace = []  # the GELUs run in place
    real = L._gelu_in_place_ok
    monkeypatch.setattr(L, "_gelu_in_place_ok", lambda fc, y: real(fc, y) and (inplace.append(1) or True))
    want = F.gelu(F.linear(x, fc.weight, fc.bias))
    with torch.inference_mode():
        got = linear_gelu(x, fc)
    assert inplace == [1] and torch.equal(got, want)
    with torch.no_grad():
        assert torch.equal(linear_gelu(x, fc, "tanh"), F.gelu(F.linear(x, fc.weight, fc.bias), approximate="tanh"))
    assert len(inplace) == 2
    # a hook that keeps fc1's output sees the pre-activation, not the GELU
    kept = []
    handle = fc.register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        assert torch.equal(linear_gelu(x, fc), want)
    handle.remove()
    assert len(inplace) == 2 and torch.equal(kept[0], F.linear(x, fc.weight, fc.bias))
    # autograd recording: out of place (the GELU's backward needs its input; the CPU's bias_gelu kernel)
    y = linear_gelu(x.requires_grad_(), fc)
    assert len(inplace) == 2
    torch.testing.assert_close(y, want)
    y.sum().backward()
    # and the model: the same logits with the in-place GELU as with the reference backend (the MLPs
    # unfused: on swin_ext's CPU GEMMs, small MLPs run as one op, test_cpu_mlp.py)
    monkeypatch.setattr(L, "MLP_FUSED_MAX_WEIGHT", 0)
    m = tiny().eval()
    with torch.inference_mode():
        fast = m(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        plain = m.set_backend("reference")(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert len(inplace) == 2 + sum(TINY["depths"])
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias_gelu", [True, False])
def test_training_only_fc1_biases_on_cpu(bias_gelu, monkeypatch):
    """Everything frozen but fc1's biases: fc1's bias needs a gradient although neither its input nor its
    weight does -- no oneDNN GELU epilogue then (it has no backward; this raised before), with and
    without the CPU training bias_gelu path."""
    monkeypatch.setattr(swin_ext.layers.fast_linear, "CPU_TRAINING_BIAS_GELU", bias_gelu)
    m = tiny(drop_path_rate=0.0)
    for name, p in m.named_parameters():
        p.requires_grad_(name.endswith("mlp.fc1.bias"))
    r = copy.deepcopy(m).set_backend("reference")
    x = torch.randn(2, 3, 32, 32)
    out, ref = m(x), r(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), r.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_merging_takes_the_pending_branch(monkeypatch):
    """Each stage's last MLP branch goes into the fused merging (no separate residual add), and the
    model still equals the reference backend (which adds, then merges) through training."""
    import swin_ext.layers.merging as M

    branches = []
    op = M._patch_merging_op

    def spy(x, w, b, eps, branch=None):
        branches.append(branch)
        return op(x, w, b, eps, branch)

    monkeypatch.setattr(M, "_patch_merging_op", spy)
    m = tiny(drop_path_rate=0.0)
    r = copy.deepcopy(m).set_backend("reference")
    x = torch.randn(2, 3, 60, 44)  # odd merge sizes
    out = m(x)
    assert len(branches) == len(TINY["depths"]) - 1 and all(b is not None for b in branches)
    ref = r(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), r.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_stochastic_depth_fused_equals_reference():
    """The residual adds stay fused with the LayerNorms under stochastic depth (drop path on the branch first)."""
    m = tiny(drop_path_rate=0.3).train()
    r = copy.deepcopy(m).set_backend("reference")
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(0)
    b = r(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.manual_seed(1)
    assert not torch.allclose(m(x), a)  # the drop masks are live


def _record_dtypes(model):
    """Hooks recording, per block after a stage's first, the qkv / fc1 input dtype and the block's stream dtype."""
    seen = {}

    def record(key, t):
        seen.setdefault(key, t.dtype)  # returns None: the hooks change nothing

    for i, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.blocks):
            if j == 0:
                continue  # a stage's first norm1 follows no residual add: torch's LayerNorm
            blk.attn.qkv.register_forward_pre_hook(lambda mod, a, k=(i, j, "qkv"): record(k, a[0]))
            blk.mlp.fc1.register_forward_pre_hook(lambda mod, a, k=(i, j, "fc1"): record(k, a[0]))
            blk.register_forward_hook(lambda mod, a, out, k=(i, j, "stream"): record(k, out[0]))
        if layer.downsample is not None:
            layer.downsample.reduction.register_forward_pre_hook(
                lambda mod, a, k=(i, "merge", "reduction"): record(k, a[0])
            )
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_residual_stream_and_linear_inputs(dtype):
    """Under autocast the fused add + LayerNorm keeps the residual stream in its own dtype (what it is
    in the reference backend and timm: CPU autocast runs LayerNorm in its input's dtype) and gives the
    qkv and fc1 Linears, and the fused add + merging the reduction Linear, their input in the autocast
    dtype (no cast kernel)."""
    m = tiny(drop_path_rate=0.0)
    r = copy.deepcopy(m).set_backend("reference")
    seen, seen_ref = _record_dtypes(m), _record_dtypes(r)
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=dtype):
        out, ref = m(x), r(x)
    assert seen and all(v == dtype for k, v in seen.items() if k[2] != "stream"), seen
    assert sum(k[2] == "reduction" for k in seen) == len(TINY["depths"]) - 1
    assert {k: v for k, v in seen.items() if k[2] == "stream"} == {
        k: v for k, v in seen_ref.items() if k[2] == "stream"
    }
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.05)
    # a float32 stream (the input of stage 0 in float32) stays float32 and still feeds the Linears in `dtype`
    with torch.autocast("cpu", dtype=dtype):
        h, y = swin_ext.layers.add_layernorm(
            torch.randn(2, 4, 4, 12), torch.randn(2, 4, 4, 12, dtype=dtype), m.layers[0].blocks[0].norm2
        )
    assert h.dtype == torch.float32 and y.dtype == dtype
    with torch.autocast("cpu", dtype=dtype):
        out = m(x)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_training_backward_is_bitwise_deterministic():
    m = tiny(drop_path_rate=0.0)
    x = torch.randn(2, 3, 44, 52)
    grads = []
    for _ in range(2):
        m.zero_grad()
        m(x).square().sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_gradient_checkpointing_same_gradients():
    x = torch.randn(2, 3, 64, 64)
    m = tiny(drop_path_rate=0.0)
    mc = copy.deepcopy(m)
    for layer in mc.layers:
        layer.use_checkpoint = True
    m(x).sum().backward()
    mc(x).sum().backward()
    for a, b in zip(m.parameters(), mc.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_stochastic_depth_linear_schedule():
    m = tiny(drop_path_rate=0.3)
    rates = [blk.drop_path.drop_prob for layer in m.layers for blk in layer.blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.3) < 1e-6
    assert all(b > a for a, b in zip(rates, rates[1:]))


def test_attention_dropout_training_runs():
    m = tiny(attn_drop_rate=0.2, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    a, b = m(x), m(x)
    assert not torch.equal(a, b)  # dropout on the attention probabilities is active
    a.sum().backward()
    m.eval()
    torch.testing.assert_close(m(x), m.set_backend("reference")(x))  # eval: no dropout, fused == reference


@pytest.mark.slow
def test_torch_compile_fullgraph():
    m = tiny(drop_path_rate=0.0)
    x = torch.randn(2, 3, 40, 56)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    with torch.no_grad():  # inference: the GELU epilogue and the fused ops under compile
        torch.testing.assert_close(compiled(x), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    m = tiny(drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x), atol=1e-4, rtol=1e-4)
    g = [p.grad for p in m.parameters()]
    assert all(t is None for t in g)
    compiled(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_shift_disabled_on_small_maps():
    blk = tiny().layers[2].blocks[1]
    assert blk.shift_size == 2
    assert blk.effective_shift(4, 4) == (0, 0)
    assert blk.effective_shift(4, 12) == (0, 2)
    assert blk.effective_shift(5, 5) == (2, 2)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(window_size=0), "window_size"),
        (dict(num_heads=(1, 5, 3)), "num_heads\\[1\\]"),
        (dict(depths=(2, 2)), "same length"),
        (dict(img_size=66), "img_size"),
        (dict(embed_dim=0), "embed_dim"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_bad_input():
    m = tiny().eval()
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        m(torch.ones(1, 3, 64, 64, dtype=torch.uint8))


def test_variant_table_feeds_factories_create_model_and_presets():
    """swin_t ... swin_l, create_model's names and the training presets are one table (swin_ext.models.variants)."""
    from swin_ext.models.variants import ALIASES, SIZES
    from swin_ext.train import PRESETS

    for short, size in ALIASES.items():
        with torch.device("meta"):
            a = getattr(swin_ext, f"swin_{short}")()
            b = swin_ext.create_model(f"swin_{size}_patch4_window7_224")
            c = swin_ext.SwinTransformer(num_classes=1000, **PRESETS[f"swin_{short}"])
        counts = {sum(p.numel() for p in m.parameters()) for m in (a, b, c)}
        assert len(counts) == 1, (short, counts)
        assert a.embed_dim == SIZES[size]["embed_dim"] == PRESETS[f"swin_{short}"]["embed_dim"]


# ----------------------------------------------------------------------------- bad configuration


MODEL_CONFIG_CASES = [
    ("depths-int", dict(depths=2), TypeError, "depths must be a list or tuple of ints"),  # was: 'int' not iterable
    ("num_heads-int", dict(num_heads=3), TypeError, "num_heads must be a list or tuple"),  # was: 'int' not iterable
    ("depths-float-entry", dict(depths=(2, 2.0, 6, 2)), TypeError, r"depths\[1\] must be an int"),
    ("img_size-str", dict(img_size="224"), TypeError, "img_size must be an int or a pair"),  # was: unpack error
    ("img_size-float", dict(img_size=224.0), TypeError, "img_size must be an int or a pair"),  # was: unpack error
    ("img_size-1-tuple", dict(img_size=(224,)), TypeError, "img_size must be an int or a pair"),  # was: unpack error
    ("img_size-zero", dict(img_size=0), ValueError, "img_size must be positive"),
    ("mlp_ratio-inf", dict(mlp_ratio=math.inf), ValueError, "mlp_ratio must be finite"),  # was: OverflowError
    ("mlp_ratio-str", dict(mlp_ratio="4"), TypeError, "mlp_ratio must be a real number"),  # was: bare comparison error
    ("mlp_ratio-zero-width", dict(mlp_ratio=0.001), ValueError, "mlp_ratio 0.001 gives.*hidden width"),  # was: trained
    ("mlp_ratio-negative", dict(mlp_ratio=-1.0), ValueError, "mlp_ratio must be > 0"),
    ("window-float", dict(window_size=7.0), TypeError, "window_size must be an int"),
    ("window-huge", dict(window_size=2**20), ValueError, "window_size must be <= 32768"),  # was: a huge allocation
    ("drop_path-str", dict(drop_path_rate="0.1"), TypeError, "drop_path_rate must be a real number"),
    ("drop_path-1.5", dict(drop_path_rate=1.5), ValueError, "drop_path_rate"),
    ("embed_dim-float", dict(embed_dim=96.0), TypeError, "embed_dim must be an int"),
    ("num_heads-not-dividing", dict(num_heads=(1, 5, 3, 24)), ValueError, r"num_heads\[1\]"),
    ("patch_size-zero", dict(patch_size=0), ValueError, "patch_size"),
]


@pytest.mark.parametrize("kw,exc,match", [pytest.param(*c[1:], id=c[0]) for c in MODEL_CONFIG_CASES])
def test_model_config(kw, exc, match):
    with pytest.raises(exc, match=match), torch.device("meta"):
        SwinTransformer(**kw)


# --------------------------------------------------------------------------- the inference bias cache

def _bias_cache_cases():
    from swin_ext import SwinTransformer3d, SwinTransformerV2

    return {
        "v1": (lambda: small(embed_dim=16, depths=(2, 2), num_heads=(1, 2)), (2, 3, 56, 56)),
        "v2": (lambda: SwinTransformerV2(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                                         num_classes=5), (2, 3, 64, 64)),
        "3d": (lambda: SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                                         window_size=[2, 3, 3], num_classes=5), (1, 3, 2, 24, 24)),
    }


#: kinds whose fused path keeps a cached bias: V2 its CPB table, Video Swin the gather of a window shrunk to
#: the one-frame clip; V1 passes its table to the op (nothing gathered, nothing cached)
_CACHING = {"v1": False, "v2": True, "3d": True}


@pytest.mark.parametrize("kind", ["v1", "v2", "3d"])
def test_inference_bias_cache_follows_the_weights(kind):
    """The gathered (heads, N, N) bias (V2: the CPB table) is reused between grad-free calls and recomputed
    whenever a source changes (an in-place step, load_state_dict), never used with grad on, never saved;
    V1, which passes its table to the op, follows the weights the same way without a cache."""
    make, shape = _bias_cache_cases()[kind]
    torch.manual_seed(0)
    m = randomize(make()).eval()
    x = torch.randn(shape)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        a = m(x)
        assert torch.equal(m(x), a)
    cached = [mod for mod in m.modules() if mod.__dict__.get("_inference_bias_cache")]
    assert bool(cached) == _CACHING[kind], cached
    assert not any("cache" in k for k in m.state_dict())
    with torch.no_grad():  # an optimizer-like in-place step on the bias sources
        for name, p in m.named_parameters():
            if "relative_position_bias_table" in name or "cpb_mlp" in name:
                p.add_(torch.randn_like(p))
        b = m(x)
        fresh = randomize(make()).eval()
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(b, fresh(x)) and not torch.equal(b, a)
    with torch.no_grad():  # a write through .data bumps no version counter: the values are compared too
        for name, p in m.named_parameters():
            if "relative_position_bias_table" in name or "cpb_mlp" in name:
                p.data.mul_(0.5)
        c = m(x)
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(c, fresh(x)) and not torch.equal(c, b)
    m.load_state_dict(sd)
    with torch.inference_mode():
        assert torch.equal(m(x), a)
    with torch.no_grad():
        assert torch.equal(m(x), a)  # a value cached in inference mode is not reused outside it
    m.zero_grad()
    m(x).square().sum().backward()  # grad on: computed afresh and differentiable
    grads = [p.grad for n, p in m.named_parameters() if "relative_position_bias_table" in n or "cpb_mlp" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("window", [(7, 7), (2, 3, 3), (8, 7, 7)])
def test_gather_bias_backward_is_the_ordered_sum(window):
    """gather_bias's CPU backward (one scatter_add_) is the per-bin sum in token-pair order at any thread
    count: autograd's index_put_ backward bit for bit at N = 49, to rounding above; gradcheck; under
    forward AD it takes the plain gather."""
    from torch.autograd import forward_ad as fwAD

    from swin_ext.layers.pos_bias import gather_bias, relative_position_index

    N = math.prod(window)
    rows = math.prod(2 * w - 1 for w in window)
    idx = relative_position_index(window).reshape(-1)
    g = torch.Generator().manual_seed(N)
    table = torch.randn(rows, 3, generator=g, requires_grad=True)
    dout = torch.randn(3, N, N, generator=g)
    got = torch.autograd.grad(gather_bias(table, idx, N), table, dout)[0]
    want = torch.autograd.grad(table[idx].view(N, N, 3).permute(2, 0, 1).contiguous(), table, dout)[0]
    seq = torch.zeros(rows, 3, dtype=torch.float32).numpy()
    for i, row in zip(idx.tolist(), dout.reshape(3, -1).t().numpy()):
        seq[i] += row  # float32, in token-pair order
    assert torch.equal(got, torch.from_numpy(seq)) and got.abs().sum() > 0
    if N <= 64:
        assert torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(torch.autograd.grad(gather_bias(table, idx, N), table, dout)[0], got)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(gather_bias(table, idx, N), table.detach()[idx].view(N, N, 3).permute(2, 0, 1))
    if N <= 20:  # gradcheck's cost grows with rows * N * N
        t64 = torch.randn(rows, 2, dtype=torch.float64, generator=g, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: gather_bias(t, idx, N), (t64,))
        with fwAD.dual_level():
            tan = torch.randn_like(t64)
            out = fwAD.unpack_dual(gather_bias(fwAD.make_dual(t64.detach(), tan), idx, N))
            assert torch.equal(out.tangent, tan[idx].view(N, N, 2).permute(2, 0, 1))
