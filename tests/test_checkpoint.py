"""load_pretrained / create_model: every checkpoint layout, parity with timm,
torchvision and transformers, bias-table resizing, and bad checkpoints."""
import math
import os
import pickle
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import swin_ext
from swin_ext import CheckpointError, SwinTransformer, create_model, load_pretrained
from swin_ext.layers.pos_bias import relative_position_index

from swin_test_utils import (
    CHILD_HARNESS,
    DEPTHS,
    EMBED,
    HEADS,
    NCLS,
    WINDOW,
    Evil,
    assert_unchanged,
    flip_tensor_byte,
    randomize,
    rel_err,
    run_child,
    small,
    snapshot,
)

pytestmark = pytest.mark.skipif(not swin_ext.HAS_OPS, reason="compiled ops not built")


# ----------------------------------------------------------------------------- libraries


def timm_small(**kw):
    timm = pytest.importorskip("timm")
    cfg = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOW, num_classes=NCLS)
    cfg.update(kw)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **cfg)


def tv_small():
    tvs = pytest.importorskip("torchvision.models.swin_transformer")
    return tvs.SwinTransformer(patch_size=[4, 4], embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS),
                               window_size=[WINDOW, WINDOW], num_classes=NCLS)


def hf_config(**kw):
    transformers = pytest.importorskip("transformers")
    cfg = dict(image_size=224, patch_size=4, embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS),
               window_size=WINDOW, num_labels=NCLS, drop_path_rate=0.0)
    cfg.update(kw)
    return transformers.SwinConfig(**cfg)


def hf_to_classic(sd):
    """The hub files' naming (attention.self.query/key/value, output.dense, intermediate.dense)."""
    out = {}
    for k, v in sd.items():
        k = (k.replace("attention.q_proj.", "attention.self.query.")
              .replace("attention.k_proj.", "attention.self.key.")
              .replace("attention.v_proj.", "attention.self.value.")
              .replace("attention.o_proj.", "attention.output.dense.")
              .replace("attention.relative_position_bias.relative_position_bias_table",
                       "attention.self.relative_position_bias_table")
              .replace("mlp.fc1.", "intermediate.dense.")
              .replace("mlp.fc2.", "output.dense."))
        out[k] = v
        if k.endswith("attention.self.relative_position_bias_table"):  # a persistent buffer in the hub files
            out[k.replace("relative_position_bias_table", "relative_position_index")] = relative_position_index(
                (math.isqrt(v.shape[0]) + 1) // 2
            )
    return out


def hf_to_new(sd):
    """The current transformers naming (q_proj/k_proj/v_proj/o_proj, mlp.fc1/fc2)."""
    out = {}
    for k, v in sd.items():
        k = (
            k.replace("attention.self.query.", "attention.q_proj.")
            .replace("attention.self.key.", "attention.k_proj.")
            .replace("attention.self.value.", "attention.v_proj.")
            .replace("attention.output.dense.", "attention.o_proj.")
            .replace(
                "attention.self.relative_position_bias_table",
                "attention.relative_position_bias.relative_position_bias_table",
            )
            .replace("intermediate.dense.", "mlp.fc1.")
            .replace("output.dense.", "mlp.fc2.")
        )
        out[k] = v
    return out


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_timm_parity(backend):
    ref = randomize(timm_small()).double().eval()
    sd = ref.state_dict()
    assert "head.fc.weight" in sd and "layers.1.downsample.reduction.weight" in sd
    m = small(backend=backend).double().eval()
    res = load_pretrained(m, sd)
    assert res.format == "timm" and not res.missing_keys and not res.unexpected_keys
    assert len(res.loaded) == len(m.state_dict())
    # stage 0's merging moved from timm's layers.1 to the end of our stage 0
    assert torch.equal(m.layers[0].downsample.reduction.weight, ref.layers[1].downsample.reduction.weight)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), ref(x)) <= 1e-9


def test_torchvision_parity_divisible_and_not():
    ref = randomize(tv_small()).double().eval()
    sd = ref.state_dict()
    assert "features.0.0.weight" in sd and "features.1.0.mlp.3.weight" in sd
    m = small().double().eval()
    res = load_pretrained(m, sd)
    assert res.format == "torchvision" and not res.missing_keys and not res.unexpected_keys
    assert any(k.endswith("relative_position_index") for k in res.ignored_keys)
    # 224: window-divisible; 100x132 -> maps 25x33, 13x17, 7x9, 4x5: padded, shifted along one
    # axis only (7x9), not shifted (4x5); 92x60 -> odd merges and a map smaller than the window.
    for size in [(224, 224), (100, 132), (92, 60)]:
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(m(x), ref(x)) <= 1e-9, size


