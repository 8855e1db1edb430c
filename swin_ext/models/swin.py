"""The Swin Transformer (Liu et al., ICCV 2021) on swin_ext's fused kernels.

Token layout between modules is ``(B, H, W, C)``.  ``state_dict`` keys follow
the official Microsoft layout (``layers.i.downsample`` at the end of stage i,
``head.weight``); ``relative_position_index`` is a non-persistent buffer and
no attention-mask tensor exists (the kernel computes the mask).

Any input size works: a map that the window does not divide is padded at
bottom/right to a window multiple, then shifted (the official detection
backbone's and torchvision's order); a stage whose padded map is no larger
than the window along an axis does not shift along it (torchvision's rule),
unless ``always_partition=True`` (every block keeps its shift on every map:
the official detection / segmentation backbones, mmseg's / mmdet's and
transformers' ``SwinBackbone``); odd sizes at patch merging are zero-padded.

Each module stores one flag, ``fused`` (set from the model's backend), and
calls the functions of :mod:`swin_ext.layers`, which choose between a
kernel and its plain-PyTorch fallback: this file holds no dispatch.  What V1
and V2 share (features-only backbone, backend switch, ``forward_*``, FLOPs)
is :class:`~swin_ext.models._base.SwinBase`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers import Linear, Mlp, add_layernorm, window_attention
from ..layers.drop import DropPath, drop_path_rates, maybe_drop
from ..layers.helpers import BACKENDS, int_field, per_stage
from ..layers.merging import patch_merging
from ..layers.patch_embed import PatchEmbed
from ..layers.pos_bias import gather_bias, inference_cached, relative_position_index
from ..ops import MAX_WINDOW_SIZE
from ._base import SwinBase, SwinBlock, SwinStage, attention_flops, check_attention_dims, init_weights
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


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative-position bias.

    ``forward(x (B, H, W, C), shift (s_h, s_w))`` -> ``(B, H, W, C)``.
    ``fused``: the swin_ext kernel (:func:`swin_ext.layers.window_attention`;
    attention dropout while training runs the reference composite, the
    kernel has none); else the plain PyTorch composite.

    Args:
        dim: channels ``C``.
        window_size: window side ``ws`` (windows of ``N = ws**2`` tokens).
        num_heads: attention heads; must divide ``dim``.
        qkv_bias: a bias in the qkv Linear.
        attn_drop: dropout on the attention probabilities (training).
        proj_drop: dropout after the output projection.
        fused: run the fused kernel (the model's backend sets it).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        check_attention_dims(dim, window_size, num_heads)
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
        table, index = self.relative_position_bias_table, self.relative_position_index

        def gather() -> torch.Tensor:
            return gather_bias(table, index.view(-1), N)

        return inference_cached(self, N, (table, index), gather)

    def forward(self, x: torch.Tensor, shift: Tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``x (B, H, W, C)`` -> ``(B, H, W, C)``."""
        H, W = x.shape[1], x.shape[2]
        ws = self.window_size
        qkv = self.qkv(x)
        # The map is zero-padded before the qkv Linear, so padding tokens carry
        # the Linear's bias as their q, k and v.
        needs_pad = H % ws != 0 or W % ws != 0
        qkv_pad = self.qkv.bias.to(qkv.dtype) if (needs_pad and self.qkv.bias is not None) else None
        # The table itself: the fused op gathers it and returns its gradient (the
        # index is the standard one, a buffer rebuilt by __init__, never loaded).
        out = window_attention(qkv, self.relative_position_bias_table, ws, shift, self.scale, qkv_pad,
                               self.attn_drop.p, self.training, self.fused, self.relative_position_index)
        return maybe_drop(self.proj_drop, self.proj(out))

    def flops(self, N: int) -> int:
        """Multiply-accumulates of one window of ``N`` tokens (official count)."""
        return attention_flops(N, self.dim, self.num_heads)


