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
