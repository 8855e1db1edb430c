"""Drop-in conversion of live timm / torchvision / transformers Swin models (float64, random weights)."""
import pytest
import torch

import swin_ext
from swin_ext import ConversionError, from_timm, from_torchvision, from_transformers

from swin_test_utils import randomize, rel_err

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")
F64 = torch.float64


def _same_outputs(src, dst, x, tol=1e-9):
    with torch.no_grad():
        want = src(x)
        want = getattr(want, "logits", want)
        got = dst(x)
    assert rel_err(got, want) <= tol


def test_from_timm_tiny_config_and_outputs():
    timm = pytest.importorskip("timm")
    src = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=7, embed_dim=32,
                            depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
    src = randomize(src).double().eval()
    m = from_timm(src)
    assert isinstance(m, swin_ext.SwinTransformer) and not m.training
    assert (m.embed_dim, m.depths, m.num_heads, m.window_size, m.num_classes) == (32, (2, 2, 2, 2), (1, 2, 4, 8), 7, 7)
    _same_outputs(src, m, torch.randn(2, 3, 224, 224, dtype=F64))


def test_from_timm_other_mlp_ratio_eps_and_no_qkv_bias():
    timm = pytest.importorskip("timm")
    from functools import partial

    src = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, embed_dim=24,
                            depths=(2, 2), num_heads=(2, 4), mlp_ratio=2.0, qkv_bias=False, img_size=112,
                            drop_path_rate=0.0, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    src = randomize(src).double().eval()
    m = from_timm(src)
    assert m.mlp_ratio == 2.0 and m.img_size == (112, 112)
    assert m.layers[0].blocks[0].attn.qkv.bias is None
    assert all(mod.eps == 1e-6 for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm))
    _same_outputs(src, m, torch.randn(2, 3, 112, 112, dtype=F64))


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (200, 180)])
def test_from_torchvision(size):
    tv = pytest.importorskip("torchvision")
    src = tv.models.swin_transformer._swin_transformer(
        patch_size=[4, 4],
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=[7, 7],
        stochastic_depth_prob=0.0,
        weights=None,
        progress=False,
        num_classes=5,
    )
    src = randomize(src).double().eval()
    m = from_torchvision(src)
    assert (m.embed_dim, m.depths, m.num_heads, m.window_size) == (96, (2, 2, 6, 2), (3, 6, 12, 24), 7)
    _same_outputs(src, m, torch.randn(1, 3, *size, dtype=F64))


def test_from_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SwinConfig(
        image_size=224,
        patch_size=4,
        embed_dim=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_size=7,
        num_labels=6,
        drop_path_rate=0.0,
        layer_norm_eps=1e-5,
    )
    src = randomize(transformers.SwinForImageClassification(cfg)).double().eval()
    m = from_transformers(src)
    assert m.num_classes == 6
    _same_outputs(src, m, torch.randn(2, 3, 224, 224, dtype=F64))