def test_torchvision_parity_reference_backend_non_divisible():
    ref = randomize(tv_small()).double().eval()
    m = small(backend="reference").double().eval()
    load_pretrained(m, ref.state_dict())
    x = torch.randn(1, 3, 100, 132, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), ref(x)) <= 1e-9


def test_transformers_defaults_match():
    cfg = pytest.importorskip("transformers").SwinConfig()
    assert cfg.layer_norm_eps == 1e-5 and cfg.hidden_act == "gelu"  # nn.LayerNorm default, exact GELU
    assert cfg.qkv_bias and cfg.mlp_ratio == 4.0 and not cfg.use_absolute_embeddings
    m = small()
    assert all(mod.eps == 1e-5 for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm))
    assert m.layers[0].blocks[0].mlp.act.approximate == "none"


def test_transformers_parity_both_namings():
    transformers = pytest.importorskip("transformers")
    ref = randomize(transformers.SwinForImageClassification(hf_config())).double().eval()
    native = ref.state_dict()
    uses_new = any(".attention.q_proj." in k for k in native)
    named = {"new": hf_to_new(native), "classic": hf_to_classic(native)}
    assert named["new" if uses_new else "classic"].keys() == native.keys()
    assert any("attention.self.query" in k for k in named["classic"])
    assert any(k.endswith("attention.self.relative_position_index") for k in named["classic"])
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        want = ref(pixel_values=x).logits
    loaded = []
    for name, sd in named.items():
        m = small().double().eval()
        res = load_pretrained(m, sd)
        assert res.format == "transformers" and not res.missing_keys and not res.unexpected_keys, name
        with torch.no_grad():
            assert rel_err(m(x), want) <= 1e-9, name
        loaded.append(m.state_dict())
    for k in loaded[0]:
        assert torch.equal(loaded[0][k], loaded[1][k])


def test_transformers_non_divisible_sizes_where_no_window_is_clamped():
    # transformers pads then shifts too; it clamps the window when a map is smaller than it,
    # which we do not (and which breaks its static bias): compare where every map is > window.
    transformers = pytest.importorskip("transformers")
    ref = randomize(transformers.SwinForImageClassification(hf_config(window_size=4))).double().eval()
    m = small(window_size=4).double().eval()
    load_pretrained(m, ref.state_dict())
    x = torch.randn(1, 3, 200, 264, dtype=torch.float64)  # maps 50x66, 25x33, 13x17, 7x9
    with torch.no_grad():
        assert rel_err(m(x), ref(pixel_values=x).logits) <= 1e-9


def test_transformers_swin_model_without_prefix_and_classifier():
    transformers = pytest.importorskip("transformers")
    ref = randomize(transformers.SwinModel(hf_config(), add_pooling_layer=False)).double().eval()
    sd = ref.state_dict()
    assert not any(k.startswith(("swin.", "classifier.")) for k in sd)
    m = small(num_classes=0).double().eval()
    res = load_pretrained(m, hf_to_classic(sd))
    assert res.format == "transformers" and not res.missing_keys
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state  # (B, 49, C)
        got = m.forward_features(x)
    assert rel_err(got.flatten(1, 2), want) <= 1e-9


# One full-size Swin-T per library: every key of the real layout converts.
@pytest.mark.slow
@pytest.mark.parametrize("lib", ["timm", "torchvision", "transformers"])
def test_full_size_swin_t_from_each_library(lib):
    if lib == "timm":
        timm = pytest.importorskip("timm")
        ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
        call = ref
    elif lib == "torchvision":
        tvm = pytest.importorskip("torchvision.models")
        ref = tvm.swin_t(weights=None)
        call = ref
    else:
        transformers = pytest.importorskip("transformers")
        ref = transformers.SwinForImageClassification(transformers.SwinConfig(num_labels=1000))
        call = lambda x: ref(pixel_values=x).logits  # noqa: E731
    ref.eval()
    randomize(ref, std=0.02)
    m = swin_ext.swin_t().eval()
    res = load_pretrained(m, ref.state_dict())
    assert res.format == lib and len(res.loaded) == 173
    assert not res.missing_keys and not res.unexpected_keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(m(x), call(x)) <= 1e-4  # float32


# ----------------------------------------------------------------------------- official layout, files


