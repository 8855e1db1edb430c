"""timm's model API on swin_ext's classifiers: layer-decay groups, the classifier methods, pretrained_cfg,
frozen stages -- each checked against timm's own Swin / Swin V2 of the same architecture (random weights)."""
import logging
import re
import warnings

import pytest
import torch

import swin_ext
from swin_ext.weights.layouts import to_timm

pytest.importorskip("timm")
import timm  # noqa: E402
import timm.data  # noqa: E402
import timm.optim  # noqa: E402

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")

# three stages of different depths, so that the merging -> next-stage mapping is exercised at every stage
ARCH = dict(img_size=32, embed_dim=16, depths=(2, 1, 3), num_heads=(1, 2, 4), window_size=2, num_classes=5)


def _pair(v2, **kw):
    arch = {**ARCH, **kw}
    if v2:
        return swin_ext.SwinTransformerV2(**arch), timm.models.swin_transformer_v2.SwinTransformerV2(**arch)
    return swin_ext.SwinTransformer(**arch), timm.models.swin_transformer.SwinTransformer(**arch)


def _timm_name(name):
    """timm's name of a swin_ext parameter (stage i's merging is timm's layers.i+1.downsample, head.fc)."""
    return next(iter(to_timm({name: None})))


def _per_param(model, groups):
    """``{name: (lr_scale, weight_decay)}`` of an optimizer's / timm's parameter groups."""
    by_id = {id(p): (g.get("lr_scale", 1.0), g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def _optimizer_groups(model, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # 0 warnings
    return opt.param_groups


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_layer_decay_groups_equal_timms_parameter_by_parameter(v2, caplog):
    ours, theirs = _pair(v2)
    mine = _per_param(ours, _optimizer_groups(ours, caplog))
    ref = _per_param(theirs, _optimizer_groups(theirs, caplog))
    assert {_timm_name(n) for n in mine} == set(ref)
    for n, got in mine.items():
        assert got == ref[_timm_name(n)], n  # lr scale and weight decay, exactly
    assert len({s for s, _ in mine.values()}) == sum(ARCH["depths"]) + 2  # stem, one per block, head
    # the training CLI's groups are timm's too
    from swin_ext.train import param_groups

    cli = _per_param(ours, param_groups(ours, 0.05, 0.9))
    assert cli == mine
    # and coarse grouping (per stage) as timm's
    for coarse in (False, True):
        a = timm.models.group_parameters(ours, ours.group_matcher(coarse), reverse=True)
        b = timm.models.group_parameters(theirs, theirs.group_matcher(coarse), reverse=True)
        assert {_timm_name(n): i for n, i in a.items()} == b


def test_swin_t_layer_decay_has_timms_scale_sums(caplog):
    # the case: create_optimizer_v2(swin_t(), layer_decay=0.9) warned and made one group
    ours = swin_ext.swin_t(num_classes=10)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10)

    def sums(groups):
        out = {}
        for g in groups:
            n = sum(p.numel() for p in g["params"])
            out[n] = out.get(n, 0.0) + g["lr_scale"]
        return sorted(out.items())

    a, b = _optimizer_groups(ours, caplog), _optimizer_groups(theirs, caplog)
    assert len(a) == len(b) == 2 * (sum(ours.depths) + 2)  # stem, 12 blocks, head: decay and no decay each
    assert sums(a) == sums(b)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_no_weight_decay_names_are_timms(v2):
    ours, theirs = _pair(v2)
    assert {_timm_name(n) for n in ours.no_weight_decay()} == theirs.no_weight_decay()
    assert ours.no_weight_decay()  # bias tables (V1) / CPB MLP and logit scales (V2)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_forward_head_and_reset_classifier_match_timm(v2):
    ours, theirs = _pair(v2, num_classes=5)
    theirs.load_state_dict(to_timm(ours.state_dict()), strict=False)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = ours.forward_features(x)
        torch.testing.assert_close(feats, theirs.forward_features(x), atol=1e-4, rtol=1e-4)
        for pre in (False, True):
            torch.testing.assert_close(ours.forward_head(feats, pre_logits=pre),
                                       theirs.forward_head(feats, pre_logits=pre), atol=1e-5, rtol=1e-5)
    assert ours.get_classifier() is ours.head and ours.get_classifier().out_features == 5
    for pool in ("avg", "max", "avgmax", ""):
        ours.reset_classifier(0, pool)
        theirs.reset_classifier(0, pool)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)
    ours.reset_classifier(7, "avg")
    assert ours(x).shape == (2, 7) and ours.num_classes == 7 and isinstance(ours.get_classifier(), torch.nn.Linear)
    assert ours.head_hidden_size == ours.num_features == 64
    ours.reset_classifier(0, "")
    assert ours(x).shape == (2, 2, 2, 64)  # no pooling: the map
    with pytest.raises(ValueError, match="global_pool must be one of"):
        ours.reset_classifier(3, "catavgmax")
    backbone = swin_ext.SwinTransformer(**{**ARCH, "features_only": True, "out_indices": (1, 2)})
    with pytest.raises(RuntimeError, match="features_only model has no head"):
        backbone.reset_classifier(3)


def test_reset_classifier_keeps_device_and_dtype():
    m = swin_ext.SwinTransformer(**ARCH).double()
    m.reset_classifier(3)
    assert m.head.weight.dtype == torch.float64 and m(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)


@pytest.mark.parametrize("name,timm_name", [
    ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224"),
    ("swin_base_patch4_window12_384", "swin_base_patch4_window12_384"),
    ("swinv2_tiny_window8_256", "swinv2_tiny_window8_256"),
])
def test_pretrained_cfg_gives_timms_data_config(name, timm_name):
    ours = swin_ext.create_model(name, depths=(1, 1, 1, 1))
    cfg = timm.data.resolve_data_config({}, model=ours)
    theirs = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(timm_name).to_dict())
    assert cfg == theirs
    assert ours.default_cfg is ours.pretrained_cfg and ours.pretrained_cfg["classifier"] == "head"
    assert ours.pretrained_cfg["architecture"] == name
    from PIL import Image

    tf = timm.data.create_transform(**cfg)
    side = cfg["input_size"][1]
    assert tf(Image.new("RGB", (300, 280))).shape == (3, side, side)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = swin_ext.SwinTransformer(**{**ARCH, "drop_path_rate": 0.0})
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for on in (False, True):
        m.set_grad_checkpointing(on)
        m.zero_grad()
        m(x).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(layer.use_checkpoint for layer in m.layers)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_freeze_stages(v2):
    m, _ = _pair(v2, drop_path_rate=0.5)
    m.freeze_stages(2)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in m.named_parameters() if re.match(r"patch_embed\.|layers\.[01]\.", n)}
    m.train()
    assert not m.layers[1].training and not m.patch_embed.training and m.layers[2].training and m.head.training
    # a frozen stage runs as in eval: no stochastic depth
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = m.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        b = m.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    m.freeze_stages(3)  # all: a linear probe
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="cannot be undone"):
        m.freeze_stages(1)
    with pytest.raises(ValueError, match="num_stages must be <= 3"):
        m.freeze_stages(4)