def test_unsupported_sources_are_clear_errors():
    with pytest.raises(ConversionError, match="expects timm.models.swin_transformer.SwinTransformer"):
        from_timm(torch.nn.Linear(2, 2))
    tv = pytest.importorskip("torchvision")
    with pytest.raises(ConversionError, match="expects torchvision.models.swin_transformer.SwinTransformer"):
        from_torchvision(tv.models.resnet18())
    with pytest.raises(ConversionError, match="Swin V2"):
        from_torchvision(tv.models.swin_v2_t())
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # timm's other V2 family (the Swin V2 models convert: tests/test_model_v2.py)
        cr = timm.create_model("swinv2_cr_tiny_ns_224", pretrained=False)
    with pytest.raises(ConversionError, match="swinv2_cr"):
        from_timm(cr)
    transformers = pytest.importorskip("transformers")
    with pytest.raises(ConversionError, match="Swinv2ForImageClassification and Swinv2Model"):
        from_transformers(
            transformers.Swinv2Backbone(transformers.Swinv2Config(embed_dim=16, depths=[1, 1], num_heads=[1, 2]))
        )
    with pytest.raises(ConversionError, match="model_type 'swin'"):
        from_transformers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_from_timm_reproduces_timms_shrunk_windows(version):
    # img_size 64, window 8: maps 16, 8, 4, 2 -- timm shrinks the last two stages' windows to 4 and 2
    timm = pytest.importorskip("timm")
    name = "swin_tiny_patch4_window7_224" if version == "v1" else "swinv2_tiny_window8_256"
    src = timm.create_model(name, pretrained=False, img_size=64, window_size=8, embed_dim=16, depths=(2, 2, 2, 2),
                            num_heads=(1, 2, 2, 4), num_classes=3)
    src = randomize(src, std=0.2).double().eval()
    m = from_timm(src)
    assert m.window_sizes == (8, 8, 4, 2)
    _same_outputs(src, m, torch.randn(2, 3, 64, 64, dtype=F64))


@pytest.mark.parametrize("img_size,window", [(64, 7), (224, 12)])
def test_from_timm_refuses_timms_shift_before_pad(img_size, window):
    # stage 0's map (16 or 56) is not a multiple of the window: timm rolls it before padding, swin_ext after
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        src = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size, window_size=window,
                                embed_dim=8, depths=(2,), num_heads=(1,), num_classes=3)
    with pytest.raises(ConversionError, match="shifts the map before padding it to a multiple of the window"):
        from_timm(src)

# ----------------------------------------------------------------------------- every constructor option
#
# Every constructor option of the peers (read from their signatures below: an option nobody classified
# fails test_every_peer_option_is_classified) with its cases: a supported value gets a parity test on
# random weights (logits <= 1e-9 relative in float64, <= 1e-5 in float32), a refused one a test of the
# error message.  docs/converters.md is the same table in words (test_converters_doc_lists_every_option).

import inspect  # noqa: E402
from functools import partial  # noqa: E402

import torch.nn as nn  # noqa: E402


def P(**kw):
    """A supported value: the copy computes the source's logits."""
    return ("supported", kw, None)


def R(match, **kw):
    """A refused value: ConversionError matching ``match``."""
    return ("refused", kw, match)


class _OtherNorm(nn.LayerNorm):
    """A norm with LayerNorm's parameters and another function: refused by the converters."""

    def forward(self, x):
        return super().forward(x) * 2


# Options the logits do not depend on share one parity case (the same object under each option's name).
_TIMM_DROPS = P(drop_rate=0.5, proj_drop_rate=0.5, attn_drop_rate=0.5, drop_path_rate=0.5)


_TIMM_PLACE = P(device="cpu", dtype=torch.float64)
_TV_DROPS = P(dropout=0.5, attention_dropout=0.5, stochastic_depth_prob=0.5)
_TV_BUILDER = P(weights=None, progress=True)
_HF_GENERIC = P(transformers_version="4.0.0", architectures=["SwinForImageClassification"], output_hidden_states=True,
                return_dict=False, dtype="float64", chunk_size_feed_forward=2, is_encoder_decoder=True,
                id2label={0: "a", 1: "b", 2: "c", 3: "d"}, label2id={"a": 0, "b": 1, "c": 2, "d": 3},
                problem_type="multi_label_classification", initializer_range=0.5, encoder_stride=16,
                out_features=["stage1"], out_indices=[1])
_HF_DROPS = P(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5, drop_path_rate=0.5)


