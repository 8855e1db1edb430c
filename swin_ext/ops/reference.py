"""Plain-PyTorch reference of swin_ext's fused operators.

The same math as the kernels, written the way the official Swin code and
torchvision write it (pad, roll, window partition, bias, mask, softmax,
reverse, roll back, crop), for 2-D maps and 3-D clips (Video Swin) alike: a
2-D map is a clip of one frame with a window of depth 1, one code path.  It is the oracle of the tests and the
``backend="reference"`` path of the model.  Nothing here is fast on purpose.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ._validate import (
    acc_dtype,
    attention_scale,
    check_add_layernorm,
    check_attention,
    check_attention_v2,
    check_bias_gelu,
    check_merging,
    dtype_arg,
    real_arg,
)

__all__ = [
    "SHIFT_MASK_VALUE",
    "shift_mask",
    "region_ids",
    "clamp_window",
    "window_partition",
    "window_reverse",
    "window_attention_reference",
    "window_attention_v2_reference",
    "patch_merging_reference",
    "patch_gather",
    "layer_norm_composite",
    "add_layernorm_reference",
    "bias_gelu_reference",
]

#: Logit offset between tokens of different shift regions (the official value).
SHIFT_MASK_VALUE = -100.0


def _as_3d(x: torch.Tensor, window: Union[int, Sequence[int]]) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """A 2-D map ``(B, H, W, C)`` as the clip ``(B, 1, H, W, C)`` with window ``(1, wh, ww)``; a
    clip as it is.  ``window``: an int (the same on every axis) or one int per map axis."""
    axes = x.dim() - 2
    w = tuple(window) if isinstance(window, Sequence) else (int(window),) * axes
    if axes == 2:
        return x.unsqueeze(1), (1,) + w  # type: ignore[return-value]
    return x, w  # type: ignore[return-value]


def window_partition(x: torch.Tensor, window: Union[int, Sequence[int]]) -> torch.Tensor:
    """``(B, H, W, C)`` or ``(B, T, H, W, C)``, sizes multiples of the window -> ``(B * nW, N, C)``.

    ``window``: an int or one int per map axis; windows in (T, H, W) row-major
    order, tokens row-major inside a window (the official and torchvision order).
    """
    x, (wt, wh, ww) = _as_3d(x, window)
    B, T, H, W, C = x.shape
    x = x.view(B, T // wt, wt, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, wt * wh * ww, C)


def window_reverse(windows: torch.Tensor, window: Union[int, Sequence[int]], *sizes: int) -> torch.Tensor:
    """``(B * nW, N, C)`` -> the map of ``sizes``: ``(H, W)`` -> ``(B, H, W, C)``, ``(T, H, W)`` ->
    ``(B, T, H, W, C)``; the inverse of :func:`window_partition`."""
    if len(sizes) not in (2, 3):
        raise TypeError(f"window_reverse: sizes must be (H, W) or (T, H, W), got {sizes}")
    w = tuple(window) if isinstance(window, Sequence) else (int(window),) * len(sizes)
    (T, H, W), (wt, wh, ww) = ((1,) + sizes, (1,) + w) if len(sizes) == 2 else (sizes, w)
    C = windows.shape[-1]
    x = windows.view(-1, T // wt, H // wh, W // ww, wt, wh, ww, C).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(-1, T, H, W, C)
    return x.squeeze(1) if len(sizes) == 2 else x


def clamp_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """The window and shift a map of ``size`` uses: along an axis no longer than the window, the
    window shrinks to the map and that axis is not shifted.

    The rule of torchvision's ``swin3d`` (``_get_window_and_shift_size``) and of
    the official Video Swin (``get_window_size``), per axis (``size[i] <=
    window[i]``: ``window[i] = size[i]``, ``shift[i] = 0``); any number of axes.
    The ops take the window as given (a larger one pads the map); the video
    model applies this rule before it gathers its bias.  A zero-size axis keeps
    a window of 1.
    """
    w, s = list(window), list(shift)
    for i, n in enumerate(size):
        if n <= w[i]:
            w[i], s[i] = max(int(n), 1), 0
    return tuple(w), tuple(s)


def region_ids(padded: Sequence[int], window: Sequence[int], shift: Sequence[int], device=None) -> torch.Tensor:
    """``(nW, N)`` shift-region id of every window token of a padded, rolled map.

    ``padded``, ``window``, ``shift``: ``(H, W)`` or ``(T, H, W)``.  Along each
    axis the official 3-slice recipe: ``[0, P - w) -> 0``, ``[P - w, P - s) ->
    1``, ``[P - s, P) -> 2`` (one region when unshifted); the id is ``9 r_t + 3
    r_h + r_w``, up to 27 regions (swin_geometry.h's ``region_id``).
    """
    ids = torch.zeros((), dtype=torch.int64, device=device)
    for P, w, s in zip(padded, window, shift):
        pos = torch.arange(P, device=device)
        r = torch.zeros_like(pos) if s == 0 else (pos >= P - w).long() + (pos >= P - s).long()
        ids = ids.unsqueeze(-1) * 3 + r
    return window_partition(ids.unsqueeze(0).unsqueeze(-1), tuple(window)).squeeze(-1)


def shift_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int], device=None,
               dtype=torch.float32) -> torch.Tensor:
    """The official ``(nW, N, N)`` shifted-window mask of a padded ``(H, W)`` or ``(T, H, W)`` map:
    0 between tokens of the same shift region (:func:`region_ids`), ``SHIFT_MASK_VALUE`` else."""
    ids = region_ids(padded, window, shift, device)
    same = ids.unsqueeze(1) == ids.unsqueeze(2)
    return torch.where(same, 0.0, SHIFT_MASK_VALUE).to(dtype)


def window_attention_reference(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: Union[int, Sequence[int]],
    shift: Union[int, Sequence[int]] = 0,
    scale: Optional[float] = None,
    qkv_pad: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Shifted-window multi-head self-attention on a token-major 2-D map or 3-D clip.

    Args:
        qkv: ``(B, H, W, 3C)`` or ``(B, T, H, W, 3C)``, the output of the block's qkv ``Linear``.
        bias: ``(heads, N, N)`` relative-position bias, ``N`` the window's token count, or the
            ``(rows, heads)`` table read through the standard index (:func:`gather_bias_table`).
        window_size: an int or one int per map axis (``(wh, ww)`` / ``(wt, wh, ww)``).
        shift: cyclic shift, an int or one per map axis, ``0 <= s < window``.
        scale: logit scale, default ``head_dim ** -0.5``.
        qkv_pad: ``(3C,)`` qkv value of padding tokens (default zeros).
        dropout_p: attention-probability dropout (the model's ``attn_drop``;
            the fused kernel has none).
        training: apply ``dropout_p``.
    Returns:
        ``(B, [T,] H, W, C)`` attention output before the projection.
    """
    where = "swin_ext.window_attention_reference"
    window, shifts, heads = check_attention(qkv, bias, qkv_pad, window_size, shift, where=where)
    scale = attention_scale(scale, qkv, heads, where)
    return _windowed_attention(qkv, bias, window, shifts, heads, qkv_pad, scale, None, dropout_p, training)


def window_attention_v2_reference(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    head_scale: torch.Tensor,
    window_size: int,
    shift: Union[int, Sequence[int]] = 0,
    qkv_pad: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Swin V2's scaled cosine attention in shifted windows (Liu et al., 2022).

    As :func:`window_attention_reference` on a 2-D map with a square window,
    except that q and k are
    L2-normalized per head (``F.normalize``: ``x / max(||x||, 1e-12)``) and
    the logits of head ``h`` are multiplied by ``head_scale[h]`` (the
    model's ``exp(clamp(logit_scale, max=log(100)))``) instead of a scalar
    scale.

    Args:
        qkv: ``(B, H, W, 3C)``, the output of the block's qkv ``Linear``.
        bias: ``(heads, N, N)``, the continuous position bias ``16 * sigmoid(cpb)``, or its table.
        head_scale: ``(heads,)`` per-head logit scale.
        window_size: the window side.
        shift: as :func:`window_attention_reference`.
        qkv_pad: as :func:`window_attention_reference`.
        dropout_p: as :func:`window_attention_reference`.
        training: as :func:`window_attention_reference`.
    Returns:
        ``(B, H, W, C)`` attention output before the projection.
    """
    where = "swin_ext.window_attention_v2_reference"
    ws, sh, sw, heads = check_attention_v2(qkv, bias, head_scale, qkv_pad, window_size, shift, where=where)
    return _windowed_attention(qkv, bias, (ws, ws), (sh, sw), heads, qkv_pad, None, head_scale, dropout_p, training)


def gather_bias_table(table: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """The ``(heads, N, N)`` bias of the relative-position ``table ((2wt-1)(2wh-1)(2ww-1), heads)``
    through the standard index of ``window`` (``(wh, ww)`` or ``(wt, wh, ww)``): the table form of
    the attention's ``bias``, as the kernels read it (``csrc/bias_table.h``).  Differentiable."""
    from ..layers.pos_bias import relative_position_index  # (layers import ops)

    N = math.prod(window)
    index = relative_position_index(tuple(window)).to(table.device).view(-1)
    return table[index].view(N, N, table.shape[-1]).permute(2, 0, 1)


def _window_logits(qkv, bias, window, shift, heads, qkv_pad, scale, head_scale):
    """The logits of every window of a non-empty map (a 2-D map as the clip of one frame):
    ``(attn (B * nW, heads, N, N), v (B * nW, heads, N, d), padded (T, H, W), shifted)``."""
    if bias.dim() == 2:
        bias = gather_bias_table(bias, window)
    B, T, H, W, C3 = qkv.shape
    d = C3 // 3 // heads
    size = (T, H, W)
    pads = tuple((-n) % w for n, w in zip(size, window))
    x = qkv
    if any(pads):
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        if qkv_pad is not None:
            valid = torch.zeros(x.shape[1:4], dtype=torch.bool, device=x.device)
            valid[:T, :H, :W] = True
            x = torch.where(valid[None, :, :, :, None], x, qkv_pad.to(x.dtype))
    padded = tuple(n + p for n, p in zip(size, pads))
    shifted = any(shift)
    if shifted:
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    win = window_partition(x, window)  # B*nW, N, 3C
    Bn, N, _ = win.shape
    q, k, v = win.reshape(Bn, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    if head_scale is None:
        attn = (q * scale) @ k.transpose(-2, -1)
    else:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * head_scale.to(attn.dtype).view(1, heads, 1, 1)
    attn = attn + bias.to(attn.dtype).unsqueeze(0)
    if shifted:
        mask = shift_mask(padded, window, shift, device=qkv.device, dtype=attn.dtype)
        nW = mask.shape[0]
        attn = attn.view(Bn // nW, nW, heads, N, N) + mask[None, :, None]
        attn = attn.view(Bn, heads, N, N)
    return attn, v, padded, shifted


def _windowed_attention(qkv, bias, window, shift, heads, qkv_pad, scale, head_scale, dropout_p, training):
    """The window math shared by V1 (scalar ``scale``) and V2 (cosine logits times ``head_scale``),
    2-D maps and 3-D clips: a 2-D map runs as the clip of one frame with a window of depth 1."""
    video = qkv.dim() == 5
    if not video:
        qkv, window, shift = qkv.unsqueeze(1), (1,) + tuple(window), (0,) + tuple(shift)
    B, T, H, W, C3 = qkv.shape
    C = C3 // 3
    if T == 0 or H == 0 or W == 0:
        # An empty map: an empty output that still depends on every input
        # (so their gradients are zeros, as the kernel's are).
        out = qkv[..., :C] * 0 + (bias.sum() * 0).to(qkv.dtype)
        if head_scale is not None:
            out = out + (head_scale.sum() * 0).to(qkv.dtype)
        if qkv_pad is not None:
            out = out + (qkv_pad.sum() * 0).to(qkv.dtype)
        return out if video else out.squeeze(1)
    attn, v, padded, shifted = _window_logits(qkv, bias, window, shift, heads, qkv_pad, scale, head_scale)
    Bn, N = attn.shape[0], attn.shape[-1]
    attn = attn.softmax(dim=-1)
    if dropout_p > 0 and training:
        attn = F.dropout(attn, dropout_p, training=True)
    out = (attn @ v).transpose(1, 2).reshape(Bn, N, C)
    out = window_reverse(out, window, *padded)
    if shifted:
        out = torch.roll(out, shifts=tuple(shift), dims=(1, 2, 3))
    out = out[:, :T, :H, :W].contiguous()
    return out if video else out.squeeze(1)


def window_attention_lse_reference(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: Union[int, Sequence[int]],
    shift: Union[int, Sequence[int]] = 0,
    scale: Optional[float] = None,
    qkv_pad: Optional[torch.Tensor] = None,
    head_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(B, nW, heads, N)``: the log-sum-exp over the keys of every row of every window, padding
    tokens' rows included -- the statistic the forward ops return beside the output and the
    backward ops read (windows in row-major order of the padded, shifted map, as the ops number
    them).  V1 logits (``scale``), or V2's (``head_scale``: cosine logits, square window).  The
    arguments as :func:`window_attention_reference` / :func:`window_attention_v2_reference`; a map
    with a zero-size axis has no windows to speak of and is refused."""
    where = "swin_ext.window_attention_lse_reference"
    if head_scale is None:
        window, shifts, heads = check_attention(qkv, bias, qkv_pad, window_size, shift, where=where)
        scale = attention_scale(scale, qkv, heads, where)
    else:
        ws, sh, sw, heads = check_attention_v2(qkv, bias, head_scale, qkv_pad, window_size, shift, where=where)
        window, shifts = (ws, ws), (sh, sw)
    if qkv.numel() == 0:
        raise ValueError(f"{where}: an empty map has no windows")
    if qkv.dim() == 4:
        qkv, window, shifts = qkv.unsqueeze(1), (1,) + tuple(window), (0,) + tuple(shifts)
    attn, _, _, _ = _window_logits(qkv, bias, window, shifts, heads, qkv_pad, scale, head_scale)
    return attn.logsumexp(dim=-1).view(qkv.shape[0], -1, heads, attn.shape[-1])


def residual_sum(x: torch.Tensor, branch: Optional[torch.Tensor]) -> torch.Tensor:
    """``x + branch`` as the fused ops form it: summed in float32 (float64 if either is float64) and
    stored in ``x``'s dtype; ``x`` when ``branch`` is ``None``."""
    if branch is None:
        return x
    add = torch.float64 if torch.float64 in (x.dtype, branch.dtype) else torch.float32
    return (x.to(add) + branch.to(add)).to(x.dtype)


def patch_merging_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    branch: Optional[torch.Tensor] = None,
    y_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """2x2 gather (official order x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1)) + LayerNorm(4C).

    ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 4C)``; odd H/W are zero-padded.
    ``branch``: the stage's pending residual branch, added first as
    :func:`add_layernorm_reference` adds it (:func:`residual_sum`).  The
    LayerNorm runs in ``x``'s dtype (torch upcasts half precision
    internally), the result is returned in ``y_dtype`` (default ``x``'s dtype).
    """
    where = "swin_ext.patch_merging_reference"
    check_merging(x, weight, bias, where=where, branch=branch)
    eps = real_arg(eps, "eps", where=where)
    y_dtype = dtype_arg(y_dtype, "y_dtype", where=where)
    x = patch_gather(residual_sum(x, branch))
    y = F.layer_norm(x, (x.shape[-1],), weight.to(x.dtype), bias.to(x.dtype), eps)
    return y if y_dtype is None else y.to(y_dtype)


def patch_gather(x: torch.Tensor) -> torch.Tensor:
    """Patch merging's 2x2 gather: ``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 4C)``, odd H/W zero-padded,
    channel order x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1) (row, col)."""
    H, W = x.shape[1:3]
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)


def layer_norm_composite(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim from elementary ops (mean, centred variance, rsqrt, affine).

    The same function as ``F.layer_norm``, differentiable to any order under
    every ``torch.func`` transform.  torch's own LayerNorm is not there with
    an affine weight: its second derivatives under ``torch.func`` (``hessian``,
    ``jacrev(jacrev)``, ``jvp`` of ``jvp``) are wrong in the (weight, input)
    block (pytorch/pytorch#196700, functorch#534), while eager double backward
    is right.  The second-order and forward-mode paths of
    :func:`swin_ext.patch_merging` and :func:`swin_ext.add_layernorm` use this.
    """
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdim=True)
    return centred * torch.rsqrt(var + eps) * weight.to(x.dtype) + bias.to(x.dtype)


def add_layernorm_reference(
    x: torch.Tensor,
    branch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    y_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``h = x + branch`` and ``y = LayerNorm(h)`` over the last dim, as the fused op computes them.

    ``x``, ``branch`` ``(..., C)``; the sum in float32 (float64 if either is
    float64) stored in ``x``'s dtype; the LayerNorm of the stored ``h`` in
    float32 (float64 for float64 ``x``), returned in ``y_dtype`` (default
    ``x``'s dtype).  torch's LayerNorm: no rescaling of huge rows.
    """
    check_add_layernorm(x, branch, weight, bias, where="swin_ext.add_layernorm_reference")
    eps = real_arg(eps, "eps", where="swin_ext.add_layernorm_reference")
    y_dtype = dtype_arg(y_dtype, "y_dtype", where="swin_ext.add_layernorm_reference")
    h = residual_sum(x, branch)
    acc = acc_dtype(x.dtype)
    y = F.layer_norm(h.to(acc), (h.shape[-1],), weight.to(acc), bias.to(acc), eps)
    return h, y.to(y_dtype or x.dtype)


def bias_gelu_reference(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``GELU(z + bias)`` with the exact (erf) GELU, as the fused op computes it.

    ``z (..., K)`` (fc1's output without its bias), ``bias (K,)``; computed in
    float32 (float64 for float64 ``z``), returned in ``z``'s dtype.
    """
    check_bias_gelu(z, bias, where="swin_ext.bias_gelu_reference")
    acc = acc_dtype(z.dtype)
    return F.gelu(z.to(acc) + bias.to(acc)).to(z.dtype)


def __getattr__(name: str):
    """``relative_position_index`` moved to :mod:`swin_ext.layers.pos_bias` (a model buffer, not an op's
    oracle); the old name stays here for one release."""
    if name == "relative_position_index":
        import warnings

        from ..layers.pos_bias import relative_position_index

        warnings.warn(
            "swin_ext.reference.relative_position_index is deprecated; import it from swin_ext.layers.pos_bias",
            DeprecationWarning,
            stacklevel=2,
        )
        return relative_position_index
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
