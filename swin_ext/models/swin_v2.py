"""Swin Transformer V2 (Liu et al., CVPR 2022) on swin_ext's fused window attention.

The V2 changes to the V1 block, as in the official code and timm's
``swin_transformer_v2.py``:

* **cosine attention**: ``logits = head_scale * <q/|q|, k/|k|> + bias``, with
  a learnable ``logit_scale (heads, 1, 1)`` and ``head_scale =
  exp(clamp(logit_scale, max=log(1/0.01)))``;
* **continuous position bias (CPB)**: ``bias = 16 * sigmoid(cpb_mlp(table))``
  gathered to ``(heads, N, N)``, where ``cpb_mlp`` is ``Linear(2, 512)`` +
  ReLU + ``Linear(512, heads, bias=False)`` and ``table`` the log-spaced
  relative coordinates of the window (normalised by ``pretrained_window_size
  - 1`` when it is set, else by ``window - 1``; times 8; ``sign(x) *
  log2(|x| + 1) / log2(8)``).  A checkpoint of another window needs no
  resizing: the MLP evaluates the new window's coordinates;
* ``q_bias`` and ``v_bias`` with a zero k bias (padding tokens carry
  ``(q_bias, 0, v_bias)``, the qkv Linear's bias, as their qkv);
* **res-post-norm**: ``x = x + DropPath(norm1(attn(x)))``, ``x = x +
  DropPath(norm2(mlp(x)))``; the residual-post-norms start at zero;
* **patch merging** gathers 2x2, reduces ``Linear(4C, 2C, bias=False)``,
  then ``LayerNorm(2C)``.

Token layout between modules is ``(B, H, W, C)``.  ``state_dict`` keys follow
the official Microsoft V2 layout (``layers.i.downsample`` at the end of stage
i, ``head.weight``); the coordinate table and the position index are
non-persistent buffers and no attention-mask tensor exists.

Window and shift per block (timm's rule where the op can express it): a map
no larger than the window along both axes shrinks the window to the map
(``min(window, max(H, W))``) and does not shift -- identical to timm and
transformers for square maps; otherwise the map is padded at bottom/right to
a window multiple, then shifted (swin_ext's V1 order, as transformers' V2 and
torchvision do; timm rolls before padding), and an axis whose padded size is
no larger than the window is not shifted.  Both follow the actual input, so
any input size works.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers import Linear, Mlp, autocast_dtype, linear, residual_add, window_attention_v2
from ..layers.drop import DropPath, drop_path_rates, maybe_drop
from ..layers.helpers import int_field, per_stage
from ..layers.merging import merge_gather
from ..layers.pos_bias import gather_bias, inference_cached, relative_coords_table, relative_position_index
from ..ops import MAX_WINDOW_SIZE
from ._base import SwinBase, SwinBlock, SwinStage, attention_flops, check_attention_dims, init_weights

__all__ = [
    "WindowAttentionV2",
    "SwinTransformerV2Block",
    "PatchMergingV2",
    "BasicLayerV2",
    "SwinTransformerV2",
]

#: upper clamp of ``logit_scale`` (the official ``log(1 / 0.01)``)
LOGIT_SCALE_MAX = math.log(1.0 / 0.01)


class WindowAttentionV2(nn.Module):
    """Window multi-head cosine self-attention with the continuous position bias.

    ``forward(x (B, H, W, C), window_size, shift (s_h, s_w))`` -> ``(B, H, W, C)``.
    ``window_size`` is the block's effective window (the configured one, or
    smaller for a small map: its bias comes from the same CPB MLP).
    ``fused``: the swin_ext kernel (:func:`swin_ext.layers.window_attention_v2`);
    else the plain PyTorch composite.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, pretrained_window_size: int = 0, fused: bool = True) -> None:
        super().__init__()
        check_attention_dims(dim, window_size, num_heads)
        int_field(pretrained_window_size, "pretrained_window_size", 0)
        self.dim = dim
        self.window_size = window_size
        self.pretrained_window_size = pretrained_window_size
        self.num_heads = num_heads
        #: run the fused attention kernel
        self.fused = fused
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        self.qkv = Linear(dim, dim * 3, bias=False, fast=fused)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim, fast=fused)
        self.proj_drop = nn.Dropout(proj_drop)
        self.register_buffer("relative_coords_table", relative_coords_table(window_size, pretrained_window_size),
                             persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        # a smaller window's (a map smaller than the window) index and CPB coordinates, built once
        # (per window; again after a move to another device), not per call
        self._small_window: Dict[Tuple[str, int], torch.Tensor] = {}

    def qkv_bias(self) -> Optional[torch.Tensor]:
        """``(3C,)`` ``(q_bias, 0, v_bias)``, or ``None`` without qkv bias."""
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))

    def head_scale(self) -> torch.Tensor:
        """``(heads,)`` ``exp(clamp(logit_scale, max=log(100)))``."""
        return torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp().view(-1)

    def position_bias(self, window_size: Optional[int] = None) -> torch.Tensor:
        """``(heads, N, N)`` ``16 * sigmoid(cpb_mlp(table))`` for ``window_size`` (default: the configured one).

        The sigmoid is applied to the ``((2w-1)^2, heads)`` table before the
        gather (the same values as timm's gather-then-sigmoid, fewer of them).
        """
        w = self.window_size if window_size is None else window_size
        return gather_bias(self.position_table(w), self._index(w).reshape(-1), w * w)

    def position_table(self, window_size: Optional[int] = None) -> torch.Tensor:
        """``((2w-1)^2, heads)`` ``16 * sigmoid(cpb_mlp(coords))``, the table the fused op gathers itself
        (kept between inference calls: :func:`~swin_ext.layers.pos_bias.inference_cached`)."""
        w = self.window_size if window_size is None else window_size
        sources = (*self.cpb_mlp.parameters(), self.relative_coords_table)
        return inference_cached(self, w, sources, lambda: self._position_table(w))

    def _index(self, w: int) -> torch.Tensor:
        """The standard ``(N, N)`` index of window ``w``: the buffer, or a smaller window's (kept)."""
        if w == self.window_size:
            return self.relative_position_index
        return self._small("index", w, lambda: relative_position_index(w))

    def _small(self, kind: str, w: int, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()`` (a parameter-free constant of window ``w``) on the module's device, kept between calls."""
        dev = self.relative_position_index.device
        if torch.compiler.is_compiling():  # traced as a constant of the graph
            return build().to(dev)
        t = self._small_window.get((kind, w))
        if t is None or t.device != dev:
            t = self._small_window[(kind, w)] = build().to(dev)
        return t

    def _position_table(self, w: int) -> torch.Tensor:
        dtype = self.cpb_mlp[0].weight.dtype
        # the configured window's coordinates are a buffer; a smaller window's (a small map)
        # are built on its first call and kept (parameter-free and small)
        if w == self.window_size:
            coords = self.relative_coords_table
        else:
            coords = self._small("coords", w, lambda: relative_coords_table(w, self.pretrained_window_size))
        if autocast_dtype(coords.device.type) is not None:
            # the bias reaches 16: in float16 / bfloat16 it would lose 1-2 decimals of the logits
            with torch.autocast(coords.device.type, enabled=False):
                table = 16 * torch.sigmoid(self.cpb_mlp(coords.to(dtype)))
        else:
            table = 16 * torch.sigmoid(self.cpb_mlp(coords.to(dtype)))  # (2w-1)^2, heads
        return table

    def forward(self, x: torch.Tensor, window_size: Optional[int] = None,
                shift: Tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``x (B, H, W, C)`` -> ``(B, H, W, C)``; the CPB bias is computed once per call."""
        ws = self.window_size if window_size is None else window_size
        H, W = x.shape[1], x.shape[2]
        bias = self.qkv_bias()
        qkv = linear(x, self.qkv.weight, bias, self.qkv.fast)
        # The map is zero-padded before the qkv Linear, so padding tokens carry its bias.
        needs_pad = H % ws != 0 or W % ws != 0
        qkv_pad = bias.to(qkv.dtype) if (needs_pad and bias is not None) else None
        out = window_attention_v2(qkv, self.position_table(ws), self.head_scale(), ws, shift, qkv_pad,
                                  self.attn_drop.p, self.training, self.fused, self._index(ws))
        return maybe_drop(self.proj_drop, self.proj(out))

    def flops(self, N: int) -> int:
        """Multiply-accumulates of one window of ``N`` tokens (official count; the CPB MLP not counted)."""
        return attention_flops(N, self.dim, self.num_heads)


class SwinTransformerV2Block(SwinBlock):
    """Res-post-norm block on ``(B, H, W, C)``:
    ``x + DropPath(norm1(W-MSA(x)))``, then ``x + DropPath(norm2(MLP(x)))``.

    The norms sit between the branch and the residual add, so there is no
    add + LayerNorm to fuse (V1's :func:`swin_ext.layers.add_layernorm`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 pretrained_window_size: int = 0, fused: bool = True) -> None:
        super().__init__(dim, num_heads, window_size, shift_size, mlp_ratio)
        self.attn = WindowAttentionV2(dim, window_size, num_heads, qkv_bias, attn_drop, proj_drop,
                                      pretrained_window_size, fused)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop, fused)
        self.norm2 = nn.LayerNorm(dim)

    def window_and_shift(self, H: int, W: int) -> Tuple[int, Tuple[int, int]]:
        """``(window, (s_h, s_w))`` for an ``H x W`` map.

        A map no larger than the window shrinks it to ``max(H, W)`` (timm's
        rule for square maps); an axis whose padded size is no larger than the
        window is not shifted.
        """
        ws = min(self.window_size, max(H, W, 1))
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        s = self.shift_size if ws == self.window_size else 0
        return ws, (s if Hp > ws else 0, s if Wp > ws else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        ws, shift = self.window_and_shift(x.shape[1], x.shape[2])
        x = x + maybe_drop(self.drop_path, self.norm1(self.attn(x, ws, shift)))
        return x + maybe_drop(self.drop_path, self.norm2(self.mlp(x)))


class PatchMergingV2(nn.Module):
    """2x2 merge + Linear(4C -> 2C, no bias) + LayerNorm(2C):
    ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 2C)``.

    The LayerNorm follows the reduction, so the V1 gather + LayerNorm kernel
    does not apply: the gather is a reshape, the reduction a
    :class:`swin_ext.layers.Linear` (oneDNN on the CPU when ``fast``).
    """

    def __init__(self, dim: int, fused: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = Linear(4 * dim, 2 * dim, bias=False, fast=fused)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.norm(self.reduction(merge_gather(residual_add(x, branch))))

    def flops(self, H: int, W: int) -> int:
        # official V2 count: the reduction, then the LayerNorm over 2C at H/2 x W/2
        return (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim + H * W * self.dim // 2


class BasicLayerV2(SwinStage):
    """One stage: ``depth`` blocks (even ones unshifted, odd ones shifted by ws // 2), then merging.

    The res-post-norm blocks close every residual add, so the stage takes
    and returns the ``(x, branch)`` pair of :class:`~swin_ext.models._base.SwinStage`
    with ``branch`` always ``None`` on the way out.

    Args:
        dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, proj_drop, attn_drop,
            pretrained_window_size, fused: as :class:`SwinTransformerV2Block`.
        drop_path: one rate for every block, or one per block.
        downsample: end with a :class:`PatchMergingV2`.
        use_checkpoint: recompute the blocks in the backward.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Union[float, Sequence[float]] = 0.0,
        downsample: bool = False,
        pretrained_window_size: int = 0,
        use_checkpoint: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__(dim, depth, use_checkpoint)
        rates = self.per_block(drop_path)
        self.blocks = nn.ModuleList(
            SwinTransformerV2Block(
                dim,
                num_heads,
                window_size,
                self.shift_of(i, window_size),
                mlp_ratio,
                qkv_bias,
                proj_drop,
                attn_drop,
                rates[i],
                pretrained_window_size,
                fused,
            )
            for i in range(depth)
        )
        self.downsample = PatchMergingV2(dim, fused) if downsample else None

    def forward_blocks(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, None]:
        """The blocks only: the stage's map before merging (``branch`` is added first)."""
        x = residual_add(x, branch)
        for blk in self.blocks:
            x = self.run_block(blk, x)
        return x, None

    def init_respostnorm(self) -> None:
        """The official V2 init: every block's res-post-norms start at zero (the block is the identity)."""
        for blk in self.blocks:
            for norm in (blk.norm1, blk.norm2):
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)


class SwinTransformerV2(SwinBase):
    """Swin Transformer V2 classifier/backbone with timm's ``SwinTransformerV2`` keywords (the
    forward methods: :class:`~swin_ext.models._base.SwinBase`).

    Args:
        img_size: an int or ``(H, W)``; only sets where ``flops()`` counts --
            any input size works.
        patch_size, in_chans, num_classes, embed_dim, depths, num_heads, mlp_ratio,
            qkv_bias, attn_drop_rate, drop_path_rate, use_checkpoint, backend:
            as :class:`~swin_ext.SwinTransformer`.
        window_size: an int, or one per stage.
        drop_rate: dropout before the head (timm's meaning).
        proj_drop_rate: dropout after the attention projections and in the MLPs.
        pretrained_window_sizes: an int or one per stage; the window the CPB
            coordinates are normalised by (0: the window itself).
        features_only, out_indices: a backbone with a LayerNorm ``norm{i}`` per
            output stage (as swin_ext's V1 backbone; transformers'
            ``Swinv2Backbone`` has none:
            :func:`swin_ext.segmentation.without_output_norms`), no final
            ``norm`` and no ``head``.
    """

    NO_WEIGHT_DECAY = ("cpb_mlp", "logit_scale", "relative_position_bias_table")

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Union[int, Sequence[int]] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        pretrained_window_sizes: Union[int, Sequence[int]] = 0,
        use_checkpoint: bool = False,
        backend: str = "fused",
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        self._setup(
            img_size,
            patch_size,
            in_chans,
            num_classes,
            embed_dim,
            depths,
            num_heads,
            mlp_ratio,
            backend,
            features_only,
            out_indices,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            proj_drop_rate=proj_drop_rate,
        )
        n = self.num_layers
        windows = per_stage(window_size, n, "window_size", 1, MAX_WINDOW_SIZE)
        pretrained = per_stage(pretrained_window_sizes, n, "pretrained_window_sizes", 0, MAX_WINDOW_SIZE)
        self.window_size = windows[0] if len(set(windows)) == 1 else tuple(windows)
        self.window_sizes = tuple(windows)
        self.pretrained_window_sizes = tuple(pretrained)
        self.qkv_bias = bool(qkv_bias)
        self.pos_drop = nn.Identity()  # V2's drop_rate is the head's
        self.layers = nn.ModuleList(
            BasicLayerV2(
                int(embed_dim * 2**i),
                self.depths[i],
                self.num_heads[i],
                windows[i],
                mlp_ratio,
                qkv_bias,
                proj_drop_rate,
                attn_drop_rate,
                rates,
                downsample=i < n - 1,
                pretrained_window_size=pretrained[i],
                use_checkpoint=use_checkpoint,
                fused=backend == "fused",
            )
            for i, rates in enumerate(drop_path_rates(drop_path_rate, self.depths))
        )
        self._add_outputs(head_drop=drop_rate)
        self.apply(init_weights)
        for layer in self.layers:
            layer.init_respostnorm()