class SwinTransformerBlock(SwinBlock):
    """``x + DropPath(W-MSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))`` on ``(B, H, W, C)``.

    The residual stream is passed on with the MLP branch not yet added:
    ``forward(x, branch)`` takes the previous block's pending branch and
    returns its own, so that each residual add is fused with the LayerNorm
    after it (``norm1`` of the next block, ``norm2``, the stage's output
    norm; :func:`swin_ext.layers.add_layernorm`).

    Args:
        dim, num_heads, window_size, qkv_bias, attn_drop: as :class:`WindowAttention`.
        shift_size: cyclic shift of the windows, ``0 <= shift_size < window_size``.
        mlp_ratio: MLP hidden width over ``dim``.
        drop: dropout after the attention projection and in the MLP.
        drop_path: stochastic-depth rate of both branches.
        fused: fuse each residual add with the LayerNorm after it; passed to the attention and the MLP.
        always_partition: shift by ``shift_size`` on every map, also along an axis whose padded size is
            no larger than the window (:meth:`effective_shift`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 fused: bool = True, always_partition: bool = False) -> None:
        super().__init__(dim, num_heads, window_size, shift_size, mlp_ratio)
        #: fuse each residual add with the LayerNorm after it
        self.fused = fused
        #: shift by shift_size on every map (see effective_shift)
        self.always_partition = bool(always_partition)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop, fused)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, fused)

    def effective_shift(self, H: int, W: int) -> Tuple[int, int]:
        """Shift per axis: none along an axis whose padded size is no larger than the window
        (torchvision's rule), or ``shift_size`` along both whatever the map with ``always_partition``
        (the map padded to one window is still shifted, as transformers' ``SwinBackbone`` does)."""
        if self.always_partition:
            return (self.shift_size, self.shift_size)
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
        x, y = add_layernorm(x, maybe_drop(self.drop_path, self.attn(y, shift)), self.norm2, self.fused)
        return x, maybe_drop(self.drop_path, self.mlp(y))


class PatchMerging(nn.Module):
    """2x2 merge + LayerNorm(4C) + Linear(4C -> 2C): ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 2C)``.

    ``forward(x, branch=None)`` takes the stage's pending branch (the last
    block's MLP output, not yet added to the stream) and merges ``x +
    branch``.  ``fused``: the add, the gather and the LayerNorm are one
    swin_ext kernel (:func:`swin_ext.layers.patch_merging`; under autocast its
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
        return self.reduction(patch_merging(x, self.norm, self.fused, branch))

    def flops(self, H: int, W: int) -> int:
        return H * W * self.dim + (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim


class BasicLayer(SwinStage):
    """One stage: ``depth`` blocks (even ones unshifted, odd ones shifted by ws // 2), then merging.

    ``forward(x, branch=None)`` -> ``(x', branch')`` like the blocks: the
    stage's output is ``x' + branch'``.  With a patch merging the last
    block's pending branch goes into it (the add fused with the merging's
    gather and LayerNorm) and ``branch'`` is ``None``; without one (the last
    stage) the add is left to the norm that follows.

    Args:
        dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, drop, attn_drop, fused:
            as :class:`SwinTransformerBlock`.
        drop_path: one rate for every block, or one per block.
        downsample: end with a :class:`PatchMerging`.
        use_checkpoint: recompute the blocks in the backward.
        always_partition: as :class:`SwinTransformerBlock`, for every block.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Union[float, Sequence[float]] = 0.0, downsample: bool = False,
                 use_checkpoint: bool = False, fused: bool = True, always_partition: bool = False) -> None:
        super().__init__(dim, depth, use_checkpoint)
        rates = self.per_block(drop_path)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, self.shift_of(i, window_size), mlp_ratio, qkv_bias, drop,
                                 attn_drop, rates[i], fused, always_partition)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, fused) if downsample else None

    def forward_blocks(
        self, x: torch.Tensor, branch: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The blocks only: ``(x, branch)`` -> ``(x', branch')``, the stage's map before merging is ``x' + branch'``."""
        for blk in self.blocks:
            x, branch = self.run_block(blk, x, branch)
        return x, branch


# Seed-config keys accepted by ``SwinTransformer(config)`` / ``from_config`` and their keyword names.
CONFIG_KEYS = {
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
    "always_partition": "always_partition",
}


def config_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """The constructor keywords of a seed config dict (keys of :data:`CONFIG_KEYS`)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; accepted: {sorted(CONFIG_KEYS)}")
    return {CONFIG_KEYS[k]: v for k, v in config.items()}


class SwinTransformer(SwinBase):
    """Swin Transformer classifier/backbone (the forward methods: :class:`~swin_ext.models._base.SwinBase`).

    Construct with keywords, or with a config dict (:meth:`from_config`; as
    the first argument its keys take precedence over keywords).

    Args:
        img_size: an int or ``(H, W)``; only sets where ``flops()`` counts --
            any input size works at run time.
        patch_size: side of the patch embedding's patches.
        in_chans: input channels.
        num_classes: classes of the head (0: no head, ``forward`` returns pooled features).
        embed_dim: channels of stage 0 (doubling per stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window side, an int or one per stage (a converted timm model whose small stage
            maps shrank their windows has one per stage); a stage map smaller than its window is
            padded to it.
        mlp_ratio: MLP hidden width over the channels.
        qkv_bias: a bias in the qkv Linears.
        drop_rate: dropout after the patch embedding, attention projections and MLPs.
        attn_drop_rate: dropout on the attention probabilities.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        use_checkpoint: recompute each block in the backward (less memory).
        backend: ``"fused"`` (the kernels and fast paths) or ``"reference"`` (plain PyTorch).
        features_only: a backbone: ``forward(x)`` returns
            ``[(B, C_i, ceil(H/s_i), ceil(W/s_i)) for i in out_indices]``, each
            through a LayerNorm ``norm{i}`` (the official detection backbone's
            keys); no final ``norm`` and no ``head``.
        out_indices: the stages a ``features_only`` backbone returns.
        always_partition: every shifted block shifts on every map, also one
            whose padded size is no larger than the window along an axis (the
            official detection / segmentation backbone, mmseg / mmdet and
            transformers' ``SwinBackbone``: their weights need it to reproduce
            their outputs where a stage map is that small, e.g. the last stage
            at 224 px with window 7).  The default does not shift there, as
            torchvision and the official classification code do.
    """

    NO_WEIGHT_DECAY = ("relative_position_bias_table",)

    def __init__(self, config: Optional[Dict[str, Any]] = None, *, img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: Union[int, Sequence[int]] = 7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, use_checkpoint: bool = False, backend: str = "fused",
                 features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3),
                 always_partition: bool = False) -> None:
        if config is not None:
            keywords = {k: v for k, v in locals().items() if k in CONFIG_KEYS.values()}
            SwinTransformer.__init__(self, **{**keywords, **config_kwargs(config)})
            return
        super().__init__()
        self._setup(img_size, patch_size, in_chans, num_classes, embed_dim, depths, num_heads, mlp_ratio, backend,
                    features_only, out_indices, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                    drop_path_rate=drop_path_rate)
        if isinstance(window_size, (list, tuple)):
            windows = per_stage(window_size, self.num_layers, "window_size", 1, MAX_WINDOW_SIZE)
        else:
            windows = [int_field(window_size, "window_size", 1, MAX_WINDOW_SIZE)] * self.num_layers
        self.window_size = windows[0] if len(set(windows)) == 1 else tuple(windows)
        #: the window of every stage
        self.window_sizes = tuple(windows)
        #: every shifted block shifts on every map (see the Args)
        self.always_partition = bool(always_partition)
        self.pos_drop = nn.Dropout(drop_rate)
        self.layers = nn.ModuleList(
            BasicLayer(int(embed_dim * 2**i), self.depths[i], self.num_heads[i], windows[i], mlp_ratio, qkv_bias,
                       drop_rate, attn_drop_rate, rates, downsample=i < self.num_layers - 1,
                       use_checkpoint=use_checkpoint, fused=backend == "fused",
                       always_partition=self.always_partition)
            for i, rates in enumerate(drop_path_rates(drop_path_rate, self.depths))
        )
        self._add_outputs()
        self.apply(init_weights)

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "SwinTransformer":
        """A model from a seed config dict: keys ``image_size, patch_size, in_channels, num_classes,
        embed_dim, depths, num_heads, window_size, mlp_ratio, dropout, drop_path_rate, use_checkpoint``
        (optionally ``attn_dropout, qkv_bias, backend, features_only, out_indices, always_partition``)."""
        return cls(**config_kwargs(config))


def _swin(size: str, **kwargs: Any) -> SwinTransformer:
    """The V1 model of a size of :data:`swin_ext.models.variants.SIZES`; keywords override it."""
    return SwinTransformer(**{**SIZES[size], **kwargs})


def swin_t(**kwargs: Any) -> SwinTransformer:
    """Swin-T: embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24); 28.3M params, 4.5 GMACs at 224."""
    return _swin("tiny", **kwargs)


def swin_s(**kwargs: Any) -> SwinTransformer:
    """Swin-S: embed 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24); 49.6M params, 8.7 GMACs."""
    return _swin("small", **kwargs)


def swin_b(**kwargs: Any) -> SwinTransformer:
    """Swin-B: embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32); 87.8M params, 15.4 GMACs."""
    return _swin("base", **kwargs)


def swin_l(**kwargs: Any) -> SwinTransformer:
    """Swin-L: embed 192, depths (2, 2, 18, 2), heads (6, 12, 24, 48); 196.5M params, 34.5 GMACs."""
    return _swin("large", **kwargs)
