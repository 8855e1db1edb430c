"""The Swin Transformer (Liu et al., ICCV 2021) on swin_ext's fused kernels.

Token layout between modules is ``(B, H, W, C)``.  ``state_dict`` keys follow
the official Microsoft layout (``layers.i.downsample`` at the end of stage i,
``head.weight``); ``relative_position_index`` is a non-persistent buffer and
no attention-mask tensor exists (the kernel computes the mask).

Any input size works: a map that the window does not divide is padded at
bottom/right to a window multiple, then shifted (the official detection
backbone's and torchvision's order); a stage whose padded map is no larger
than the window along an axis does not shift along it; odd sizes at patch
merging are zero-padded.

``features_only=True`` turns the model into a detection/segmentation backbone
(the official detection backbone's layout): ``forward`` returns the per-stage
maps ``out_indices`` in NCHW, each through its own LayerNorm ``norm{i}``, and
the model has no final norm and no head.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ._validate import MAX_WINDOW_SIZE
from .layers import Linear, Mlp, add_layernorm, merge_norm, residual_add, window_attention
from .reference import relative_position_index
from .variants import SIZES

__all__ = [
    "PatchEmbed",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "BasicLayer",
    "SwinTransformer",
    "swin_t",
    "swin_s",
    "swin_b",
    "swin_l",
    "BACKENDS",
]

BACKENDS = ("fused", "reference")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int_field(v: Any, name: str, lo: Optional[int] = None) -> int:
    """A config int: ``TypeError`` for another type (a float, bool or string), ``ValueError`` below ``lo``."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _real_field(v: Any, name: str) -> float:
    """A config real number: finite, not a bool or string."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return float(v)


def _int_list_field(v: Any, name: str) -> List[int]:
    """A per-stage list of ints (list or tuple); a bare int or a string is a ``TypeError``."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise TypeError(f"{name} must be a list or tuple of ints (one per stage), got {type(v).__name__} {v!r}")
    for i, x in enumerate(v):
        if not _is_int(x):
            raise TypeError(f"{name}[{i}] must be an int, got {type(x).__name__} {x!r}")
    return [int(x) for x in v]


