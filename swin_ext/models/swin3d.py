"""Video Swin Transformer (Liu et al., CVPR 2022) on swin_ext's kernels, in torchvision's layout.

:class:`SwinTransformer3d` takes ``torchvision.models.video.SwinTransformer3d``'s
constructor arguments and has its ``state_dict`` keys (``patch_embed``,
``features.{2i}.{j}`` blocks with ``mlp.0`` / ``mlp.3``, ``features.{2i+1}``
patch merging, ``norm``, ``head``; the persistent ``relative_position_index``
buffers too), so ``model.load_state_dict(tv_model.state_dict())`` works both
ways.  What runs is swin_ext's: 3-D shifted-window attention in one fused op
(:func:`swin_ext.layers.window_attention` on ``qkv (B, T, H, W, 3C)``: no roll,
no partition, no ``(B * nW, heads, 392, 392)`` bias-plus-mask tensor), each
residual add fused with the LayerNorm after it, fc1 + GELU fused, patch
merging's gather + LayerNorm in one kernel.

The semantics are torchvision's (and the official Video Swin's): a stage whose
map is no longer than the window along an axis shrinks the window to the map
there and does not shift along it (:func:`swin_ext.ops.reference.clamp_window`),
and gathers its bias from the first ``N`` rows and columns of the full
window's index, as both do; other sizes pad at the end of each axis, then
shift; the padded tokens carry the qkv Linear's bias (the map is zero-padded
before the Linear).  Patch merging is spatial only (2x2 per frame).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..layers import Linear, SequentialMlp, add_layernorm, residual_add, window_attention
from ..layers.drop import DropPath, maybe_drop
from ..layers.helpers import check_backend, int_field, int_list_field, rate_field, real_field
from ..layers.merging import patch_merging
from ..layers.patch_embed import PatchEmbed3d
from ..layers.pos_bias import eager_plain, gather_bias, inference_cached, relative_position_index
from ..ops import MAX_WINDOW_SIZE
from ..ops.reference import clamp_window
from ._base import FusedBackend, check_input, init_weights
from ._features import normalize_indices

__all__ = [
    "ShiftedWindowAttention3d",
    "SwinTransformerBlock3d",
    "PatchMerging3d",
    "PatchEmbed3d",
    "SwinTransformer3d",
    "swin3d_t",
    "swin3d_s",
    "swin3d_b",
    "SWIN3D_SIZES",
]


def _triple(v: Any, name: str, lo: int) -> Tuple[int, int, int]:
    """A ``(t, h, w)`` triple of ints >= ``lo`` (list or tuple)."""
    vals = int_list_field(v, name)
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 entries (T, H, W), got {v!r}")
    for i, x in enumerate(vals):
        if x < lo:
            raise ValueError(f"{name}[{i}] must be >= {lo}, got {x}")
    return vals[0], vals[1], vals[2]


class ShiftedWindowAttention3d(nn.Module):
    """3-D (shifted-)window multi-head self-attention with a relative-position bias.

    ``forward(x (B, T, H, W, C), window, shift)`` -> ``(B, T, H, W, C)``, where
    ``window`` / ``shift`` are the block's after :func:`clamp_window`.  Keys as
    torchvision's: ``qkv``, ``proj``, ``relative_position_bias_table``
    ``((2wt-1)(2wh-1)(2ww-1), heads)`` and the ``relative_position_index``
    buffer ``(N, N)``.

    Args:
        dim: channels ``C``.
        window_size: ``(wt, wh, ww)``.
        num_heads: heads; must divide ``dim``.
        qkv_bias, proj_bias: biases of the two Linears.
        attention_dropout: dropout on the attention probabilities (training;
            runs the reference composite, the kernel has none).
        dropout: dropout after the projection.
        fused: run the fused kernel (the model's backend sets it).
    """

    def __init__(self, dim: int, window_size: Sequence[int], num_heads: int, qkv_bias: bool = True,
                 proj_bias: bool = True, attention_dropout: float = 0.0, dropout: float = 0.0,
                 fused: bool = True) -> None:
        super().__init__()
        int_field(dim, "dim", 1)
        int_field(num_heads, "num_heads", 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")
        self.window_size = _triple(window_size, "window_size", 1)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attention_dropout = rate_field(attention_dropout, "attention_dropout")
        self.dropout = rate_field(dropout, "dropout")
        #: run the fused attention kernel
        self.fused = fused
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, fast=fused)
        self.proj = Linear(dim, dim, bias=proj_bias, fast=fused)
        self.proj_drop = nn.Dropout(dropout)
        wt, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # persistent, as torchvision's (its state_dict holds it)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self._index_standard = True  # the buffer holds the standard index (see _takes_table)
        self._index_stamp: Optional[tuple] = None

    def _takes_table(self, window: Sequence[int]) -> bool:
        """Whether the fused op may take the table itself: the block's full window (a shrunk one reads
        the full index's first rows, not its own offsets) and the standard index in the buffer (the op
        implies it).  The buffer is persistent, so a ``load_state_dict`` or an in-place write may change
        it: eager calls compare it again after any change of its storage or version (a sync, once per
        change), and loading re-checks it; a buffer that is not the standard index keeps the gather."""
        if tuple(window) != self.window_size:
            return False
        index = self.relative_position_index
        if eager_plain(index) and index.device.type != "meta":
            stamp = (index.data_ptr(), index._version, index.device)
            if stamp != self._index_stamp:
                self._check_index()
                self._index_stamp = stamp
        return self._index_standard

    def _check_index(self) -> None:
        index = self.relative_position_index
        want = relative_position_index(self.window_size)
        self._index_standard = tuple(index.shape) == tuple(want.shape) and torch.equal(index.cpu(), want)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        if self.relative_position_index.device.type != "meta":
            self._check_index()

    def relative_position_bias(self, window: Sequence[int]) -> torch.Tensor:
        """``(heads, N, N)`` bias of a window of ``N`` tokens: the table at the first ``N`` rows and
        columns of the full window's index, as torchvision and the official code gather it (for a
        shrunk window these are not its own offsets, but they are what the checkpoints were trained with)."""
        N = math.prod(window)
        table, index = self.relative_position_bias_table, self.relative_position_index

        def gather() -> torch.Tensor:
            return gather_bias(table, index[:N, :N].reshape(-1), N)

        return inference_cached(self, N, (table, index), gather)

    def forward(self, x: torch.Tensor, window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
        """``x (B, T, H, W, C)`` -> ``(B, T, H, W, C)``."""
        qkv = self.qkv(x)
        needs_pad = any(n % w for n, w in zip(x.shape[1:4], window))
        qkv_pad = self.qkv.bias.to(qkv.dtype) if (needs_pad and self.qkv.bias is not None) else None
        if self._takes_table(window):
            bias, index = self.relative_position_bias_table, self.relative_position_index
        else:
            bias, index = self.relative_position_bias(window), None
        out = window_attention(qkv, bias, tuple(window), tuple(shift), self.scale, qkv_pad,
                               self.attention_dropout, self.training, self.fused, index)
        return maybe_drop(self.proj_drop, self.proj(out))


class SwinTransformerBlock3d(nn.Module):
    """``x + SD(W-MSA(LN(x)))`` then ``x + SD(MLP(LN(x)))`` on ``(B, T, H, W, C)`` (torchvision's keys
    ``norm1, attn, norm2, mlp.0, mlp.3``).

    As the 2-D block, ``forward(x, branch)`` takes the previous block's
    pending MLP branch and returns its own, so each residual add is fused with
    the LayerNorm after it (:func:`swin_ext.layers.add_layernorm`).

    Args:
        dim, num_heads: channels and heads.
        window_size, shift_size: ``(t, h, w)`` each, ``0 <= shift < window``.
        mlp_ratio: MLP hidden width over ``dim``.
        dropout: after the attention projection and in the MLP.
        attention_dropout: on the attention probabilities.
        stochastic_depth_prob: the rate of both branches (per sample, torchvision's ``"row"`` mode).
        norm_layer: builds the two LayerNorms.
        fused: the fused paths (the model's backend sets it).
    """

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shift_size: Sequence[int],
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.0, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 fused: bool = True) -> None:
        super().__init__()
        self.window_size = _triple(window_size, "window_size", 1)
        self.shift_size = _triple(shift_size, "shift_size", 0)
        if not all(s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift_size {self.shift_size} must be < window_size {self.window_size} on every axis")
        hidden = int(dim * real_field(mlp_ratio, "mlp_ratio"))
        if hidden < 1:
            raise ValueError(f"mlp_ratio {mlp_ratio!r} gives a hidden width of 0 for dim {dim}")
        #: fuse each residual add with the LayerNorm after it
        self.fused = fused
        self.norm1 = norm_layer(dim)
        self.attn = ShiftedWindowAttention3d(dim, self.window_size, num_heads, True, True, attention_dropout, dropout,
                                             fused)
        self.stochastic_depth = DropPath(stochastic_depth_prob)
        self.norm2 = norm_layer(dim)
        self.mlp = SequentialMlp(dim, hidden, dropout, fused)

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, H, W, C)`` and the pending branch (or ``None``) -> ``(x', branch')``, the block's
        output being ``x' + branch'``."""
        window, shift = clamp_window(x.shape[1:4], self.window_size, self.shift_size)
        x, y = add_layernorm(x, branch, self.norm1, self.fused)
        x, y = add_layernorm(x, maybe_drop(self.stochastic_depth, self.attn(y, window, shift)), self.norm2,
                             self.fused)
        return x, maybe_drop(self.stochastic_depth, self.mlp(y))


class PatchMerging3d(nn.Module):
    """Spatial 2x2 merge of every frame + LayerNorm(4C) + Linear(4C -> 2C):
    ``(B, T, H, W, C)`` -> ``(B, T, ceil(H/2), ceil(W/2), 2C)`` (torchvision's ``PatchMerging`` on a
    clip; keys ``reduction``, ``norm``).  ``fused``: the gather and the LayerNorm are one swin_ext
    kernel (:func:`swin_ext.layers.patch_merging`, on the ``B * T`` frames)."""

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm, fused: bool = True) -> None:
        super().__init__()
        self.dim = dim
        #: run the fused gather + LayerNorm kernel
        self.fused = fused
        self.reduction = Linear(4 * dim, 2 * dim, bias=False, fast=fused)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        y = self.reduction(patch_merging(x.reshape(B * T, *x.shape[2:]), self.norm, self.fused))
        return y.view(B, T, *y.shape[1:])


#: embed dim, depths and heads of torchvision's swin3d_t / _s / _b
SWIN3D_SIZES: Dict[str, Dict[str, Any]] = {
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


def _layer_norm_factory(norm_layer: Optional[Callable[..., nn.Module]]) -> Callable[..., nn.Module]:
    """``norm_layer`` (torchvision's argument) if it builds an ``nn.LayerNorm``; the fused paths need one."""
    if norm_layer is None:
        return nn.LayerNorm
    probe = norm_layer(4)
    if not isinstance(probe, nn.LayerNorm):
        raise ValueError(f"norm_layer must build an nn.LayerNorm (e.g. partial(nn.LayerNorm, eps=1e-5)), "
                         f"got {type(probe).__name__}")
    return norm_layer


def _refuse_custom(name: str, value: Any, allowed: Tuple[str, ...]) -> None:
    """torchvision's pluggable ``block`` / ``downsample_layer`` / ``patch_embed``: only their defaults."""
    if value is None:
        return
    qual = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if qual not in allowed:
        raise ValueError(f"{name}={qual} is not supported: swin_ext.SwinTransformer3d builds its own fused modules "
                         f"(pass None, or torchvision's default {allowed[0]})")


class SwinTransformer3d(FusedBackend, nn.Module):
    """Video Swin Transformer: torchvision's ``SwinTransformer3d`` constructor and keys, swin_ext's kernels.

    ``forward(x (B, C, T, H, W))`` -> logits ``(B, num_classes)``; any clip
    size works (sizes the patch does not divide are padded).
    ``forward_features(x)`` -> ``(B, T', H', W', num_features)`` after the final norm.

    Args (torchvision's):
        patch_size: ``(pt, ph, pw)``.
        embed_dim: channels of stage 0 (doubling per stage).
        depths, num_heads: blocks and heads per stage.
        window_size: ``(wt, wh, ww)``; odd blocks shift by half of it.
        mlp_ratio, dropout, attention_dropout: as torchvision.
        stochastic_depth_prob: the last block's rate (linear from 0, torchvision's rule).
        num_classes: classes of the head.
        norm_layer: builds every LayerNorm (default ``nn.LayerNorm``, eps 1e-5); must build a LayerNorm.
        block, downsample_layer, patch_embed: torchvision's pluggable modules; only ``None`` (or
            torchvision's defaults) -- the model builds its own fused ones.
    Keyword-only (swin_ext's):
        in_channels: input channels (3).
        backend: ``"fused"`` (the kernels and fast paths) or ``"reference"`` (plain PyTorch).
        features_only: a video backbone: ``forward(x)`` returns
            ``[(B, C_i, T', H_i, W_i) for i in out_indices]``, stage ``i``'s map
            before its patch merging through a LayerNorm ``norm{i}`` (mmaction2's
            keys); no final ``norm`` and no ``head``.
        out_indices: the stages a ``features_only`` backbone returns.
        use_checkpoint: recompute each block in the backward (less memory).
    """

    NO_WEIGHT_DECAY = ("relative_position_bias_table",)

    def __init__(self, patch_size: Sequence[int], embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window_size: Sequence[int], mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.1, num_classes: int = 400,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 block: Optional[Callable[..., nn.Module]] = None,
                 downsample_layer: Optional[Callable[..., nn.Module]] = None,
                 patch_embed: Optional[Callable[..., nn.Module]] = None, *, in_channels: int = 3,
                 backend: str = "fused", features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3),
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        _refuse_custom("block", block, ("torchvision.models.swin_transformer.SwinTransformerBlock",))
        _refuse_custom("downsample_layer", downsample_layer, ("torchvision.models.swin_transformer.PatchMerging",))
        _refuse_custom("patch_embed", patch_embed, ("torchvision.models.video.swin_transformer.PatchEmbed3d",))
        self.patch_size = _triple(patch_size, "patch_size", 1)
        self.window_size = _triple(window_size, "window_size", 1)
        if max(self.window_size) > MAX_WINDOW_SIZE:
            raise ValueError(f"window_size {self.window_size} exceeds the supported side {MAX_WINDOW_SIZE}")
        int_field(embed_dim, "embed_dim", 1)
        int_field(num_classes, "num_classes", 0)
        int_field(in_channels, "in_channels", 1)
        depths, num_heads = int_list_field(depths, "depths"), int_list_field(num_heads, "num_heads")
        if not depths or any(d < 1 for d in depths) or len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty lists of positive ints "
                             "of the same length")
        for i, h in enumerate(num_heads):
            if h < 1 or (embed_dim * 2**i) % h:
                raise ValueError(f"num_heads[{i}]={h} does not divide the stage-{i} dim {embed_dim * 2**i}")
        for name, p in (("dropout", dropout), ("attention_dropout", attention_dropout),
                        ("stochastic_depth_prob", stochastic_depth_prob)):
            rate_field(p, name)
        check_backend(backend)
        norm = _layer_norm_factory(norm_layer)
        n = len(depths)
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.mlp_ratio = mlp_ratio
        self.num_layers = n
        self.num_features = embed_dim * 2 ** (n - 1)
        self.in_channels = in_channels
        self.backend = backend
        self._cpu_gemm_fusion = True
        self.features_only = bool(features_only)
        self.out_indices: Tuple[int, ...] = (tuple(normalize_indices(out_indices, n, "out_indices"))
                                             if features_only else tuple(range(n)))
        self.num_classes = 0 if features_only else num_classes
        self.use_checkpoint = bool(use_checkpoint)
        fused = backend == "fused"

        self.patch_embed = PatchEmbed3d(self.patch_size, in_channels, embed_dim, norm)
        self.pos_drop = nn.Dropout(p=dropout)
        layers: List[nn.Module] = []
        total, k = sum(depths), 0
        for i in range(n):
            dim = embed_dim * 2**i
            stage = []
            for j in range(depths[i]):
                # torchvision's rule (in Python floats): block k of all gets p * k / (total - 1)
                sd = stochastic_depth_prob * float(k) / (total - 1) if total > 1 else 0.0
                shift = [0 if j % 2 == 0 else w // 2 for w in self.window_size]
                stage.append(SwinTransformerBlock3d(dim, num_heads[i], self.window_size, shift, mlp_ratio, dropout,
                                                    attention_dropout, sd, norm, fused))
                k += 1
            layers.append(nn.Sequential(*stage))
            if i < n - 1:
                layers.append(PatchMerging3d(dim, norm, fused))
        self.features = nn.Sequential(*layers)
        #: per stage: channels and the spatial stride w.r.t. the input (timm's convention); time is
        #: reduced by the temporal patch only
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=embed_dim * 2**i, reduction=self.patch_size[1] * 2**i, module=f"features.{2 * i}")
            for i in range(n)
        ]
        if self.features_only:
            for i in self.out_indices:
                self.add_module(f"norm{i}", norm(embed_dim * 2**i))
            self.norm, self.avgpool, self.head = None, None, None
        else:
            self.norm = norm(self.num_features)
            self.avgpool = nn.AdaptiveAvgPool3d(1)
            self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():  # torchvision's initialisation (the bias tables keep theirs)
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                init_weights(m)

    # ----------------------------------------------------------------- switches

    def no_weight_decay_keywords(self) -> set:
        """Substrings of the parameter names that get no weight decay."""
        return set(self.NO_WEIGHT_DECAY)

    def set_grad_checkpointing(self, enable: bool = True) -> "SwinTransformer3d":
        """Recompute each block in the backward instead of keeping its activations (timm's name)."""
        self.use_checkpoint = bool(enable)
        return self

    @property
    def out_channels(self) -> List[int]:
        """Channels of the maps a ``features_only`` backbone returns (of every stage otherwise)."""
        return [self.feature_info[i]["num_chs"] for i in self.out_indices]

    # ----------------------------------------------------------------- forward

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_channels, "in_channels", ("T", "H", "W"))

    def _run_block(self, blk: nn.Module, x: torch.Tensor, branch: Optional[torch.Tensor]):
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, branch, use_reentrant=False)
        return blk(x, branch)

    def _stage(self, i: int, x: torch.Tensor, branch: Optional[torch.Tensor]):
        """Stage ``i``'s blocks: ``(x, branch)`` -> ``(x', branch')``, its map being ``x' + branch'``."""
        for blk in self.features[2 * i]:
            x, branch = self._run_block(blk, x, branch)
        return x, branch

    def _merge(self, i: int, x: torch.Tensor, branch: Optional[torch.Tensor]) -> torch.Tensor:
        """The patch merging after stage ``i``, on the stage's map with its add closed."""
        return self.features[2 * i + 1](residual_add(x, branch))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, T', H', W', num_features)`` after the final norm
        (``features_only``: the last stage's map, un-normed)."""
        self._check_input(x)
        x, branch = self.pos_drop(self.patch_embed(x)), None
        for i in range(self.num_layers):
            x, branch = self._stage(i, x, branch)
            if i < self.num_layers - 1:
                x, branch = self._merge(i, x, branch), None
        if self.norm is None:
            return residual_add(x, branch)
        return add_layernorm(x, branch, self.norm, self.backend == "fused")[1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, T, H, W, C)`` -> logits (the pooled ``(B, C)`` with ``pre_logits``)."""
        if self.head is None:
            raise RuntimeError("a features_only model has no head")
        x = torch.flatten(self.avgpool(x.permute(0, 4, 1, 2, 3)), 1)
        return x if pre_logits else self.head(x)

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The ``features_only`` maps: stage ``i``'s map (before its merging) through ``norm{i}``, as
        ``(B, C_i, T', H_i, W_i)``, for ``i in out_indices`` (the stages after the last are not run)."""
        self._check_input(x)
        outs = []
        x, branch = self.pos_drop(self.patch_embed(x)), None
        for i in range(self.out_indices[-1] + 1):
            x, branch = self._stage(i, x, branch)
            if i in self.out_indices:
                (x, y), branch = add_layernorm(x, branch, getattr(self, f"norm{i}"), self.backend == "fused"), None
                outs.append(y.permute(0, 4, 1, 2, 3).contiguous())
            if i < self.out_indices[-1]:
                x, branch = self._merge(i, x, branch), None
        return outs

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Logits ``(B, num_classes)`` of a clip ``(B, C, T, H, W)``; with ``features_only``, the list
        of :meth:`forward_stages`."""
        if self.features_only:
            return self.forward_stages(x)
        return self.forward_head(self.forward_features(x))


def _swin3d(size: str, weights: Any, **kwargs: Any) -> SwinTransformer3d:
    if weights is not None and (type(weights).__module__ or "").startswith("torchvision"):
        raise TypeError(
            f"weights={weights!r} is a torchvision weights enum: swin_ext downloads nothing. Load the file "
            "yourself (weights.get_state_dict()) and pass the state dict or its path, or convert a torchvision "
            "model with swin_ext.from_torchvision(torchvision.models.video.swin3d_t(weights=...))"
        )
    cfg = dict(patch_size=(2, 4, 4), window_size=(8, 7, 7), stochastic_depth_prob=0.1, **SWIN3D_SIZES[size])
    cfg.update(kwargs)
    model = SwinTransformer3d(**cfg)
    if weights is not None:
        from ..weights import load_pretrained

        model.pretrained_result = load_pretrained(model, weights)
    return model


def swin3d_t(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> SwinTransformer3d:
    """Video Swin-T (torchvision's ``swin3d_t``): patch (2, 4, 4), window (8, 7, 7), embed 96, depths
    (2, 2, 6, 2), heads (3, 6, 12, 24), 400 classes; 28.2M parameters.

    ``weights``: ``None`` or a local checkpoint (a path or a state dict of any layout
    :func:`swin_ext.load_pretrained` reads); nothing is downloaded.  ``progress`` is accepted
    for torchvision's signature and unused.  Keywords override the architecture.
    """
    return _swin3d("t", weights, **kwargs)


def swin3d_s(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> SwinTransformer3d:
    """Video Swin-S (torchvision's ``swin3d_s``): as :func:`swin3d_t` with depths (2, 2, 18, 2); 49.8M parameters."""
    return _swin3d("s", weights, **kwargs)


def swin3d_b(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> SwinTransformer3d:
    """Video Swin-B (torchvision's ``swin3d_b``): embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32);
    88.0M parameters."""
    return _swin3d("b", weights, **kwargs)
