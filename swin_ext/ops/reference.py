"""Plain-PyTorch reference of swin_ext's fused operators.

The same math as the kernels, written the way the official Swin code and
torchvision write it (pad, roll, window partition, bias, mask, softmax,
reverse, roll back, crop).  It is the oracle of the tests and the
``backend="reference"`` path of the model.  Nothing here is fast on purpose.
"""
from __future__ import annotations

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


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``ws`` -> (B * nW, ws * ws, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_mask(Hp: int, Wp: int, ws: int, shift: Tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """The official (nW, N, N) shifted-window mask on a padded (Hp, Wp) map.

    Regions are the 3 x 3 slices ``[0, -ws), [-ws, -s), [-s, end)``; an axis
    that is not shifted is a single region.
    """
    img = torch.zeros((1, Hp, Wp, 1), device=device, dtype=dtype)
    sh, sw = shift
    h_slices = (slice(0, -ws), slice(-ws, -sh), slice(-sh, None)) if sh > 0 else (slice(0, None),)
    w_slices = (slice(0, -ws), slice(-ws, -sw), slice(-sw, None)) if sw > 0 else (slice(0, None),)
    cnt = 0
    for h in h_slices:
        for w in w_slices:
            img[:, h, w, :] = cnt
            cnt += 1
    mw = window_partition(img, ws).squeeze(-1)  # nW, N
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, SHIFT_MASK_VALUE).masked_fill(mask == 0, 0.0)


def window_attention_reference(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    window_size: int,
    shift: Union[int, Sequence[int]] = 0,
    scale: Optional[float] = None,
    qkv_pad: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Shifted-window multi-head self-attention on a token-major map.

    Args:
        qkv: ``(B, H, W, 3C)``, the output of the block's qkv ``Linear``.
        bias: ``(heads, N, N)`` relative-position bias, ``N = window_size**2``.
        window_size: window side ``ws``.
        shift: cyclic shift ``s`` or ``(s_h, s_w)``, ``0 <= s < ws``.
        scale: logit scale, default ``head_dim ** -0.5``.
        qkv_pad: ``(3C,)`` qkv value of padding tokens (default zeros).
        dropout_p: attention-probability dropout (the model's ``attn_drop``;
            the fused kernel has none).
        training: apply ``dropout_p``.
    Returns:
        ``(B, H, W, C)`` attention output before the projection.
    """
    where = "swin_ext.window_attention_reference"
    ws, sh, sw, heads = check_attention(qkv, bias, qkv_pad, window_size, shift, where=where)
    scale = attention_scale(scale, qkv, heads, where)
    return _windowed_attention(qkv, bias, ws, sh, sw, heads, qkv_pad, scale, None, dropout_p, training)


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

    As :func:`window_attention_reference`, except that q and k are
    L2-normalized per head (``F.normalize``: ``x / max(||x||, 1e-12)``) and
    the logits of head ``h`` are multiplied by ``head_scale[h]`` (the
    model's ``exp(clamp(logit_scale, max=log(100)))``) instead of a scalar
    scale.

    Args:
        qkv: ``(B, H, W, 3C)``, the output of the block's qkv ``Linear``.
        bias: ``(heads, N, N)``, the continuous position bias ``16 * sigmoid(cpb)``.
        head_scale: ``(heads,)`` per-head logit scale.
        window_size: as :func:`window_attention_reference`.
        shift: as :func:`window_attention_reference`.
        qkv_pad: as :func:`window_attention_reference`.
        dropout_p: as :func:`window_attention_reference`.
        training: as :func:`window_attention_reference`.
    Returns:
        ``(B, H, W, C)`` attention output before the projection.
    """
    where = "swin_ext.window_attention_v2_reference"
    ws, sh, sw, heads = check_attention_v2(qkv, bias, head_scale, qkv_pad, window_size, shift, where=where)
    return _windowed_attention(qkv, bias, ws, sh, sw, heads, qkv_pad, None, head_scale, dropout_p, training)


def _windowed_attention(qkv, bias, ws, sh, sw, heads, qkv_pad, scale, head_scale, dropout_p, training):
    """The window math shared by V1 (scalar ``scale``) and V2 (cosine logits times ``head_scale``)."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    d = C // heads
    if H == 0 or W == 0:
        # An empty map: an empty output that still depends on every input
        # (so their gradients are zeros, as the kernel's are).
        out = qkv[..., :C] * 0 + (bias.sum() * 0).to(qkv.dtype)
        if head_scale is not None:
            out = out + (head_scale.sum() * 0).to(qkv.dtype)
        return out + (qkv_pad.sum() * 0).to(qkv.dtype) if qkv_pad is not None else out
    pad_b, pad_r = (-H) % ws, (-W) % ws
    x = qkv
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        if qkv_pad is not None:
            valid = torch.zeros(x.shape[1:3], dtype=torch.bool, device=x.device)
            valid[:H, :W] = True
            x = torch.where(valid[None, :, :, None], x, qkv_pad.to(x.dtype))
    Hp, Wp = H + pad_b, W + pad_r
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    win = window_partition(x, ws)  # B*nW, N, 3C
    Bn, N, _ = win.shape
    q, k, v = win.reshape(Bn, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    if head_scale is None:
        attn = (q * scale) @ k.transpose(-2, -1)
    else:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * head_scale.to(attn.dtype).view(1, heads, 1, 1)
    attn = attn + bias.to(attn.dtype).unsqueeze(0)
    if sh or sw:
        mask = shift_mask(Hp, Wp, ws, (sh, sw), device=qkv.device, dtype=attn.dtype)
        nW = mask.shape[0]
        attn = attn.view(Bn // nW, nW, heads, N, N) + mask[None, :, None]
        attn = attn.view(Bn, heads, N, N)
    attn = attn.softmax(dim=-1)
    if dropout_p > 0 and training:
        attn = F.dropout(attn, dropout_p, training=True)
    out = (attn @ v).transpose(1, 2).reshape(Bn, N, C)
    out = window_reverse(out, ws, Hp, Wp)
    if sh or sw:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :H, :W].contiguous()


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