def official_checkpoint(model):
    """Our state dict plus the buffers the official code saves."""
    sd = dict(model.state_dict())
    for i, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.blocks):
            n = blk.window_size**2
            sd[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = relative_position_index(blk.window_size)
            if j % 2:
                sd[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, n, n)
    return sd


@pytest.mark.parametrize("flatten", [False, True])
def test_nonstandard_relative_position_index_is_refused(flatten):
    """A checkpoint whose bias lookup differs from the standard index cannot be reproduced: refused, model kept."""
    src, dst = randomize(small()), small()
    sd = official_checkpoint(src)
    key = "layers.1.blocks.0.attn.relative_position_index"
    idx = sd[key].clone()
    idx[0, 1], idx[1, 0] = idx[1, 0].item(), idx[0, 1].item()  # two lookups swapped
    sd[key] = idx.reshape(-1) if flatten else idx
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"layers\.1\.blocks\.0\.attn\.relative_position_index.*not the standard"):
        load_pretrained(dst, sd)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    sd[key] = relative_position_index(src.layers[1].blocks[0].window_size).reshape(sd[key].shape)
    load_pretrained(dst, sd)  # the standard index, in either shape, loads


def test_official_layout_with_buffers_and_wrappers(tmp_path):
    src = randomize(small())
    sd = official_checkpoint(src)
    variants = {
        "plain.pth": sd,
        "wrapped.pth": {"model": sd, "epoch": 3, "max_accuracy": 81.2, "optimizer": {"state": {}}},
        "lightning.ckpt": {"state_dict": {"module." + k: v for k, v in sd.items()}},
        "hf.bin": sd,
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for source in [sd, *(tmp_path / n for n in variants), tmp_path / "w.safetensors", str(tmp_path / "w.safetensors")]:
        m = small()
        res = load_pretrained(m, source)
        assert res.format == "official" and not res.missing_keys and not res.unexpected_keys, source
        assert any(k.endswith("attn_mask") for k in res.ignored_keys)
        for k, v in src.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), (source, k)