def _to_2tuple(v: Any, name: str = "img_size") -> Tuple[int, int]:
    """``s`` or ``(h, w)`` of positive ints; a string, float or 1-tuple is a ``TypeError`` naming ``name``."""
    if _is_int(v):
        pair = (v, v)
    elif isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) == 2 and all(map(_is_int, v)):
        pair = tuple(v)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (H, W), got {type(v).__name__} {v!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return int(pair[0]), int(pair[1])


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection + LayerNorm.

    ``(B, in_chans, H, W)`` -> ``(B, ceil(H/p), ceil(W/p), embed_dim)``; sizes
    that ``patch_size`` does not divide are zero-padded at bottom/right.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p:
            x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x)

    def flops(self, H: int, W: int) -> int:
        Ho, Wo = H // self.patch_size, W // self.patch_size
        return Ho * Wo * self.embed_dim * self.in_chans * self.patch_size**2 + Ho * Wo * self.embed_dim


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative-position bias.

    ``forward(x (B, H, W, C), shift (s_h, s_w))`` -> ``(B, H, W, C)``.
    ``fused``: the swin_ext kernel (:func:`swin_ext.layers.window_attention`;
    attention dropout while training runs the reference composite, the
    kernel has none); else the plain PyTorch composite.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        _int_field(dim, "dim", 1)
        _int_field(window_size, "window_size", 1)
        _int_field(num_heads, "num_heads", 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        #: run the fused attention kernel
        self.fused = fused
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, fast=fused)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim, fast=fused)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` bias gathered from the table."""
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor, shift: Tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``x (B, H, W, C)`` -> ``(B, H, W, C)``."""
        H, W = x.shape[1], x.shape[2]
        ws = self.window_size
        qkv = self.qkv(x)
        # The map is zero-padded before the qkv Linear, so padding tokens carry
        # the Linear's bias as their q, k and v.
        needs_pad = H % ws != 0 or W % ws != 0
        qkv_pad = self.qkv.bias.to(qkv.dtype) if (needs_pad and self.qkv.bias is not None) else None
        out = window_attention(qkv, self.relative_position_bias(), ws, shift, self.scale, qkv_pad,
                               self.attn_drop.p, self.training, self.fused)
        return self.proj_drop(self.proj(out))

    def flops(self, N: int) -> int:
        """Multiply-accumulates of one window of ``N`` tokens (official count)."""
        C, h = self.dim, self.num_heads
        return N * C * 3 * C + h * N * (C // h) * N + h * N * N * (C // h) + N * C * C


class SwinTransformerBlock(nn.Module):
    """``x + DropPath(W-MSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))`` on ``(B, H, W, C)``.

    The residual stream is passed on with the MLP branch not yet added:
    ``forward(x, branch)`` takes the previous block's pending branch and
    returns its own, so that each residual add is fused with the LayerNorm
    after it (``norm1`` of the next block, ``norm2``, the stage's output
    norm; :func:`swin_ext.layers.add_layernorm`), as flash-attention's and
    Mamba's ``Block(hidden_states, residual)`` do.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        _int_field(shift_size, "shift_size")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        if int(dim * _real_field(mlp_ratio, "mlp_ratio")) < 1:
            raise ValueError(f"mlp_ratio {mlp_ratio!r} gives a hidden width of 0 for dim {dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        #: fuse each residual add with the LayerNorm after it
        self.fused = fused
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop, fused)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, fused)

    def effective_shift(self, H: int, W: int) -> Tuple[int, int]:
        """Shift per axis: none along an axis whose padded size is no larger than the window."""
        ws = self.window_size
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        return (self.shift_size if Hp > ws else 0, self.shift_size if Wp > ws else 0)

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, H, W, C)`` and the pending branch (or ``None``) -> ``(x', branch')``.

        The block's output is ``x' + branch'``; ``x'`` already holds ``x +
        branch`` and the attention residual.
        """
        shift = self.effective_shift(x.shape[1], x.shape[2])
        x, y = add_layernorm(x, branch, self.norm1, self.fused)
        x, y = add_layernorm(x, self.drop_path(self.attn(y, shift)), self.norm2, self.fused)
        return x, self.drop_path(self.mlp(y))

    def flops(self, H: int, W: int) -> int:
        # Official convention: a map no larger than the window uses a window of its size.
        ws = min(self.window_size, H, W)
        nW = H * W / ws / ws
        return int(
            self.dim * H * W
            + nW * self.attn.flops(ws * ws)
            + 2 * H * W * self.dim * self.dim * self.mlp_ratio
            + self.dim * H * W
        )


class PatchMerging(nn.Module):
    """2x2 merge + LayerNorm(4C) + Linear(4C -> 2C): ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 2C)``.

    ``forward(x, branch=None)`` takes the stage's pending branch (the last
    block's MLP output, not yet added to the stream) and merges ``x +
    branch``.  ``fused``: the add, the gather and the LayerNorm are one
    swin_ext kernel (:func:`swin_ext.layers.merge_norm`; under autocast its
    output is already in the Linear's dtype) and the reduction a
    :class:`swin_ext.layers.Linear`; else plain PyTorch.
    """

    def __init__(self, dim: int, fused: bool = True) -> None:
        super().__init__()
        self.dim = dim
        #: run the fused add + gather + LayerNorm kernel
        self.fused = fused
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False, fast=fused)

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.reduction(merge_norm(x, branch, self.norm, self.fused))

    def flops(self, H: int, W: int) -> int:
        return H * W * self.dim + (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks (even ones unshifted, odd ones shifted by ws // 2), then merging.

    ``forward(x, branch=None)`` -> ``(x', branch')`` like the blocks: the
    stage's output is ``x' + branch'``.  With a patch merging the last
    block's pending branch goes into it (the add fused with the merging's
    gather and LayerNorm) and ``branch'`` is ``None``; without one (the last
    stage) the add is left to the norm that follows.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Union[float, Sequence[float]] = 0.0,
        downsample: bool = False,
        use_checkpoint: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        dp = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio, qkv_bias, drop, attn_drop, dp[i], fused,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim, fused) if downsample else None

    def forward_blocks(
        self, x: torch.Tensor, branch: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The blocks only: ``(x, branch)`` -> ``(x', branch')``, the stage's map before merging is ``x' + branch'``."""
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x, branch = torch.utils.checkpoint.checkpoint(blk, x, branch, use_reentrant=False)
            else:
                x, branch = blk(x, branch)
        return x, branch

    def forward(
        self, x: torch.Tensor, branch: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x, branch = self.forward_blocks(x, branch)
        if self.downsample is not None:
            return self.downsample(x, branch), None
        return x, branch

    def flops(self, H: int, W: int) -> int:
        f = sum(blk.flops(H, W) for blk in self.blocks)
        if self.downsample is not None:
            f += self.downsample.flops(H, W)
        return f


# Seed-config keys accepted by ``SwinTransformer(config)`` and their keyword names.
_CONFIG_KEYS = {
    "image_size": "img_size",
    "patch_size": "patch_size",
    "in_channels": "in_chans",
    "num_classes": "num_classes",
    "embed_dim": "embed_dim",
    "depths": "depths",
    "num_heads": "num_heads",
    "window_size": "window_size",
    "mlp_ratio": "mlp_ratio",
    "dropout": "drop_rate",
    "attn_dropout": "attn_drop_rate",
    "drop_path_rate": "drop_path_rate",
    "use_checkpoint": "use_checkpoint",
    "qkv_bias": "qkv_bias",
    "backend": "backend",
    "features_only": "features_only",
    "out_indices": "out_indices",
}

OUTPUT_FORMATS = ("NCHW", "NHWC")


def _normalize_indices(indices: Union[int, Sequence[int], None], num_layers: int, what: str) -> List[int]:
    """timm's convention: ``None`` -> all stages, an int ``n`` -> the last ``n``,
    a sequence -> those stages (negative counts from the end); sorted, unique."""
    if indices is None:
        return list(range(num_layers))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= num_layers:
            raise ValueError(f"{what}: an int selects the last n stages, n must be in [1, {num_layers}], got {indices}")
        return list(range(num_layers - indices, num_layers))
    try:
        seq = list(indices)
    except TypeError:
        raise TypeError(f"{what} must be None, an int or a sequence of ints, got {type(indices).__name__}") from None
    if not seq:
        raise ValueError(f"{what} must not be empty")
    out = set()
    for i in seq:
        if not isinstance(i, int) or isinstance(i, bool) or not -num_layers <= i < num_layers:
            raise ValueError(f"{what}: stage index {i!r} out of range for {num_layers} stages")
        out.add(i % num_layers)
    return sorted(out)


class SwinTransformer(nn.Module):
    """Swin Transformer classifier/backbone.

    ``forward(x (B, in_chans, H, W))`` -> logits ``(B, num_classes)``;
    ``forward_features(x)`` -> ``(B, ceil(H/32), ceil(W/32), num_features)``
    (for 4 stages and patch 4) after the final LayerNorm;
    ``forward_intermediates(x)`` -> the per-stage maps at strides 4, 8, 16, 32.

    ``features_only=True, out_indices=(0, 1, 2, 3)`` makes a backbone:
    ``forward(x)`` -> ``[(B, C_i, ceil(H/s_i), ceil(W/s_i)) for i in out_indices]``
    with a LayerNorm ``norm{i}`` per output stage (the official detection
    backbone's keys); it has no final ``norm`` and no ``head``.
    ``img_size`` only sets the resolution ``flops()`` counts at: any input
    size works at run time.

    Construct with keywords, or with a config dict whose keys are
    ``image_size, patch_size, in_channels, num_classes, embed_dim, depths,
    num_heads, window_size, mlp_ratio, dropout, drop_path_rate,
    use_checkpoint`` (optionally ``attn_dropout, qkv_bias, backend,
    features_only, out_indices``).
    """

    def __init__(
        self,
        config: Optional[Dict[str, Any]] = None,
        *,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_checkpoint: bool = False,
        backend: str = "fused",
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        if config is not None:
            if not isinstance(config, dict):
                raise TypeError(f"config must be a dict, got {type(config).__name__}")
            unknown = sorted(set(config) - set(_CONFIG_KEYS))
            if unknown:
                raise ValueError(f"unknown config keys {unknown}; accepted: {sorted(_CONFIG_KEYS)}")
            kw = {_CONFIG_KEYS[k]: v for k, v in config.items()}
            img_size = kw.get("img_size", img_size)
            patch_size = kw.get("patch_size", patch_size)
            in_chans = kw.get("in_chans", in_chans)
            num_classes = kw.get("num_classes", num_classes)
            embed_dim = kw.get("embed_dim", embed_dim)
            depths = kw.get("depths", depths)
            num_heads = kw.get("num_heads", num_heads)
            window_size = kw.get("window_size", window_size)
            mlp_ratio = kw.get("mlp_ratio", mlp_ratio)
            qkv_bias = kw.get("qkv_bias", qkv_bias)
            drop_rate = kw.get("drop_rate", drop_rate)
            attn_drop_rate = kw.get("attn_drop_rate", attn_drop_rate)
            drop_path_rate = kw.get("drop_path_rate", drop_path_rate)
            use_checkpoint = kw.get("use_checkpoint", use_checkpoint)
            backend = kw.get("backend", backend)
            features_only = kw.get("features_only", features_only)
            out_indices = kw.get("out_indices", out_indices)
        depths, num_heads = _int_list_field(depths, "depths"), _int_list_field(num_heads, "num_heads")
        img_size_2 = _to_2tuple(img_size, "img_size")
        self._validate(img_size_2, patch_size, in_chans, num_classes, embed_dim, depths, num_heads,
                       window_size, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate)
        _check_backend(backend)
        if features_only:
            out_indices = _normalize_indices(out_indices, len(depths), "out_indices")
            num_classes = 0

        self.img_size = img_size_2
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.backend = backend
        # The user's choice of set_cpu_inference_fusion, kept across set_backend.
        self._cpu_gemm_fusion = True
        self.features_only = bool(features_only)
        #: stages whose maps ``forward`` returns (features_only) -- all stages otherwise
        self.out_indices: Tuple[int, ...] = tuple(out_indices) if features_only else tuple(range(self.num_layers))
        #: per stage: channels, stride w.r.t. the input, and the module producing it (timm's convention)
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=int(embed_dim * 2**i), reduction=patch_size * 2**i, module=f"layers.{i}")
            for i in range(self.num_layers)
        ]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        n_blocks = sum(depths)  # linear stochastic-depth schedule, as torch.linspace(0, rate, n_blocks)
        dpr = [drop_path_rate * i / (n_blocks - 1) if n_blocks > 1 else 0.0 for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(
                BasicLayer(
                    dim=int(embed_dim * 2**i),
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < self.num_layers - 1,
                    use_checkpoint=use_checkpoint,
                    fused=backend == "fused",
                )
            )
        if self.features_only:
            # The official detection backbone: one LayerNorm per output stage,
            # keyed norm{i}; no final norm and no head.
            for i in self.out_indices:
                self.add_module(f"norm{i}", nn.LayerNorm(self.feature_info[i]["num_chs"]))
            self.norm = None
            self.head = None
        else:
            self.norm = nn.LayerNorm(self.num_features)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _validate(img_size, patch_size, in_chans, num_classes, embed_dim, depths, num_heads,
                  window_size, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate) -> None:
        """Every field's type and value; ``TypeError`` / ``ValueError`` naming the field."""
        _int_field(patch_size, "patch_size", 1)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        _int_field(in_chans, "in_chans", 1)
        _int_field(num_classes, "num_classes", 0)
        _int_field(embed_dim, "embed_dim", 1)
        _int_field(window_size, "window_size", 1)
        if window_size > MAX_WINDOW_SIZE:
            raise ValueError(f"window_size must be <= {MAX_WINDOW_SIZE}, got {window_size}")
        if len(depths) == 0 or any(not _is_int(d) or d < 1 for d in depths):
            raise ValueError(f"depths must be a non-empty list of positive ints, got {depths!r}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths (len {len(depths)}) and num_heads (len {len(num_heads)}) must have the same length")
        for i, h in enumerate(num_heads):
            dim = embed_dim * 2**i
            if not _is_int(h) or h < 1 or dim % h:
                raise ValueError(f"num_heads[{i}]={h!r} does not divide the stage-{i} dim {dim}")
        _real_field(mlp_ratio, "mlp_ratio")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        if int(embed_dim * mlp_ratio) < 1:
            raise ValueError(
                f"mlp_ratio {mlp_ratio!r} gives the stage-0 MLP (dim {embed_dim}) a hidden width of "
                f"int({embed_dim} * {mlp_ratio!r}) = 0"
            )
        for name, p in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            _real_field(p, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay_keywords(self) -> set:
        return {"relative_position_bias_table"}

    def set_backend(self, backend: str) -> "SwinTransformer":
        """Switch every module to ``backend``: ``"fused"`` sets each module's fast-path
        flag (``fused`` / ``Linear.fast``), ``"reference"`` clears them (plain PyTorch)."""
        _check_backend(backend)
        self.backend = backend
        fused = backend == "fused"
        for m in self.modules():
            if isinstance(m, Linear):
                m.fast = fused and self._cpu_gemm_fusion
            elif isinstance(m, (WindowAttention, SwinTransformerBlock, PatchMerging)):
                m.fused = fused
        return self

    def set_cpu_inference_fusion(self, enabled: bool) -> "SwinTransformer":
        """Turn the CPU's oneDNN GEMM paths of the fused backend on or off for this
        model: fc1 + GELU in one GEMM in inference, oneDNN forward and input-gradient
        GEMMs for every block Linear (see :mod:`swin_ext.layers.fast_linear`).  On by
        default; kept across :meth:`set_backend`; the reference backend never uses
        them.  ``SWIN_EXT_ONEDNN_MLP=0`` or ``swin_ext.layers.set_onednn(False)``
        turn them off process-wide."""
        self._cpu_gemm_fusion = bool(enabled)
        return self.set_backend(self.backend)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"input must be (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"input has {x.shape[1]} channels, the model expects in_chans={self.in_chans}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"input spatial size must be positive, got {tuple(x.shape[2:])}")

    @property
    def out_channels(self) -> List[int]:
        """Channels of the maps ``forward`` returns when ``features_only`` (of every stage otherwise)."""
        return [self.feature_info[i]["num_chs"] for i in self.out_indices]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, H', W', num_features)`` after the final norm.

        With ``features_only`` there is no final norm: the last stage's map is
        returned as it is.
        """
        self._check_input(x)
        x, branch = self.pos_drop(self.patch_embed(x)), None
        for layer in self.layers:
            x, branch = layer(x, branch)
        return self._final_norm(x, branch)

    def _final_norm(self, x: torch.Tensor, branch: Optional[torch.Tensor]) -> torch.Tensor:
        """The last stage's ``x + branch`` through the final norm (fused), or as it is without one."""
        if self.norm is None:
            return residual_add(x, branch)
        return add_layernorm(x, branch, self.norm, self.backend == "fused")[1]

    def _output_norm(self, i: int, x: torch.Tensor, branch: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """features_only: stage ``i``'s ``(map, norm{i}(map))``, the pending add fused with the norm."""
        if i not in self.out_indices:
            raise ValueError(f"norm=True: stage {i} has no output norm (out_indices={self.out_indices})")
        return add_layernorm(x, branch, getattr(self, f"norm{i}"), self.backend == "fused")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, Sequence[int], None] = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        *,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Per-stage feature maps, as timm's ``forward_intermediates``.

        Stage ``i`` (before its patch merging) has stride ``patch_size * 2**i``
        (4, 8, 16, 32): ``(B, C_i, ceil(H/s), ceil(W/s))`` for ``output_fmt="NCHW"``,
        ``(B, ceil(H/s), ceil(W/s), C_i)`` for ``"NHWC"``.

        ``indices``: ``None`` all stages, an int ``n`` the last ``n``, a sequence
        those stages.  ``norm``: apply the final norm to the last stage's map
        (timm's convention); on a ``features_only`` model, apply each stage's
        output norm ``norm{i}``.  ``stop_early``: skip the stages after the last
        one asked for.  Returns ``(final, intermediates)`` where ``final`` is
        ``forward_features(x)`` (NHWC; un-normed if the last stage did not run),
        or only the list when ``intermediates_only``.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        take = _normalize_indices(indices, self.num_layers, "indices")
        self._check_input(x)
        last = take[-1] if (stop_early or intermediates_only) else self.num_layers - 1
        x, branch = self.pos_drop(self.patch_embed(x)), None
        final: Optional[torch.Tensor] = None
        intermediates: List[torch.Tensor] = []
        for i in range(last + 1):
            layer = self.layers[i]
            x, branch = layer.forward_blocks(x, branch)
            if i == self.num_layers - 1 and self.norm is not None and not (intermediates_only and not (norm and i in take)):
                # the final norm, fused with the last residual add, as in forward_features
                (x, final), branch = add_layernorm(x, branch, self.norm, self.backend == "fused"), None
            if i in take:
                if norm and self.features_only:
                    (x, y), branch = self._output_norm(i, x, branch), None
                elif norm and final is not None:
                    y = final  # timm's convention: the final norm applies to the last stage only
                else:
                    x, branch = residual_add(x, branch), None
                    y = x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
            if i < last and layer.downsample is not None:
                x, branch = layer.downsample(x, branch), None
        if intermediates_only:
            return intermediates
        return (final if final is not None else residual_add(x, branch)), intermediates

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("a features_only model has no head")
        return self.head(x.mean(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Logits ``(B, num_classes)``; with ``features_only``, the list of
        ``(B, C_i, ceil(H/s_i), ceil(W/s_i))`` maps of ``out_indices``, each
        through its LayerNorm ``norm{i}``."""
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, norm=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def flops(self) -> int:
        """Multiply-accumulates at ``img_size`` (the official convention, labelled FLOPs there)."""
        H, W = self.img_size
        f = self.patch_embed.flops(H, W)
        h, w = H // self.patch_size, W // self.patch_size
        res = (h, w)
        for layer in self.layers:
            f += layer.flops(*res)
            res = (res[0] // 2, res[1] // 2)
        if self.norm is not None:
            f += self.num_features * h * w // (2**self.num_layers)
        f += self.num_features * self.num_classes
        return int(f)


def _swin(size: str, **kwargs) -> SwinTransformer:
    """The V1 model of a size of :data:`swin_ext.variants.SIZES`; keywords override it."""
    return SwinTransformer(**{**SIZES[size], **kwargs})


def swin_t(**kwargs) -> SwinTransformer:
    """Swin-T: embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24); 28.3M params, 4.5 GMACs at 224."""
    return _swin("tiny", **kwargs)


def swin_s(**kwargs) -> SwinTransformer:
    """Swin-S: embed 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24); 49.6M params, 8.7 GMACs."""
    return _swin("small", **kwargs)


def swin_b(**kwargs) -> SwinTransformer:
    """Swin-B: embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32); 87.8M params, 15.4 GMACs."""
    return _swin("base", **kwargs)


def swin_l(**kwargs) -> SwinTransformer:
    """Swin-L: embed 192, depths (2, 2, 18, 2), heads (6, 12, 24, 48); 196.5M params, 34.5 GMACs."""
    return _swin("large", **kwargs)
