"""Swin Transformer V2: names and parameter counts vs timm, float64 equivalence with timm's and
transformers' swinv2 (logits and input gradients), fused vs reference, features_only,
gradient checkpointing, checkpoint layouts and bad checkpoints."""
import re

import pytest
import torch
import torch.nn.functional as F

import swin_ext
from swin_ext import CheckpointError, SwinTransformerV2, create_model, load_pretrained
from swin_ext.layers.pos_bias import relative_position_index

from swin_test_utils import assert_unchanged, snapshot

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

TOL = 1e-9


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def randomize(module):
    """Random weights everywhere: N(0, 0.02^2) plus logit scales in [log 2, log 30] (some above the
    clamp at log 100 would be the same for both), norms around 1 (V2 zero-initialises its post-norms)."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "logit_scale" in n:
                p.uniform_(0.7, 3.4)
            elif re.search(r"(norm|layernorm\w*)\.weight$", n):
                p.normal_(1.0, 0.1)
            elif "cpb_mlp" in n or "continuous_position_bias_mlp" in n:
                p.normal_(0.0, 0.3)  # a bias of visible structure through 16 * sigmoid
            else:
                p.normal_(0.0, 0.02)
    return module


def logits_and_input_grad(model, x, logits=lambda out: out):
    x = x.clone().requires_grad_(True)
    out = logits(model(x))
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad


# ----------------------------------------------------------------------------- names


def _timm():
    return pytest.importorskip("timm")


V2_NAMES = [
    "swinv2_tiny_window8_256", "swinv2_tiny_window16_256", "swinv2_small_window8_256",
    "swinv2_small_window16_256", "swinv2_base_window8_256", "swinv2_base_window16_256",
    "swinv2_base_window12_192", "swinv2_base_window12to16_192to256", "swinv2_base_window12to24_192to384",
    "swinv2_large_window12_192", "swinv2_large_window12to16_192to256", "swinv2_large_window12to24_192to384",
]


def test_names_and_parameter_counts_match_timm():
    timm = _timm()
    assert sorted(n for n in timm.list_models("swinv2_*") if not n.startswith("swinv2_cr")) == sorted(V2_NAMES)
    assert set(V2_NAMES) <= set(swin_ext.list_models())
    for name in V2_NAMES:
        with torch.device("meta"):
            theirs = timm.create_model(name)
            ours = create_model(name)
        assert isinstance(ours, SwinTransformerV2)
        n_theirs = sum(p.numel() for p in theirs.parameters())
        n_ours = sum(p.numel() for p in ours.parameters())
        assert n_ours == n_theirs, (name, n_ours, n_theirs)
        assert ours.num_classes == theirs.num_classes, name
        assert ours.img_size == tuple(theirs.patch_embed.img_size), name
        assert ours.pretrained_window_sizes == tuple(s.blocks[0].attn.pretrained_window_size[0] for s in theirs.layers)
        # timm shrinks the last stages' window to their map at img_size; ours does it at run time
        for i, stage in enumerate(theirs.layers):
            side = ours.img_size[0] // 4 // 2**i
            assert ours.layers[i].blocks[0].window_and_shift(side, side)[0] == stage.blocks[0].window_size[0], name


def test_flops_official_counts():
    # Swin V2 paper, Table 1 (256 px, window 8): T 5.9G, S 11.5G, B 20.3G
    for name, g in (("swinv2_tiny_window8_256", 5.9), ("swinv2_small_window8_256", 11.5),
                    ("swinv2_base_window8_256", 20.3)):
        with torch.device("meta"):
            m = create_model(name)
        assert round(m.flops() / 1e9, 1) == g, (name, m.flops())


def test_unknown_name_and_bad_config():
    with pytest.raises(ValueError, match="swinv2_tiny_window8_256"):
        create_model("swinv2_tiny_window8_265")
    with pytest.raises(ValueError, match="pretrained_window_sizes"):
        SwinTransformerV2(depths=(2, 2), num_heads=(1, 2), pretrained_window_sizes=(8, 8, 8))
    with pytest.raises(TypeError, match="window_size"):
        SwinTransformerV2(depths=(2, 2), num_heads=(1, 2), window_size=8.0)
    with pytest.raises(ValueError, match="proj_drop_rate"):
        SwinTransformerV2(depths=(2, 2), num_heads=(1, 2), proj_drop_rate=1.5)


# ----------------------------------------------------------------------------- timm


TIMM_CASES = {
    # maps 16, 8: the last equals the window (no shift)
    "w8": dict(img_size=64, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=8),
    # maps 32, 16, 8: the last is smaller than the window (shrunk to 8, coords normalised by the
    # pretrained window 4)
    "w16_small_map": dict(img_size=128, embed_dim=24, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=16,
                          pretrained_window_sizes=(8, 8, 4)),
    # maps 24, 12: 24 is padded to 32 and shifted by 8 (timm rolls before padding, swin_ext pads
    # first: with pad == shift the windows hold the same tokens and the regions are masked apart)
    "w16_padded": dict(img_size=96, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=16),
}


def timm_v2(cfg, num_classes=7):
    _timm()
    from timm.models.swin_transformer_v2 import SwinTransformerV2 as TimmV2

    return randomize(TimmV2(num_classes=num_classes, drop_path_rate=0.0, **cfg).double()).eval()


def ours_v2(cfg, num_classes=7, **kw):
    return SwinTransformerV2(num_classes=num_classes, drop_path_rate=0.0, **cfg, **kw).double().eval()


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_equivalence(case):
    cfg = TIMM_CASES[case]
    theirs = timm_v2(cfg)
    ours = ours_v2(cfg)
    result = load_pretrained(ours, theirs.state_dict())
    assert result.format == "timm" and not result.missing_keys
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"], dtype=torch.float64)
    want, want_g = logits_and_input_grad(theirs, x)
    for backend in ("fused", "reference") if case == "w8" else ("fused",):
        got, got_g = logits_and_input_grad(ours.set_backend(backend), x)
        assert rel_err(got, want) <= TOL, backend
        assert rel_err(got_g, want_g) <= TOL, backend


def test_small_window_constants_are_built_once():
    """A map smaller than the window (stage 3 of w16_small_map: 8 < 16): the smaller window's index and CPB
    coordinates are built on the first call and kept (the same tensors on the next call, training and
    eval), with the standard values; a move to another dtype keeps the outputs right."""
    from swin_ext.layers.pos_bias import relative_coords_table

    model = ours_v2(TIMM_CASES["w16_small_map"]).train()
    attn = model.layers[2].blocks[0].attn
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    model(x)
    kept = dict(attn._small_window)
    assert set(kept) == {("index", 8), ("coords", 8)}
    torch.testing.assert_close(kept[("index", 8)], relative_position_index(8), rtol=0, atol=0)
    torch.testing.assert_close(kept[("coords", 8)], relative_coords_table(8, 4), rtol=0, atol=0)
    out = model.eval()(x)
    assert all(attn._small_window[k] is v for k, v in kept.items())
    torch.testing.assert_close(model.float()(x.float()), out.float(), rtol=1e-4, atol=1e-4)


def test_timm_window_change_goes_through_cpb():
    """A window-8 checkpoint in a window-16 model: nothing resized, the CPB MLP gives the new bias (as timm)."""
    small = dict(img_size=128, embed_dim=24, depths=(2, 2), num_heads=(2, 4), pretrained_window_sizes=(8, 8))
    src = timm_v2(dict(small, window_size=8))
    theirs = timm_v2(dict(small, window_size=16))
    theirs.load_state_dict(src.state_dict())
    ours = ours_v2(dict(small, window_size=16))
    result = load_pretrained(ours, src.state_dict())
    assert not result.resized_keys
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= TOL


def test_features_only_and_intermediates_match_timm():
    cfg = TIMM_CASES["w16_small_map"]
    theirs = timm_v2(cfg)
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        final, inter = theirs.forward_intermediates(x, norm=True)
        raw = theirs.forward_intermediates(x, intermediates_only=True)
        ours = ours_v2(cfg)
        load_pretrained(ours, theirs.state_dict())
        got_final, got_inter = ours.forward_intermediates(x, norm=True)
        assert rel_err(got_final, final) <= TOL
        assert len(got_inter) == 3 and all(rel_err(a, b) <= TOL for a, b in zip(got_inter, inter))

        backbone = ours_v2(cfg, features_only=True, out_indices=(0, 2))
        result = load_pretrained(backbone, theirs.state_dict())
        assert "norm0.weight" in result.initialized_keys and "head.fc.weight" in result.ignored_keys
        randomize(backbone)
        load_pretrained(backbone, theirs.state_dict(), strict=False)  # the norms keep their values
        feats = backbone(x)
        assert backbone.out_channels == [24, 96]
        for f, i in zip(feats, (0, 2)):
            norm = getattr(backbone, f"norm{i}")
            want = F.layer_norm(raw[i].permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias,
                                norm.eps).permute(0, 3, 1, 2)
            assert f.shape == want.shape and rel_err(f, want) <= TOL


# ----------------------------------------------------------------------------- transformers


def hf_v2(image_size, window, cls="Swinv2ForImageClassification", **kw):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Swinv2Config(image_size=image_size, patch_size=4, embed_dim=24, depths=[2, 2],
                                    num_heads=[2, 4], window_size=window, num_labels=7, drop_path_rate=0.0, **kw)
    return randomize(getattr(transformers, cls)(cfg).double()).eval()


# (96, 16): map 24 padded to 32 and shifted by 8; (144, 16): maps 36 and 18 padded to 48 and 32, shifted by 8
# (pad != shift: padding before the roll, as swin_ext and transformers do, is not timm's roll-then-pad)
@pytest.mark.parametrize("image_size,window", [(64, 8), (96, 16), (144, 16)])
def test_transformers_equivalence(image_size, window):
    theirs = hf_v2(image_size, window)
    ours = ours_v2(dict(img_size=image_size, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=window))
    result = load_pretrained(ours, theirs.state_dict())
    assert result.format == "transformers" and not result.missing_keys
    x = torch.randn(2, 3, image_size, image_size, dtype=torch.float64)
    want, want_g = logits_and_input_grad(theirs, x, lambda o: o.logits)
    got, got_g = logits_and_input_grad(ours, x)
    assert rel_err(got, want) <= TOL and rel_err(got_g, want_g) <= TOL


def test_transformers_model_without_head():
    theirs = hf_v2(64, 8, cls="Swinv2Model", pretrained_window_sizes=[4, 4])
    ours = ours_v2(dict(img_size=64, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=8,
                        pretrained_window_sizes=4), num_classes=0)
    load_pretrained(ours, theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(pixel_values=x).pooler_output) <= TOL


# ----------------------------------------------------------------------------- backends, checkpointing


def _train_step(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def test_fused_backend_runs_the_v2_kernel(monkeypatch):
    import swin_ext.layers.attention as attn

    calls = []
    real = attn._window_attention_v2_op
    monkeypatch.setattr(attn, "_window_attention_v2_op", lambda *a: calls.append(a[3:5]) or real(*a))
    model = ours_v2(dict(img_size=64, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=8))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        model(x)
        assert calls == [(8, (0, 0)), (8, (4, 4)), (8, (0, 0)), (8, (0, 0))]  # stage 1: map == window, no shift
        calls.clear()
        model.set_backend("reference")(x)
        assert not calls


def test_fused_vs_reference_and_grad_checkpointing():
    # any input size: 44 x 60 pixels -> maps 11 x 15 (padded, shifted along W only), then 6 x 8 (window shrunk)
    cfg = dict(img_size=64, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=8)
    model = randomize(ours_v2(cfg)).train()
    x = torch.randn(2, 3, 44, 60, dtype=torch.float64)
    ref = _train_step(model.set_backend("reference"), x)
    fused = _train_step(model.set_backend("fused"), x)
    model.set_grad_checkpointing(True)
    ckpt = _train_step(model, x)
    model.set_grad_checkpointing(False)
    for other in (fused, ckpt):
        assert rel_err(other[0], ref[0]) <= TOL and rel_err(other[1], ref[1]) <= TOL
        for n, g in ref[2].items():
            assert rel_err(other[2][n], g) <= TOL, n
    assert ref[2]["layers.0.blocks.1.attn.logit_scale"].abs().sum() > 0
    assert ref[2]["layers.0.blocks.1.attn.cpb_mlp.2.weight"].abs().sum() > 0


def test_stochastic_depth():
    cfg = dict(img_size=32, embed_dim=16, depths=(2,), num_heads=(2,), window_size=4)
    model = randomize(ours_v2(cfg))
    m2 = SwinTransformerV2(drop_path_rate=0.5, num_classes=7, **cfg).double()
    assert [b.drop_path.drop_prob for b in m2.layers[0].blocks] == [0.0, 0.5]
    m2.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(m2.eval()(x), model(x))  # no drop in eval
        torch.manual_seed(0)
        dropped = m2.train()(x)
    assert not torch.allclose(dropped, model(x))


# ----------------------------------------------------------------------------- checkpoints


def test_official_layout_and_buffers_dropped():
    cfg = TIMM_CASES["w8"]
    src = randomize(ours_v2(cfg))
    sd = dict(src.state_dict())
    # the official files keep the coordinate table, the index and the masks as persistent buffers
    sd["layers.0.blocks.0.attn.relative_coords_table"] = torch.zeros(1, 15, 15, 2)
    sd["layers.0.blocks.0.attn.relative_position_index"] = relative_position_index(8)
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 64, 64)
    ours = ours_v2(cfg)
    result = load_pretrained(ours, {"model": sd})
    assert result.format == "official" and len(result.ignored_keys) == 3
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ours(x), src(x))


def test_bad_checkpoints_leave_model_unchanged():
    cfg = TIMM_CASES["w8"]
    ours = ours_v2(cfg)
    snap = snapshot(ours)
    other = timm_v2(dict(cfg, num_heads=(4, 8)))  # heads differ: logit_scale, cpb_mlp.2 shapes
    with pytest.raises(CheckpointError, match="num_heads"):
        load_pretrained(ours, other.state_dict())
    assert_unchanged(ours, snap)
    sd = dict(timm_v2(cfg).state_dict())
    sd["layers.1.blocks.1.attn.cpb_mlp.0.weight"] = torch.full((512, 2), float("nan"), dtype=torch.float64)
    with pytest.raises(CheckpointError, match="cpb_mlp.0.weight.*NaN"):
        load_pretrained(ours, sd)
    assert_unchanged(ours, snap)
    v1 = swin_ext.SwinTransformer(embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=8, num_classes=7)
    with pytest.raises(CheckpointError, match="Swin V1 checkpoint"):
        load_pretrained(ours, v1.state_dict())
    with pytest.raises(CheckpointError, match="Swin V2 checkpoint"):
        load_pretrained(v1, ours.state_dict())
    assert_unchanged(ours, snap)


# ----------------------------------------------------------------------------- integrations


@pytest.mark.slow
def test_training_cli_swinv2(tmp_path):
    from swin_ext import train as T

    argv = ["--data", "digits", "--model", "swinv2_tiny_window8_256", "--img-size", "16", "--embed-dim", "12",
            "--depths", "1,2", "--num-heads", "1,2", "--window-size", "2", "--batch-size", "8", "--limit", "16",
            "--max-steps", "2", "--no-progress", "--threads", "1", "--no-plot", "--grad-checkpoint",
            "--output-dir", str(tmp_path)]
    res = T.train(T.build_parser().parse_args(argv))
    assert res["step"] == 2
    state = T.load_checkpoint(str(tmp_path / "last.pt"))
    assert state["model_config"]["model"] == "swinv2_tiny_window8_256"
    assert any(k.endswith("attn.logit_scale") for k in state["model"])
    model = T.build_model(state["model_config"])
    assert isinstance(model, SwinTransformerV2)
    model.load_state_dict(state["model"])
    groups = T.param_groups(model, 0.05)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    assert "layers.0.blocks.0.attn.logit_scale" in no_decay and "layers.0.blocks.0.attn.cpb_mlp.0.weight" in no_decay


def test_from_timm_and_from_transformers():
    cfg = TIMM_CASES["w16_small_map"]
    theirs = timm_v2(cfg)
    ours = swin_ext.from_timm(theirs)
    assert isinstance(ours, SwinTransformerV2) and ours.pretrained_window_sizes == (8, 8, 4)
    assert not ours.training and next(ours.parameters()).dtype == torch.float64
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= TOL
    hf = hf_v2(96, 16, pretrained_window_sizes=[8, 8])
    ours = swin_ext.from_transformers(hf)
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x), hf(pixel_values=x).logits) <= TOL


def test_fpn_backbone_v2():
    pytest.importorskip("torchvision")
    model = randomize(ours_v2(TIMM_CASES["w16_small_map"]))
    fpn = swin_ext.fpn_backbone(model, out_channels=16, out_indices=(0, 1, 2)).double()
    x = torch.randn(1, 3, 100, 72, dtype=torch.float64)
    feats = fpn(x)
    assert list(feats) == ["0", "1", "2", "pool"] and feats["0"].shape == (1, 16, 25, 18)
    body = fpn.body
    assert isinstance(body, SwinTransformerV2) and body.features_only
    with torch.no_grad():  # the body holds the classification model's weights
        _, inter = model.forward_intermediates(x)
        for i, f in enumerate(body(x)):
            norm = getattr(body, f"norm{i}")
            want = F.layer_norm(inter[i].permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias,
                                norm.eps).permute(0, 3, 1, 2)
            assert rel_err(f, want) <= TOL
    named = swin_ext.fpn_backbone("swinv2_tiny_window8_256", out_channels=8, embed_dim=12, depths=(1, 1, 1, 1),
                                  num_heads=(1, 1, 1, 1))
    assert isinstance(named.body, SwinTransformerV2) and named.body.out_channels == [12, 24, 48, 96]


@pytest.mark.slow
def test_onnx_export_v2(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    # maps 15 x 17 (padded and shifted) then 8 x 9 (window shrunk to 9, H padded): both translation paths
    model = randomize(SwinTransformerV2(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=9,
                                        num_classes=5, drop_path_rate=0.0)).eval()
    x = torch.randn(2, 3, 60, 68)
    ep = torch.export.export(model, (x,))  # the fused V2 op is kept in the exported graph
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.swin_ext.window_attention_v2_fwd.default) == 4
    path = str(tmp_path / "v2.onnx")
    swin_ext.export_onnx(model, path, x, dynamic_batch=True)  # checks onnxruntime against PyTorch (rtol 1e-4)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "ReduceL2" in ops and not {o for o in ops if "swin" in o.lower() or o == "Roll"}
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 60, 68)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x3.numpy()})[0])
    with torch.no_grad():
        assert rel_err(got.double(), model(x3).double()) <= 1e-4


def test_create_model_with_a_checkpoint_and_a_new_head():
    small = dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    src = randomize(create_model("swinv2_tiny_window8_256", drop_path_rate=0.0, **small))
    with pytest.warns(UserWarning, match="head was not loaded"):
        m = create_model("swinv2_tiny_window8_256", pretrained=src.state_dict(), num_classes=3, **small)
    assert m.head.out_features == 3 and m.pretrained_result.new_head
    assert torch.equal(m.layers[2].blocks[0].attn.cpb_mlp[0].weight, src.layers[2].blocks[0].attn.cpb_mlp[0].weight)
    with pytest.raises(CheckpointError, match="num_classes"):  # load_pretrained itself is strict about the head
        load_pretrained(create_model("swinv2_tiny_window8_256", num_classes=3, **small), {"model": src.state_dict()})


def test_autocast_keeps_the_position_bias_in_float32():
    model = randomize(SwinTransformerV2(img_size=32, embed_dim=16, depths=(2,), num_heads=(2,), window_size=4,
                                        num_classes=5, drop_path_rate=0.0)).eval()
    attn = model.layers[0].blocks[1].attn
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert attn.position_bias().dtype == torch.float32
            got = model(x)
    assert got.dtype == torch.bfloat16 and rel_err(got.float(), want) < 3e-2