def test_safetensors_content_under_another_suffix(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    src = randomize(small())
    save_file(dict(src.state_dict()), str(tmp_path / "weights.pth"))
    m = small()
    load_pretrained(m, tmp_path / "weights.pth")
    assert torch.equal(m.head.weight, src.head.weight)


def test_source_dict_is_not_modified():
    src = randomize(timm_small())
    sd = dict(src.state_dict())
    keys = list(sd)
    load_pretrained(small(), sd)
    assert list(sd) == keys


def test_load_casts_to_model_dtype():
    src = randomize(small()).half()
    m = small().double()
    load_pretrained(m, src.state_dict())
    assert m.head.weight.dtype == torch.float64
    assert torch.equal(m.head.weight, src.head.weight.double())


# ----------------------------------------------------------------------------- bias-table resize


def test_relative_position_table_bicubic_resize_7_to_12():
    src = randomize(small())
    m = small(window_size=12)
    res = load_pretrained(m, src.state_dict())
    n_tables = sum(DEPTHS)
    assert len(res.resized_keys) == n_tables
    for i, heads in enumerate(HEADS):
        for j in range(DEPTHS[i]):
            old = src.layers[i].blocks[j].attn.relative_position_bias_table.detach()
            new = m.layers[i].blocks[j].attn.relative_position_bias_table.detach()
            assert old.shape == (13 * 13, heads) and new.shape == (23 * 23, heads)
            want = F.interpolate(old.permute(1, 0).reshape(1, heads, 13, 13), size=(23, 23), mode="bicubic")
            torch.testing.assert_close(new, want.reshape(heads, 23 * 23).permute(1, 0), rtol=0, atol=0)
    # everything else is copied unchanged and the model runs at 384
    assert torch.equal(m.layers[2].blocks[1].attn.qkv.weight, src.layers[2].blocks[1].attn.qkv.weight)
    assert m.eval()(torch.randn(1, 3, 384, 384)).shape == (1, NCLS)


def test_relative_position_table_resize_12_to_7_and_same_size_untouched():
    src = randomize(small(window_size=12))
    m = small()
    res = load_pretrained(m, src.state_dict())
    assert m.layers[3].blocks[1].attn.relative_position_bias_table.shape == (169, 8)
    assert len(res.resized_keys) == sum(DEPTHS)
    assert load_pretrained(small(), randomize(small()).state_dict()).resized_keys == []


# ----------------------------------------------------------------------------- num_classes


def test_num_classes_mismatch_strict_raises_and_changes_nothing():
    src = randomize(small(num_classes=1000))
    m = small()
    snap = snapshot(m)
    with pytest.raises(CheckpointError, match=r"num_classes differs: checkpoint 1000, model 5.*strict=False"):
        load_pretrained(m, src.state_dict())
    assert_unchanged(m, snap)


def test_num_classes_mismatch_non_strict_keeps_new_head():
    src = randomize(small(num_classes=1000))
    m = small()
    head = m.head.weight.detach().clone()
    with pytest.warns(UserWarning, match="head was not loaded"):
        res = load_pretrained(m, src.state_dict(), strict=False)
    assert res.new_head and "1000" in res.new_head and "5" in res.new_head
    assert set(res.initialized_keys) == {"head.weight", "head.bias"}
    assert "head.weight" in res.ignored_keys and not res.missing_keys and not res.unexpected_keys
    assert torch.equal(m.head.weight, head)
    assert torch.equal(m.norm.weight, src.norm.weight)
    assert torch.equal(m.layers[1].blocks[1].mlp.fc2.weight, src.layers[1].blocks[1].mlp.fc2.weight)
    assert "kept the model's own head" in str(res)


def test_headless_checkpoint_into_classifier_and_back():
    src = randomize(small(num_classes=0))
    with pytest.raises(CheckpointError, match="no classification head"):
        load_pretrained(small(), src.state_dict())
    with pytest.warns(UserWarning):
        res = load_pretrained(small(), src.state_dict(), strict=False)
    assert res.new_head is not None
    # a classifier checkpoint into a num_classes=0 model
    with pytest.raises(CheckpointError, match="num_classes differs: checkpoint 5, model 0"):
        load_pretrained(small(num_classes=0), randomize(small()).state_dict())


# ----------------------------------------------------------------------------- wrong architecture


def test_wrong_architecture_lists_mismatches_and_changes_nothing():
    src = randomize(
        SwinTransformer(embed_dim=48, depths=(2, 2, 4, 2), num_heads=(2, 4, 8, 16), window_size=7, num_classes=NCLS)
    )
    m = small()
    snap = snapshot(m)
    with pytest.raises(CheckpointError) as ei:
        load_pretrained(m, src.state_dict(), strict=False)
    msg = str(ei.value)
    assert "does not match the model's architecture" in msg
    assert "embed_dim: checkpoint 48, model 32" in msg
    assert "depths: checkpoint (2, 2, 4, 2), model (2, 2, 2, 2)" in msg
    assert "num_heads: checkpoint (2, 4, 8, 16), model (1, 2, 4, 8)" in msg
    assert_unchanged(m, snap)


def test_wrong_heads_only():
    src = randomize(small(num_heads=(2, 4, 8, 16)))
    with pytest.raises(CheckpointError, match=r"num_heads: checkpoint \(2, 4, 8, 16\), model \(1, 2, 4, 8\)"):
        load_pretrained(small(), src.state_dict())


def test_wrong_patch_size_in_chans_and_mlp():
    with pytest.raises(CheckpointError, match="patch_size: checkpoint 2, model 4"):
        load_pretrained(small(), randomize(small(patch_size=2)).state_dict())
    with pytest.raises(CheckpointError, match="in_chans: checkpoint 1, model 3"):
        load_pretrained(small(), randomize(small(in_chans=1)).state_dict())
    with pytest.raises(CheckpointError, match="mlp_hidden: checkpoint 64, model 128"):
        load_pretrained(small(), randomize(small(mlp_ratio=2.0)).state_dict())


def test_failed_load_late_in_validation_changes_nothing():
    # Everything fits except one tensor near the end: nothing may have been copied.
    src = randomize(small())
    sd = dict(src.state_dict())
    sd["norm.weight"] = torch.randn(7)
    m = small()
    snap = snapshot(m)
    with pytest.raises(CheckpointError, match=r"norm.weight.*\(7,\).*\(256,\)"):
        load_pretrained(m, sd)
    assert_unchanged(m, snap)


def test_missing_and_unexpected_keys():
    src = randomize(small())
    sd = dict(src.state_dict())
    del sd["layers.1.blocks.0.norm2.bias"]
    m = small()
    snap = snapshot(m)
    with pytest.raises(CheckpointError, match="missing from the checkpoint.*layers.1.blocks.0.norm2.bias"):
        load_pretrained(m, sd)
    assert_unchanged(m, snap)
    res = load_pretrained(m, sd, strict=False)
    assert res.missing_keys == ["layers.1.blocks.0.norm2.bias"]
    assert torch.equal(m.layers[1].blocks[0].norm2.bias, snap["layers.1.blocks.0.norm2.bias"])
    assert torch.equal(m.layers[1].blocks[0].norm2.weight, src.layers[1].blocks[0].norm2.weight)

    sd = dict(src.state_dict(), absolute_pos_embed=torch.zeros(1, 3136, 32))
    m = small()
    with pytest.raises(CheckpointError, match="not used by the model.*absolute_pos_embed"):
        load_pretrained(m, sd)
    res = load_pretrained(m, sd, strict=False)
    assert res.unexpected_keys == ["absolute_pos_embed"]


def test_incomplete_qkv_and_swin_v2():
    transformers = pytest.importorskip("transformers")
    sd = dict(transformers.SwinModel(hf_config()).state_dict())
    k = next(k for k in sd if k.endswith("attention.k_proj.weight") or k.endswith("attention.self.key.weight"))
    del sd[k]
    with pytest.raises(CheckpointError, match="incomplete query/key/value"):
        load_pretrained(small(num_classes=0), sd)
    sd = dict(small().state_dict(), **{"layers.0.blocks.0.attn.logit_scale": torch.zeros(1, 1, 1)})
    with pytest.raises(CheckpointError, match="Swin V2"):
        load_pretrained(small(), sd)


# ----------------------------------------------------------------------------- bad files


class _NotATensor:
    pass


def test_bad_files(tmp_path):
    m = small()
    snap = snapshot(m)
    good = tmp_path / "good.pth"
    torch.save(randomize(small()).state_dict(), good)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt.pth: not a readable PyTorch checkpoint"):
        load_pretrained(m, corrupt)

    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_pretrained(m, text)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_pretrained(m, empty)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.randn(3), tensor)
    with pytest.raises(CheckpointError, match="expected a dict of tensors, got Tensor"):
        load_pretrained(m, tensor)

    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(8, 3, 7, 7), "fc.weight": torch.randn(10, 8)}, other)
    with pytest.raises(CheckpointError, match="not a Swin Transformer checkpoint"):
        load_pretrained(m, other)

    nothing = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, nothing)
    with pytest.raises(CheckpointError, match="no tensors found"):
        load_pretrained(m, nothing)

    pickled = tmp_path / "pickled.pth"
    with open(pickled, "wb") as f:
        pickle.dump({"model": _NotATensor()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_pretrained(m, pickled)

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_pretrained(m, bad_st)

    with pytest.raises(FileNotFoundError):
        load_pretrained(m, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="directory"):
        load_pretrained(m, tmp_path)
    with pytest.raises(TypeError, match="path or a state dict"):
        load_pretrained(m, 3)
    with pytest.raises(TypeError, match="SwinTransformer"):
        load_pretrained(torch.nn.Linear(2, 2), good)
    assert_unchanged(m, snap)


def test_torch_save_of_whole_module_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(small(), path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_pretrained(small(), path)


# ----------------------------------------------------------------------------- create_model


def test_create_model_names_and_sizes():
    names = swin_ext.list_models()
    for n in [
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224",
        "swin_base_patch4_window12_384",
        "swin_large_patch4_window7_224",
        "swin_large_patch4_window12_384",
        "swin_base_patch4_window12_384_22k",
        "swin_t",
        "swin_l",
    ]:
        assert n in names
    expected = {  # the official / timm parameter counts
        "swin_tiny_patch4_window7_224": 28_288_354,
        "swin_base_patch4_window12_384": 87_903_584,
        "swin_large_patch4_window12_384": 196_735_516,
        "swin_large_patch4_window7_224_22k": 196_532_476 + (1536 + 1) * (21841 - 1000),
    }
    with torch.device("meta"):
        for name, n in expected.items():
            m = create_model(name)
            assert sum(p.numel() for p in m.parameters()) == n, name
        m = create_model("swin_base_patch4_window12_384")
    assert m.window_size == 12 and m.img_size == (384, 384) and m.embed_dim == 128
    with torch.device("meta"):
        assert round(m.flops() / 1e9, 1) == 47.1
        assert create_model("swin_t", num_classes=10, backend="reference").num_classes == 10


def test_create_model_bad_names_and_pretrained_true():
    with pytest.raises(ValueError, match="did you mean.*swin_tiny_patch4_window7_224"):
        create_model("swin_tiny_patch4_window7_22")
    with pytest.raises(ValueError, match="downloads nothing"):
        create_model("swin_t", pretrained=True)


def test_create_model_pretrained_path(tmp_path):
    small_kw = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, drop_path_rate=0.0)
    src = randomize(timm_small(num_classes=1000))
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    m = create_model("swin_tiny_patch4_window7_224", pretrained=path, **small_kw)
    assert m.pretrained_result.format == "timm" and torch.equal(m.head.weight, src.head.fc.weight)
    # window 12 variant from a window-7 checkpoint: tables resized
    m = create_model("swin_base_patch4_window12_384", pretrained=str(path), **small_kw)
    assert len(m.pretrained_result.resized_keys) == sum(DEPTHS)
    # an explicit num_classes asks for a new head: no error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = create_model("swin_tiny_patch4_window7_224", pretrained=path, num_classes=10, **small_kw)
    assert m.head.weight.shape == (10, 256) and m.pretrained_result.new_head
    # but the architecture still has to match
    with pytest.raises(CheckpointError, match="embed_dim"):
        create_model(
            "swin_tiny_patch4_window7_224", pretrained=path, embed_dim=64, depths=DEPTHS, num_heads=(2, 4, 8, 16)
        )


# ----------------------------------------------------------------------------- bad files and values
# (a failed load leaves the model bitwise unchanged)


def _tiny_model(**kw):
    cfg = dict(
        img_size=32,
        patch_size=4,
        embed_dim=8,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=2,
        num_classes=3,
        drop_path_rate=0.0,
    )
    cfg.update(kw)
    return SwinTransformer(**cfg)


def _source_sd():
    torch.manual_seed(7)
    src = _tiny_model()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.3)
    return src.state_dict()


def _sd_with(**repl):
    sd = dict(_source_sd())
    for k, v in repl.items():
        k = k.replace("__", ".")
        sd[k] = v(sd[k]) if callable(v) else v
    return sd


def _late():  # the last key of the state dict: copied last, after all the others
    return list(_tiny_model().state_dict())[-1]


def _file_case(name, tmp_path):
    """``(source for load_pretrained, expected message regex, forbidden message text)``."""
    p = tmp_path / f"{name}.pth"
    if name == "flipped-byte":  # was: loaded silently, model changed
        torch.save(_source_sd(), p)
        entry = flip_tensor_byte(p)
        return p, rf"damaged: the stored checksum \(CRC-32\) of its entry '{entry}'", None
    if name == "garbage-text":  # was: "holds objects other than tensors", advice to turn off weights_only
        p.write_text("this is not a checkpoint\n")
        return p, "not a readable PyTorch checkpoint: damaged or not written by torch.save", "weights_only=False"
    if name == "random-bytes":  # was: "holds objects other than tensors", advice to turn off weights_only
        p.write_bytes(bytes(range(256)) * 8)
        return p, "not a readable PyTorch checkpoint.*Unsupported operand", "weights_only=False"
    if name == "truncated":
        torch.save(_source_sd(), p)
        p.write_bytes(p.read_bytes()[:-200])
        return p, "not a readable PyTorch checkpoint", "weights_only=False"
    if name == "empty":
        p.write_bytes(b"")
        return p, "the file is empty", "weights_only=False"
    if name == "pickled-object":  # the genuine case: names the global, nothing executed
        marker = tmp_path / "marker"
        with open(p, "wb") as f:
            pickle.dump({"model": Evil(str(marker))}, f, protocol=2)
        return p, r"holds objects other than tensors.*io\.open", None
    if name == "directory":
        return tmp_path, "is a directory", None
    if name == "char-device":
        return "/dev/zero", "is a device, not a regular file", None  # was: read forever
    if name == "missing":
        return tmp_path / "nope.pth", None, None
    raise KeyError(name)


@pytest.mark.parametrize(
    "name",
    [
        "flipped-byte",
        "garbage-text",
        "random-bytes",
        "truncated",
        "empty",
        "pickled-object",
        "directory",
        "char-device",
        "missing",
    ],
)
def test_load_pretrained_bad_file(name, tmp_path):
    m = _tiny_model()
    snap = snapshot(m)
    src, match, forbidden = _file_case(name, tmp_path)
    before = open(src, "rb").read() if os.path.isfile(src) else None
    if match is None:
        with pytest.raises(FileNotFoundError, match="not found"):
            load_pretrained(m, src)
    else:
        with pytest.raises(CheckpointError, match=match) as ei:
            load_pretrained(m, src)
        assert forbidden is None or forbidden not in str(ei.value)
        if name != "char-device":
            assert str(src) in str(ei.value)
    assert_unchanged(m, snap)
    assert not (tmp_path / "marker").exists()
    if before is not None:
        assert open(src, "rb").read() == before  # the file is left as it was


STATE_DICT_CASES = [
    # (id, state dict factory, message regex); the late key is copied last
    (
        "meta-late",
        lambda: _sd_with(**{_late(): lambda v: torch.empty_like(v, device="meta")}),
        "is a meta tensor",
    ),  # was: earlier parameters overwritten, then a copy error
    (
        "sparse-late",
        lambda: _sd_with(**{_late(): lambda v: v.to_sparse()}),
        "has layout torch.sparse_coo",
    ),  # was: ditto
    ("nan-late", lambda: _sd_with(**{_late(): lambda v: v.clone().fill_(float("nan"))}), "values are NaN or infinite"),
    ("inf-late", lambda: _sd_with(**{_late(): lambda v: v.clone().fill_(float("inf"))}), "values are NaN or infinite"),
    ("overflows-float32", lambda: _sd_with(**{_late(): lambda v: v.double().fill_(1e300)}), "beyond the range"),
    ("int-for-float", lambda: _sd_with(**{_late(): lambda v: v.long()}), "checkpoint dtype torch.int64"),
    (
        "complex-for-float",
        lambda: _sd_with(**{_late(): lambda v: v.to(torch.complex64)}),
        "checkpoint dtype torch.complex64",
    ),
    (
        "even-sided-table",
        lambda: _sd_with(**{"layers.1.blocks.0.attn.relative_position_bias_table": torch.randn(16, 2)}),
        r"its length 16 is not \(2 \* window - 1\) \*\* 2",
    ),
    # was: resized to the model's window
]


@pytest.mark.parametrize("make,match", [pytest.param(*c[1:], id=c[0]) for c in STATE_DICT_CASES])
def test_load_pretrained_bad_values_leave_model_bitwise_unchanged(make, match, tmp_path):
    for as_file in (False, True):
        m = _tiny_model()
        snap = snapshot(m)
        sd = make()
        src = sd
        if as_file:
            src = tmp_path / "sd.pth"
            torch.save(sd, src)
        with pytest.raises(CheckpointError, match=match):
            load_pretrained(m, src)
        assert_unchanged(m, snap)


def test_load_pretrained_good_file_still_loads(tmp_path):
    p = tmp_path / "good.pth"
    sd = _source_sd()
    torch.save({"model": sd}, p)
    m = _tiny_model()
    res = load_pretrained(m, p)
    assert len(res.loaded) == len(sd)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_fifo_is_refused_not_opened_in_a_child_process(tmp_path):
    """A FIFO blocked ``open`` forever (load_pretrained and --resume auto)."""
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "last.pt")
    code = (
        CHILD_HARNESS
        + rf"""
from swin_ext import train as T
m = swin_ext.SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2,
                             num_classes=3)
case("load_pretrained", lambda: swin_ext.load_pretrained(m, {str(fifo)!r}))
case("load_checkpoint", lambda: T.load_checkpoint({str(run_dir / "last.pt")!r}))
print(json.dumps(results))
"""
    )
    r = run_child(code)
    for name in ("load_pretrained", "load_checkpoint"):
        assert r[name].startswith("CheckpointError:") and "is a FIFO (named pipe), not a regular file" in r[name], r


