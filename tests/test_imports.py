"""Every import path swin_ext 0.1 documented still works; the moved modules warn once and are the new ones."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import swin_ext

REPO = Path(__file__).resolve().parents[1]

# The public names of swin_ext 0.1's modules, by the path users imported them from.
PUBLIC = {
    "swin_ext": [
        "HAS_OPS", "build_info", "window_attention", "window_attention_v2", "patch_merging", "add_layernorm",
        "bias_gelu", "window_attention_reference", "window_attention_v2_reference", "patch_merging_reference",
        "add_layernorm_reference", "bias_gelu_reference", "PatchEmbed", "PatchMerging", "BasicLayer",
        "SwinTransformer", "SwinTransformerBlock", "WindowAttention", "swin_t", "swin_s", "swin_b", "swin_l",
        "SwinTransformerV2", "load_pretrained", "create_model", "list_models", "CheckpointError", "LoadResult",
        "export_onnx", "onnx_translation_table", "ExportError", "from_timm", "from_torchvision", "from_transformers",
        "ConversionError", "fpn_backbone", "SwinFPN", "__version__",
    ],
    "swin_ext.ops": ["window_attention", "window_attention_v2", "patch_merging", "add_layernorm", "bias_gelu",
                     "acc_dtype", "autocast_dtype"],
    "swin_ext.layers": ["window_attention", "window_attention_v2", "add_layernorm", "residual_add", "Linear",
                        "linear", "linear_gelu", "Mlp", "has_kernel", "use_onednn", "set_onednn", "onednn_available",
                        "onednn_preferred", "autocast_dtype"],
    "swin_ext.layers.config": ["has_kernel", "use_onednn", "set_onednn", "onednn_available", "onednn_preferred",
                               "autocast_dtype"],
    "swin_ext.layers.fast_linear": ["Linear", "linear", "linear_gelu"],
    "swin_ext.layers.attention": ["window_attention", "window_attention_v2"],
    "swin_ext.layers.norm": ["add_layernorm", "residual_add"],
    "swin_ext.layers.mlp": ["Mlp"],
    "swin_ext.factory": ["create_model", "list_models", "model_config", "model_class"],
    "swin_ext.detection": ["SwinFPN", "fpn_backbone"],
    "swin_ext.export": ["export_onnx", "onnx_translation_table", "ExportError", "install_onnx_hook"],
    "swin_ext.train": ["PRESETS", "TrainError", "build_parser", "validate_args", "build_model", "param_groups",
                       "save_checkpoint", "load_checkpoint", "remove_stale_temporaries", "train", "main", "cli",
                       "CHECKPOINT_FORMAT", "lr_factor", "state_dict_sha256", "TrainArgumentError",
                       "checkpoint_problems"],
}

# Moved modules: old path, its 0.1 names, new path.
MOVED = {
    "swin_ext.model": (["PatchEmbed", "WindowAttention", "SwinTransformerBlock", "PatchMerging", "BasicLayer",
                        "SwinTransformer", "swin_t", "swin_s", "swin_b", "swin_l", "BACKENDS"], "swin_ext.models.swin"),
    "swin_ext.model_v2": (["relative_coords_table", "WindowAttentionV2", "SwinTransformerV2Block", "PatchMergingV2",
                           "BasicLayerV2", "SwinTransformerV2"], "swin_ext.models.swin_v2"),
    "swin_ext.variants": (["SIZES", "RELEASES", "V2_RELEASES", "ALIASES", "v1_table", "v2_table", "size_of"],
                          "swin_ext.models.variants"),
    "swin_ext.reference": (["SHIFT_MASK_VALUE", "shift_mask", "window_partition", "window_reverse",
                            "window_attention_reference", "window_attention_v2_reference", "patch_merging_reference",
                            "add_layernorm_reference", "bias_gelu_reference"], "swin_ext.ops.reference"),
    "swin_ext._validate": (["MAX_WINDOW_SIZE", "acc_dtype", "check_attention", "check_merging", "real_arg"],
                           "swin_ext.ops._validate"),
    "swin_ext.checkpoint": (["CheckpointError", "LoadResult", "load_pretrained", "read_state_dict",
                             "convert_state_dict", "checkpoint_version", "safe_torch_load", "check_regular_file",
                             "verify_archive"], "swin_ext.weights.checkpoint"),
    "swin_ext.convert": (["from_timm", "from_torchvision", "from_transformers", "ConversionError"],
                         "swin_ext.weights.convert"),
    "swin_ext.data": (["DataError", "DigitsDataset", "load_digits_split", "build_datasets", "IMAGENET_MEAN",
                       "IMAGENET_STD"], "swin_ext.train.data"),
}


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_public_paths(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        module = importlib.import_module(path)
    missing = [n for n in PUBLIC[path] if not hasattr(module, n)]
    assert not missing, (path, missing)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_paths_warn_and_are_the_new_modules(old):
    names, new = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*{new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # one module: monkeypatching either path patches both
    assert getattr(swin_ext, old.split(".")[1]) is module
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, (old, missing)


def test_reference_relative_position_index_moved():
    from swin_ext.layers.pos_bias import relative_position_index
    from swin_ext.ops import reference

    with pytest.warns(DeprecationWarning, match="swin_ext.layers.pos_bias"):
        assert reference.relative_position_index is relative_position_index


def test_console_script_and_module_entry_point():
    for script in ("swin-ext-train", "swin-ext-predict"):
        entry = re.search(rf'^{script} = "([\w.]+):(\w+)"', (REPO / "pyproject.toml").read_text(), re.M)
        module, func = entry.groups()
        assert callable(getattr(importlib.import_module(module), func)), script
    p = subprocess.run([sys.executable, "-m", "swin_ext.train", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "swin-ext-train" in p.stdout and "--model" in p.stdout, p.stderr[-2000:]


def test_op_registry_is_the_op_modules():
    """The op list layers/config probes is derived from the op modules, not written again."""
    from swin_ext.layers import config
    from swin_ext.ops import OPS

    assert OPS == ("window_attention", "window_attention_v2", "patch_merging", "add_layernorm", "bias_gelu")
    for op in OPS:
        module = sys.modules[f"swin_ext.ops.{op.replace('_v2', '')}"]
        assert op in module.OPS and callable(getattr(module, op))
        assert config.has_kernel(op, "cpu") == swin_ext.HAS_OPS
