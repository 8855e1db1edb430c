"""Relative-position tables of the window attention: V1's bias index, V2's coordinates.

Both depend on the window size only; the models keep them as non-persistent
buffers (recomputed, never loaded from a checkpoint).  :func:`inference_cached`
keeps a model's gathered ``(heads, N, N)`` bias between inference calls;
:func:`gather_bias` gathers it with a cheaper CPU backward.
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, Sequence, Union

import torch
from torch import nn

__all__ = ["relative_position_index", "relative_coords_table", "gather_bias", "inference_cached"]


def relative_position_index(window_size: Union[int, Sequence[int]]) -> torch.Tensor:
    """``(N, N)`` index into the relative-position bias table (the official recipe), 2-D or 3-D.

    ``window_size``: a side ``ws`` (a square 2-D window, ``N = ws**2``, table
    ``((2ws-1)^2, heads)``) or one side per axis, ``(wh, ww)`` or ``(wt, wh,
    ww)`` (Video Swin's, table ``((2wt-1)(2wh-1)(2ww-1), heads)``).  Entry ``(i,
    j)`` is the row of the offset of token ``i`` from token ``j``: the offsets
    ``d_a + w_a - 1`` per axis, mixed-radix with radices ``2 w_a - 1`` (so
    ``(dh + ws - 1) * (2ws - 1) + (dw + ws - 1)`` in 2-D).  Tokens are
    row-major over the window's axes.
    """
    sides = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in sides], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # N, N, axes
    index = torch.zeros(rel.shape[:2], dtype=torch.int64)
    for a, w in enumerate(sides):
        index = index * (2 * w - 1) + rel[:, :, a] + (w - 1)
    return index


def relative_coords_table(window_size: int, pretrained_window_size: int = 0) -> torch.Tensor:
    """Swin V2's CPB input ``((2w - 1)**2, 2)``: log-spaced relative coordinates (official / timm recipe).

    Normalised by ``pretrained_window_size - 1`` when it is set, else by
    ``window_size - 1``; times 8; ``sign(x) * log2(|x| + 1) / log2(8)``.
    Computed in float32 as timm and transformers do (the caller casts to the
    MLP's dtype); row ``(dh + w - 1) * (2w - 1) + (dw + w - 1)``, the rows
    :func:`relative_position_index` indexes.
    """
    w = window_size
    rel = torch.arange(-(w - 1), w, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(rel, rel, indexing="ij"), dim=-1)  # 2w-1, 2w-1, 2
    norm = pretrained_window_size if pretrained_window_size > 0 else w
    table = table / max(norm - 1, 1)
    table = table * 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
    return table.reshape(-1, 2)


def eager_plain(t: torch.Tensor) -> bool:
    """Whether ``t`` is a plain tensor (no subclass: fake, functional, ...) in a call that nothing
    scripts, traces, compiles or exports: where the two shortcuts below may replace plain ops."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not torch.onnx.is_in_onnx_export() and type(t) in (torch.Tensor, nn.Parameter)


def _cacheable(sources: Sequence[torch.Tensor]) -> bool:
    """Whether nothing records, traces or fakes this call: grad off, eager, plain CPU tensors with version
    counters.  Not on a GPU: comparing the values there (``torch.equal``) would wait for the device, every
    block, stalling the host that should be queueing the next kernels; and the gather is a few small
    kernels there, far cheaper than that wait."""
    if torch.is_grad_enabled():
        return False
    return all(eager_plain(t) and not t.is_inference() and t.device.type == "cpu" for t in sources)


def inference_cached(owner: nn.Module, key: Hashable, sources: Sequence[torch.Tensor],
                     compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, reused across calls where grad is off and nothing traces the call.

    The gathered bias is a pure function of ``sources`` (the table or the CPB
    MLP's parameters, and the index buffers), yet gathering it is 5-12% of a
    CPU inference step at Video Swin's 392-token windows.  The value is kept
    on ``owner`` under ``key`` with a stamp of every source's storage pointer,
    version counter, device, dtype and shape (an optimizer step, a
    ``load_state_dict``, ``.to()`` or ``.data =`` changes the stamp) and
    whether inference mode was on (an inference tensor cannot be reused
    outside it), and with a copy of every floating-point source: an in-place
    write through ``.data`` bumps no version counter, so the values are
    compared too (tables and CPB weights are 10-100x smaller than the bias
    they gather into).  With grad enabled, under ``torch.compile`` / ``torch.export``
    / ``torch.jit`` / ONNX export, for fake, meta or inference tensors, or on a
    GPU (where the comparison would synchronise the device), ``compute()`` runs
    every time, as before.
    """
    if not _cacheable(sources):
        return compute()
    stamp = (torch.is_inference_mode_enabled(),
             tuple((t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in sources))
    cache = owner.__dict__.setdefault("_inference_bias_cache", {})
    hit = cache.get(key)
    floats = [t for t in sources if t.is_floating_point()]
    if hit is not None and hit[0] == stamp and all(torch.equal(a, b) for a, b in zip(hit[1], floats)):
        return hit[2]
    value = compute()
    cache[key] = (stamp, [t.detach().clone() for t in floats], value)
    return value


class _GatherBias(torch.autograd.Function):
    """``table[index].view(N, N, heads).permute(2, 0, 1)`` whose backward is one ``scatter_add_``.

    Autograd's own backward of the gather is ``index_put_(accumulate=True)``,
    which the CPU runs element by element: 27 ms per Video Swin block at
    N = 392 (3% of a CPU training step).  ``scatter_add_`` over ``(heads,
    N * N)`` sums each bin from zero in increasing token-pair order, the
    same at any thread count (a thread owns whole heads): bitwise
    autograd's gradient at Swin's N = 49; at large N autograd's
    ``index_put_`` sums in another order, and the two agree to rounding.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, N: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return table[index].view(N, N, table.shape[1]).permute(2, 0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        heads = grad.shape[0]
        g = grad.contiguous().view(heads, -1)
        dtable = g.new_zeros(heads, ctx.rows).scatter_add_(1, index.expand(heads, -1), g)
        return dtable.t().contiguous(), None, None


def _plain_autograd(t: torch.Tensor) -> bool:
    """Whether ``t`` is an ordinary CPU tensor under eager reverse-mode autograd only (no functorch
    wrapper, forward-AD tangent, compile or trace): where :class:`_GatherBias` may replace the gather."""
    if t.device.type != "cpu" or not eager_plain(t):
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        return False
    return torch.autograd.forward_ad.unpack_dual(t).tangent is None


def gather_bias(table: torch.Tensor, index: torch.Tensor, N: int) -> torch.Tensor:
    """``(heads, N, N)`` bias: rows ``index`` (``(N * N,)`` int64) of ``table (rows, heads)``.

    The gather of every Swin model; where a CPU table needs its gradient,
    through :class:`_GatherBias` (same values, a cheaper deterministic
    backward), else the plain indexing (CUDA's sort-based ``index_put_`` is
    deterministic already; compile, export and functorch see plain ops).
    """
    if torch.is_grad_enabled() and table.requires_grad and _plain_autograd(table):
        return _GatherBias.apply(table, index, N)
    return table[index].view(N, N, table.shape[1]).permute(2, 0, 1).contiguous()