def _timm_cases(v2):
    import timm

    class MyPatchEmbed(timm.layers.PatchEmbed):
        pass

    cases = {
        "img_size": [P(img_size=64), P(img_size=(32, 64))],
        "patch_size": [P(patch_size=2), R("non-square patches", patch_size=(2, 4))],
        "in_chans": [P(in_chans=1)],
        "num_classes": [P(num_classes=0), P(num_classes=5)],
        "global_pool": [P(global_pool="avg"), R(r"global_pool='max' is not supported", global_pool="max"),
                        R(r"global_pool='' is not supported", global_pool="")],
        "embed_dim": [P(embed_dim=24)],  # a tuple (one per stage) fails in timm itself
        # stage 2's 2 x 2 map: timm shrinks its window to 2
        "depths": [P(depths=(1, 2, 1), num_heads=(1, 2, 2))],
        "num_heads": [P(num_heads=(2, 4))],
        # maps 8 and 4: windows 8 (unshifted) and 4; per stage; 3 does not divide the shifted 8 x 8 map
        "window_size": [P(window_size=8), P(window_size=(4, 4)), P(window_size=((4, 4), (2, 2))),
                        R("before padding", window_size=3), R("not square", window_size=(4, 2))],
        # maps 16 and 8 are longer than the window: always_partition changes nothing there
        "always_partition": [P(always_partition=True, img_size=64),
                             R("always_partition=True is not supported", always_partition=True)],
        "strict_img_size": [P(strict_img_size=True), R("strict_img_size=False is not", strict_img_size=False)],
        "dynamic_img_size": [P(dynamic_img_size=False), R("dynamic_img_size=True", dynamic_img_size=True)],
        "mlp_ratio": [P(mlp_ratio=2.5)],
        "qkv_bias": [P(qkv_bias=False)],
        **{k: [_TIMM_DROPS] for k in ("drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")},
        "norm_layer": [P(norm_layer=partial(nn.LayerNorm, eps=1e-3)),
                       R("is a _OtherNorm \\(norm_layer\\)", norm_layer=_OtherNorm)],
        "device": [_TIMM_PLACE],
        "dtype": [_TIMM_PLACE],
    }
    if v2:
        cases.update({
            "act_layer": [P(act_layer="gelu"), P(act_layer=nn.GELU),
                          R("act_layer gives the MLP ReLU", act_layer="relu"),
                          R("act_layer gives the MLP GELUTanh", act_layer="gelu_tanh")],
            "pretrained_window_sizes": [P(pretrained_window_sizes=(8, 6))],
        })
    else:
        cases.update({
            "head_dim": [P(head_dim=16), R("head_dim set", head_dim=8)],
            "mlp_ratio": [P(mlp_ratio=2.5), R("mlp_ratio per stage", mlp_ratio=(2.0, 3.0))],
            "embed_layer": [P(embed_layer=timm.layers.PatchEmbed),
                            R("embed_layer=MyPatchEmbed is not supported", embed_layer=MyPatchEmbed)],
            "weight_init": [P(weight_init="jax")],
            # V1: the copy's always_partition; the 4 x 4 map (one window) is shifted too.  With window 8 timm
            # pads that map to 8 after shifting it (swin_ext pads first): refused
            "always_partition": [P(always_partition=True, img_size=64), P(always_partition=True),
                                 R("before padding", always_partition=True, window_size=8)],
        })
    return cases


def _torchvision_cases():
    from torchvision.models import swin_transformer as tv

    return {
        "patch_size": [P(patch_size=[2, 2]), R("non-square patches", patch_size=[2, 4])],
        "embed_dim": [P(embed_dim=24)],
        "depths": [P(depths=[1, 2, 1], num_heads=[1, 2, 2])],  # stage 2's 2 x 2 map padded to the window
        "num_heads": [P(num_heads=[2, 4])],
        "window_size": [P(window_size=[2, 2]), P(window_size=[8, 8]), R("non-square windows", window_size=[4, 2])],
        "mlp_ratio": [P(mlp_ratio=2.5)],
        "dropout": [_TV_DROPS],
        "attention_dropout": [_TV_DROPS],
        "stochastic_depth_prob": [_TV_DROPS],
        "num_classes": [P(num_classes=5)],
        "norm_layer": [P(norm_layer=partial(nn.LayerNorm, eps=1e-3)),
                       R("is a RMSNorm \\(norm_layer\\)", norm_layer=nn.RMSNorm),
                       R("is a _OtherNorm \\(norm_layer\\)", norm_layer=_OtherNorm)],
        "block": [P(block=tv.SwinTransformerBlock), R("Swin V2", block=tv.SwinTransformerBlockV2)],
        "downsample_layer": [P(downsample_layer=tv.PatchMerging), R("Swin V2", downsample_layer=tv.PatchMergingV2)],
        # the builders' own: the copy takes whatever weights the model holds (random ones here)
        "weights": [_TV_BUILDER],
        "progress": [_TV_BUILDER],
    }


