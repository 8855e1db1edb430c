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
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ._validate import MAX_WINDOW_SIZE
from .layers import Linear, Mlp, autocast_dtype, linear, window_attention_v2
from .model import (
    OUTPUT_FORMATS,
    DropPath,
    PatchEmbed,
    SwinTransformer,
    _check_backend,
    _int_field,
    _int_list_field,
    _is_int,
    _normalize_indices,
    _real_field,
    _to_2tuple,
)
from .reference import relative_position_index

__all__ = [
    "relative_coords_table",
    "WindowAttentionV2",
    "SwinTransformerV2Block",
    "PatchMergingV2",
    "BasicLayerV2",
    "SwinTransformerV2",
]

#: upper clamp of ``logit_scale`` (the official ``log(1 / 0.01)``)
LOGIT_SCALE_MAX = math.log(1.0 / 0.01)


def relative_coords_table(window_size: int, pretrained_window_size: int = 0) -> torch.Tensor:
    """The CPB input ``((2w - 1)**2, 2)``: log-spaced relative coordinates (official / timm recipe).

    Computed in float32 as timm and transformers do (the caller casts to the
    MLP's dtype), row ``(dh + w - 1) * (2w - 1) + (dw + w - 1)``.
    """
    w = window_size
    rel = torch.arange(-(w - 1), w, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(rel, rel, indexing="ij"), dim=-1)  # 2w-1, 2w-1, 2
    norm = pretrained_window_size if pretrained_window_size > 0 else w
    table = table / max(norm - 1, 1)
    table = table * 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
    return table.reshape(-1, 2)