# ----------------------------------------------------------------------------- crafted archives (issue 17)


def _tiny():
    return SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2,
                           num_classes=3, drop_path_rate=0.0)


def _zip_bomb(path, entries=1000, size=1 << 20, method=8, name="archive/data/0"):
    """A zip whose directory lists ``entries`` entries that all share one local header and one data
    stream (deflate of ``size`` zero bytes, or the bytes themselves stored): reading every entry
    decompresses ``entries * size`` bytes from a file of a few kB."""
    import binascii
    import struct
    import zlib

    raw = bytes(size)
    if method == 8:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = comp.compress(raw) + comp.flush()
    else:
        data = raw
    crc, fname = binascii.crc32(raw), name.encode()
    body = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(fname), 0)
    body += fname + data
    record = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), size, len(fname),
                         0, 0, 0, 0, 0, 0) + fname
    cd = record * entries
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(cd), len(body), 0)
    path.write_bytes(body + cd + eocd)
    return path


def _bomb_entry_points():
    from swin_ext import train as T

    return {
        "load_pretrained": lambda p: load_pretrained(_tiny(), p),
        "create_model": lambda p: create_model("swin_tiny_patch4_window7_224", pretrained=p, embed_dim=8,
                                               depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        "fpn_backbone": lambda p: swin_ext.fpn_backbone("swin_tiny_patch4_window7_224", pretrained=p, embed_dim=8,
                                                        depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        "train --resume": T.load_checkpoint,
    }


@pytest.mark.parametrize("entry", ["load_pretrained", "create_model", "fpn_backbone", "train --resume"])
def test_zip_bomb_is_refused_in_milliseconds(entry, tmp_path, monkeypatch):
    # was: the CRC pass decompressed all 1,000 entries (1 GB here; minutes for the 125 kB file)
    import time

    from swin_ext.train import checkpointing as CK
    from swin_ext.weights import checkpoint as C

    bomb = _zip_bomb(tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 100_000
    seconds, real = [], C.safe_torch_load

    def timed(*a, **k):  # the file's checks and refusal, without building the model around them
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            seconds.append(time.perf_counter() - t0)

    monkeypatch.setattr(C, "safe_torch_load", timed)
    monkeypatch.setattr(CK, "safe_torch_load", timed)  # the training checkpoints' reader imports it by name
    with pytest.raises(CheckpointError, match=r"bomb.pth: not a valid PyTorch checkpoint archive \(refused before "
                                              r"decompressing anything\)"):
        _bomb_entry_points()[entry](bomb)
    assert len(seconds) == 1 and seconds[0] < 1.0


@pytest.mark.parametrize("case", ["overlap", "expansion", "method", "count", "stored-size"])
def test_zip_layout_bounds(case, tmp_path, monkeypatch):
    import zipfile

    from swin_ext.weights import checkpoint as C

    path = tmp_path / f"{case}.pth"
    if case == "overlap":  # three stored 1 kB entries on the same bytes: within every size bound
        _zip_bomb(path, entries=3, size=1024, method=0)
        match = "entries 'archive/data/0' and 'archive/data/0' overlap"
    elif case == "expansion":  # one honest deflated entry that expands 1000-fold
        monkeypatch.setattr(C, "EXPANSION_FLOOR", 0)
        _zip_bomb(path, entries=1, size=1 << 20)
        match = "declare 1,048,576 bytes in all, more than 16x the file's"
    elif case == "method":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as zf:
            zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        match = "uses zip compression method 14; torch.save stores entries uncompressed"
    elif case == "count":
        monkeypatch.setattr(C, "MAX_ZIP_ENTRIES", 4)
        torch.save({"a": torch.zeros(2)}, path)
        match = r"lists \d+ entries, more than the 4 any checkpoint has"
    else:
        _zip_bomb(path, entries=1, size=1024, method=0)
        data = bytearray(path.read_bytes())
        i = data.index(b"PK\x01\x02")
        data[i + 24:i + 28] = (4096).to_bytes(4, "little")  # the directory's uncompressed size
        path.write_bytes(bytes(data))
        match = "declares 4096 bytes but stores 1024"
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(_tiny(), path)


def test_recompressed_checkpoint_still_loads(tmp_path):
    import zipfile

    m = _tiny()
    sd = randomize(_tiny()).state_dict()
    stored = tmp_path / "stored.pth"
    torch.save({"model": sd}, stored)
    deflated = tmp_path / "deflated.pth"  # re-zipped by another tool: torch.load reads it, so do we
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    load_pretrained(m, deflated)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())


def _non_checkpoint(name, tmp_path):
    import io
    import tarfile

    p = tmp_path / f"{name}.pth"
    if name == "zeros":
        p.write_bytes(bytes(4096))
    elif name == "tar":
        buf = io.BytesIO()
        torch.save(_tiny().state_dict(), buf)
        with tarfile.open(p, "w") as tf:
            info = tarfile.TarInfo("weights.pth")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    elif name == "text":
        p.write_text("this is not a checkpoint\n")
    elif name == "random":
        p.write_bytes(bytes(range(256)) * 8)
    elif name == "pickled-object":
        with open(p, "wb") as f:
            pickle.dump({"model": _NotATensor()}, f, protocol=2)
    return p


@pytest.mark.parametrize("name,match", [
    ("zeros", r"zeros.pth: not a PyTorch checkpoint: the file holds only zero bytes \(4,096 of them\)"),
    ("tar", r"tar.pth: not a PyTorch checkpoint: it is a tar archive"),
    ("text", "not a readable PyTorch checkpoint: damaged or not written by torch.save"),
    ("random", "not a readable PyTorch checkpoint: damaged or not written by torch.save"),
    ("pickled-object", r"holds objects other than tensors .*_NotATensor"),
])
def test_non_checkpoint_files_never_get_weights_only_advice(name, match, tmp_path):
    # was: zeros and tar got torch's advice that weights_only=False "will likely succeed"
    from swin_ext import train as T

    p = _non_checkpoint(name, tmp_path)
    for load in (lambda: load_pretrained(_tiny(), p), lambda: T.load_checkpoint(str(p))):
        with pytest.raises(CheckpointError) as ei:
            load()
        msg = str(ei.value)
        assert re.search(match.replace("PyTorch checkpoint", r"(PyTorch|swin_ext\.train) checkpoint"), msg), msg
        for advice in ("weights_only=False", "weights_only` set to `False", "will likely succeed", "legacy .tar"):
            assert advice not in msg, msg


def test_wrapper_dicts_with_metadata(tmp_path):
    # was: {"epoch": tensor, "state_dict": ...} was "not a Swin Transformer checkpoint"
    sd = randomize(_tiny()).state_dict()
    wrappers = [
        {"epoch": torch.tensor(7), "state_dict": sd},
        {"model": sd, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "step": torch.tensor(10), "lr": 0.1},
        {"model_state_dict": sd, "config": {"arch": "swin"}, "best_acc": torch.tensor(0.8)},
        {"module": sd, "epoch": 3},
        {"checkpoint": 1, "state_dict": {"model": sd}, "ema": torch.zeros(1)},
    ]
    for i, w in enumerate(wrappers):
        for src in (w, tmp_path / f"w{i}.pth"):
            if not isinstance(src, dict):
                torch.save(w, src)
            m = _tiny()
            res = load_pretrained(m, src)
            assert res.format == "official" and len(res.loaded) == len(sd)
            assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    # a wrapper whose model entry holds no tensors is still "no tensors found", naming the keys
    with pytest.raises(CheckpointError, match="no tensors found"):
        load_pretrained(_tiny(), {"model": {"name": "swin"}, "epoch": 3})