def _transformers_cases(v2):
    cases = {
        # PretrainedConfig's fields and the backbone settings: nothing the logits depend on (the labels set the
        # classifier's width)
        **{k: [_HF_GENERIC] for k in ("transformers_version", "architectures", "output_hidden_states", "return_dict",
                                      "dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label",
                                      "label2id", "problem_type", "initializer_range", "encoder_stride",
                                      "_out_features", "_out_indices")},
        "image_size": [P(image_size=64),
                       # stage 1's 4 x 8 map: transformers shifts neither axis, swin_ext the longer one
                       R("swin_ext would use window 4 shifted by \\(0, 2\\)", image_size=(32, 64))],
        "patch_size": [P(patch_size=2), R("non-square patches", patch_size=(2, 4))],
        "num_channels": [P(num_channels=1)],
        "embed_dim": [P(embed_dim=24)],
        "depths": [P(depths=[1, 3])],
        "num_heads": [P(num_heads=[2, 4])],
        "window_size": [P(window_size=2)],
        "mlp_ratio": [P(mlp_ratio=2.5)],
        "qkv_bias": [P(qkv_bias=False)],
        **{k: [_HF_DROPS] for k in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")},
        "hidden_act": [P(hidden_act="gelu"), R("hidden_act='relu' is not supported", hidden_act="relu"),
                       R("hidden_act='gelu_new' is not supported", hidden_act="gelu_new")],
        "use_absolute_embeddings": [P(use_absolute_embeddings=False),
                                    R("use_absolute_embeddings=True", use_absolute_embeddings=True)],
        "layer_norm_eps": [P(layer_norm_eps=1e-3)],  # the embedding and merging norms stay at 1e-5
    }
    if v2:
        # windows fixed per stage at construction: stage 2's 2 x 2 map gets a window of 2
        cases["depths"] = [P(depths=[1, 3]), P(depths=[1, 2, 1], num_heads=[1, 2, 2])]
        cases["window_size"] = [P(window_size=2), P(window_size=8)]
        # the config's default (4 entries) on 2 stages: transformers reads the first two
        cases["pretrained_window_sizes"] = [P(pretrained_window_sizes=(0, 0, 0, 0)), P(pretrained_window_sizes=(8, 6))]
        cases["image_size"][1] = R("swin_ext would use window 4 shifted by \\(0, 2\\)", image_size=(32, 64))
    else:
        cases["depths"] = [P(depths=[1, 3]), R("smaller than window_size 4", depths=[1, 1, 1], num_heads=[1, 2, 2])]
        cases["window_size"] = [P(window_size=2), R("smaller than window_size 8", window_size=8)]
    return cases


# base configurations: 32 x 32 images, maps 8 x 8 (windows of 4, shifted) and 4 x 4 (one unshifted window)
_TIMM_BASE = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=3)
_TV_BASE = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4],
                stochastic_depth_prob=0.0, weights=None, progress=False, num_classes=3)
_HF_BASE = dict(image_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)