class WindowAttentionV2(nn.Module):
    """Window multi-head cosine self-attention with the continuous position bias.

    ``forward(x (B, H, W, C), window_size, shift (s_h, s_w))`` -> ``(B, H, W, C)``.
    ``window_size`` is the block's effective window (the configured one, or
    smaller for a small map: its bias comes from the same CPB MLP).
    ``fused``: the swin_ext kernel (:func:`swin_ext.layers.window_attention_v2`);
    else the plain PyTorch composite.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrained_window_size: int = 0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        _int_field(dim, "dim", 1)
        _int_field(window_size, "window_size", 1)
        _int_field(num_heads, "num_heads", 1)
        _int_field(pretrained_window_size, "pretrained_window_size", 0)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")
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
        dtype = self.cpb_mlp[0].weight.dtype
        # the configured window's coordinates and index are buffers; a smaller window's (a small map)
        # are built here, parameter-free and small
        if w == self.window_size:
            coords, index = self.relative_coords_table, self.relative_position_index
        else:
            dev = self.relative_coords_table.device
            coords = relative_coords_table(w, self.pretrained_window_size).to(dev)
            index = relative_position_index(w).to(dev)
        if autocast_dtype(coords.device.type) is not None:
            # the bias reaches 16: in float16 / bfloat16 it would lose 1-2 decimals of the logits
            with torch.autocast(coords.device.type, enabled=False):
                table = 16 * torch.sigmoid(self.cpb_mlp(coords.to(dtype)))
        else:
            table = 16 * torch.sigmoid(self.cpb_mlp(coords.to(dtype)))  # (2w-1)^2, heads
        N = w * w
        return table[index.reshape(-1)].view(N, N, self.num_heads).permute(2, 0, 1).contiguous()

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
        out = window_attention_v2(qkv, self.position_bias(ws), self.head_scale(), ws, shift, qkv_pad,
                                  self.attn_drop.p, self.training, self.fused)
        return self.proj_drop(self.proj(out))

    def flops(self, N: int) -> int:
        """Multiply-accumulates of one window of ``N`` tokens (official count; the CPB MLP not counted)."""
        C, h = self.dim, self.num_heads
        return N * C * 3 * C + h * N * (C // h) * N + h * N * N * (C // h) + N * C * C


class SwinTransformerV2Block(nn.Module):
    """Res-post-norm block on ``(B, H, W, C)``:
    ``x + DropPath(norm1(W-MSA(x)))``, then ``x + DropPath(norm2(MLP(x)))``.

    The norms sit between the branch and the residual add, so there is no
    add + LayerNorm to fuse (V1's :func:`swin_ext.layers.add_layernorm`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        pretrained_window_size: int = 0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        _int_field(shift_size, "shift_size")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
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
        x = x + self.drop_path(self.norm1(self.attn(x, ws, shift)))
        return x + self.drop_path(self.norm2(self.mlp(x)))

    def flops(self, H: int, W: int) -> int:
        # official convention: a map no larger than the window uses a window of its (smaller) side
        ws = min(self.window_size, H, W)
        nW = H * W / ws / ws
        return int(
            self.dim * H * W
            + nW * self.attn.flops(ws * ws)
            + 2 * H * W * self.dim * self.dim * self.mlp_ratio
            + self.dim * H * W
        )


def merge_gather(x: torch.Tensor) -> torch.Tensor:
    """2x2 gather ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 4C)`` in the official order
    x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1); odd sizes zero-padded at bottom/right."""
    B, H, W, C = x.shape
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    H2, W2 = x.shape[1] // 2, x.shape[2] // 2
    return x.reshape(B, H2, 2, W2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H2, W2, 4 * C)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(merge_gather(x)))

    def flops(self, H: int, W: int) -> int:
        # official V2 count: the reduction, then the LayerNorm over 2C at H/2 x W/2
        return (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim + H * W * self.dim // 2


class BasicLayerV2(nn.Module):
    """One stage: ``depth`` blocks (even ones unshifted, odd ones shifted by ws // 2), then merging."""

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
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        dp = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            [
                SwinTransformerV2Block(
                    dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias,
                    proj_drop, attn_drop, dp[i], pretrained_window_size, fused,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMergingV2(dim, fused) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks only: the stage's map before merging."""
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return self.downsample(x) if self.downsample is not None else x

    def flops(self, H: int, W: int) -> int:
        f = sum(blk.flops(H, W) for blk in self.blocks)
        if self.downsample is not None:
            f += self.downsample.flops(H, W)
        return f

    def _init_respostnorm(self) -> None:
        """The official V2 init: every block's res-post-norms start at zero (the block is the identity)."""
        for blk in self.blocks:
            for norm in (blk.norm1, blk.norm2):
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)


def _per_stage(v: Any, n: int, name: str, lo: int) -> List[int]:
    """An int for every stage, or a list/tuple of ``n`` ints."""
    if _is_int(v):
        vals = [int(v)] * n
    else:
        vals = _int_list_field(v, name)
        if len(vals) != n:
            raise ValueError(f"{name} must be an int or one int per stage ({n}), got {v!r}")
    for i, x in enumerate(vals):
        if x < lo:
            raise ValueError(f"{name}[{i}] must be >= {lo}, got {x}")
        if x > MAX_WINDOW_SIZE:
            raise ValueError(f"{name}[{i}] must be <= {MAX_WINDOW_SIZE}, got {x}")
    return vals


class SwinTransformerV2(nn.Module):
    """Swin Transformer V2 classifier/backbone (timm's ``SwinTransformerV2`` keywords).

    ``forward(x (B, in_chans, H, W))`` -> logits ``(B, num_classes)``;
    ``forward_features(x)`` -> ``(B, ceil(H/32), ceil(W/32), num_features)``
    (for 4 stages and patch 4) after the final LayerNorm;
    ``forward_intermediates(x)`` -> the per-stage maps at strides 4, 8, 16, 32.

    ``window_size`` is an int or one per stage; ``pretrained_window_sizes`` an
    int or one per stage (0: normalise the CPB coordinates by the window
    itself).  ``drop_rate`` is the head dropout and ``proj_drop_rate`` the
    projection / MLP dropout, as in timm.  ``features_only=True,
    out_indices=(0, 1, 2, 3)`` makes a backbone with a LayerNorm ``norm{i}``
    per output stage (as swin_ext's V1 backbone; transformers'
    ``Swinv2Backbone`` has none: :func:`swin_ext.segmentation.without_output_norms`),
    no final ``norm`` and no ``head``.  ``img_size``
    only sets where ``flops()`` counts: any input size works.
    """

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
        depths, num_heads = _int_list_field(depths, "depths"), _int_list_field(num_heads, "num_heads")
        img_size_2 = _to_2tuple(img_size, "img_size")
        # window_size is checked per stage below (1 stands in for it here)
        SwinTransformer._validate(img_size_2, patch_size, in_chans, num_classes, embed_dim, depths, num_heads,
                                  1, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate)
        _real_field(proj_drop_rate, "proj_drop_rate")
        if not 0.0 <= proj_drop_rate < 1.0:
            raise ValueError(f"proj_drop_rate must be in [0, 1), got {proj_drop_rate!r}")
        n = len(depths)
        windows = _per_stage(window_size, n, "window_size", 1)
        pretrained = _per_stage(pretrained_window_sizes, n, "pretrained_window_sizes", 0)
        _check_backend(backend)
        if features_only:
            out_indices = _normalize_indices(out_indices, n, "out_indices")
            num_classes = 0

        self.img_size = img_size_2
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = windows[0] if len(set(windows)) == 1 else tuple(windows)
        self.window_sizes = tuple(windows)
        self.pretrained_window_sizes = tuple(pretrained)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = bool(qkv_bias)
        self.num_layers = n
        self.num_features = int(embed_dim * 2 ** (n - 1))
        self.backend = backend
        self._cpu_gemm_fusion = True
        self.features_only = bool(features_only)
        self.out_indices: Tuple[int, ...] = tuple(out_indices) if features_only else tuple(range(n))
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=int(embed_dim * 2**i), reduction=patch_size * 2**i, module=f"layers.{i}")
            for i in range(n)
        ]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList()
        for i in range(n):
            self.layers.append(
                BasicLayerV2(
                    dim=int(embed_dim * 2**i),
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=windows[i],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < n - 1,
                    pretrained_window_size=pretrained[i],
                    use_checkpoint=use_checkpoint,
                    fused=backend == "fused",
                )
            )
        if self.features_only:
            for i in self.out_indices:
                self.add_module(f"norm{i}", nn.LayerNorm(self.feature_info[i]["num_chs"]))
            self.norm = None
            self.head_drop = None
            self.head = None
        else:
            self.norm = nn.LayerNorm(self.num_features)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        for layer in self.layers:
            layer._init_respostnorm()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay_keywords(self) -> Set[str]:
        """Parameters without weight decay (the official V2 list)."""
        return {"cpb_mlp", "logit_scale", "relative_position_bias_table"}

    def set_backend(self, backend: str) -> "SwinTransformerV2":
        """``"fused"``: the swin_ext attention kernel and the oneDNN Linears; ``"reference"``: plain PyTorch."""
        _check_backend(backend)
        self.backend = backend
        fused = backend == "fused"
        for m in self.modules():
            if isinstance(m, Linear):
                m.fast = fused and self._cpu_gemm_fusion
            elif isinstance(m, WindowAttentionV2):
                m.fused = fused
        return self

    set_cpu_inference_fusion = SwinTransformer.set_cpu_inference_fusion
    _check_input = SwinTransformer._check_input
    out_channels = SwinTransformer.out_channels

    def set_grad_checkpointing(self, enable: bool = True) -> "SwinTransformerV2":
        """Recompute each block in the backward instead of keeping its activations (timm's name)."""
        for layer in self.layers:
            layer.use_checkpoint = bool(enable)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, H', W', num_features)`` after the final norm
        (without it on a ``features_only`` model)."""
        self._check_input(x)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x) if self.norm is not None else x

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
        """Per-stage feature maps, as timm's ``forward_intermediates`` (see
        :meth:`swin_ext.SwinTransformer.forward_intermediates`): stage ``i``'s
        map before its merging, ``norm=True`` the final norm on the last stage
        (each ``norm{i}`` on a ``features_only`` model)."""
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        take = _normalize_indices(indices, self.num_layers, "indices")
        self._check_input(x)
        last = take[-1] if (stop_early or intermediates_only) else self.num_layers - 1
        x = self.patch_embed(x)
        intermediates: List[torch.Tensor] = []
        for i in range(last + 1):
            layer = self.layers[i]
            x = layer.forward_blocks(x)
            if i in take:
                y = x
                if norm and self.features_only:
                    if i not in self.out_indices:
                        raise ValueError(f"norm=True: stage {i} has no output norm (out_indices={self.out_indices})")
                    y = getattr(self, f"norm{i}")(x)
                elif norm and i == self.num_layers - 1 and self.norm is not None:
                    y = self.norm(x)
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
            if i < last and layer.downsample is not None:
                x = layer.downsample(x)
        if intermediates_only:
            return intermediates
        if last == self.num_layers - 1 and self.norm is not None:
            x = self.norm(x)
        return x, intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, H, W, C)`` -> logits (or the pooled ``(B, C)`` with ``pre_logits``)."""
        if self.head is None:
            raise RuntimeError("a features_only model has no head")
        x = self.head_drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Logits ``(B, num_classes)``; with ``features_only``, the normed NCHW maps of ``out_indices``."""
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, norm=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def flops(self) -> int:
        """Multiply-accumulates at ``img_size`` (the official V2 count, labelled FLOPs there)."""
        H, W = self.img_size
        f = self.patch_embed.flops(H, W)
        res = (H // self.patch_size, W // self.patch_size)
        for layer in self.layers:
            f += layer.flops(*res)
            res = (res[0] // 2, res[1] // 2)
        if self.norm is not None:
            f += self.num_features * (H // self.patch_size) * (W // self.patch_size) // (2 ** self.num_layers)
        f += self.num_features * self.num_classes
        return int(f)