def _peer(name):
    """(constructor signatures, cases, build(**kw) -> source, convert)."""
    if name.startswith("timm"):
        timm = pytest.importorskip("timm")
        cls = (timm.models.swin_transformer_v2.SwinTransformerV2 if "v2" in name.lower()
               else timm.models.swin_transformer.SwinTransformer)
        return [cls.__init__], _timm_cases("v2" in name.lower()), (lambda **kw: cls(**{**_TIMM_BASE, **kw})), from_timm
    if name.startswith("torchvision"):
        tvm = pytest.importorskip("torchvision").models.swin_transformer
        sigs = [tvm.SwinTransformer.__init__, tvm.swin_t, tvm.swin_v2_t]
        return sigs, _torchvision_cases(), (lambda **kw: tvm._swin_transformer(**{**_TV_BASE, **kw})), from_torchvision
    transformers = pytest.importorskip("transformers")
    v2 = "v2" in name.lower()
    cfg_cls = transformers.Swinv2Config if v2 else transformers.SwinConfig
    model_cls = transformers.Swinv2ForImageClassification if v2 else transformers.SwinForImageClassification
    return [cfg_cls.__init__], _transformers_cases(v2), (lambda **kw: model_cls(cfg_cls(**{**_HF_BASE, **kw}))), \
        from_transformers


PEERS = ["timm SwinTransformer", "timm SwinTransformerV2", "torchvision SwinTransformer", "transformers SwinConfig",
         "transformers Swinv2Config"]


def _signature_options(sigs):
    out = set()
    for f in sigs:
        for n, p in inspect.signature(f).parameters.items():
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out.add(n)
    return out


@pytest.mark.parametrize("peer", PEERS)
def test_every_peer_option_is_classified(peer):
    sigs, cases, _, _ = _peer(peer)
    options = _signature_options(sigs)
    assert set(cases) == options, (f"unclassified: {sorted(options - set(cases))}; "
                                   f"not an option: {sorted(set(cases) - options)}")


def _status(cases):
    kinds = {k for k, _, _ in cases}
    return "supported" if kinds == {"supported"} else "refused" if kinds == {"refused"} else "partly"


def test_converters_doc_lists_every_option():
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "converters.md")
    text = open(path).read()
    for peer in PEERS:
        sigs, cases, _, _ = _peer(peer)
        section = text.split(f"## {peer}\n", 1)[1].split("\n## ", 1)[0]
        rows = dict(re.findall(r"^\| `([\w]+)` \| (supported|refused|partly) \|", section, re.M))
        assert rows == {o: _status(c) for o, c in cases.items()}, peer


def _option_cases():
    for peer in PEERS:
        try:
            _, cases, _, _ = _peer(peer)
        except pytest.skip.Exception:
            continue
        seen = set()  # a case shared by several options runs once
        for option, cs in cases.items():
            for i, (kind, kw, match) in enumerate(cs):
                key = (kind, repr(sorted(kw.items(), key=lambda kv: kv[0])), match)
                if key not in seen:
                    seen.add(key)
                    yield pytest.param(peer, option, i, id=f"{peer.replace(' ', '-')}-{option}-{i}-{kind}")


@pytest.mark.parametrize("peer,option,i", list(_option_cases()))
def test_peer_option(peer, option, i):
    _, cases, build, convert = _peer(peer)
    kind, kw, match = cases[option][i]
    src = build(**kw)
    if kind == "refused":
        with pytest.raises(ConversionError, match=match):
            convert(src)
        return
    src = randomize(src, std=0.2).double().eval()
    if getattr(src, "config", None) is not None:
        src.config.return_dict = True  # the copy does not depend on it; transformers' own forward needs it
    m = convert(src)
    assert isinstance(m, swin_ext.SwinTransformerV2) == ("v2" in peer.lower())
    img = kw.get("img_size", kw.get("image_size", 32))
    img = img if isinstance(img, tuple) else (img, img)
    chans = kw.get("in_chans", kw.get("num_channels", 3))
    x = torch.randn(1, chans, *img, dtype=F64)
    _same_outputs(src, m, x, tol=1e-9)
    _same_outputs(src.float(), m.float(), x.float(), tol=1e-5)
