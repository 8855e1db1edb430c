"""Linear layers with the CPU's fast GEMM paths: oneDNN's, or swin_ext's own.

What runs where (``fast=True``, the fused backend's setting):

* **CPU, float32, no autocast, swin_ext's CPU GEMMs enabled** (:func:`config.use_cpu_gemm`: by
  default on an AVX2 or AVX-512 CPU, :func:`config.cpu_gemm_preferred`) and oneDNN not (it takes
  precedence when chosen), both widths multiples of 16 (every block Linear and merge reduction of
  the Swin family; not the classifier): the forward ``x W^T + b``, the input gradient ``grad W``
  and the weight gradient ``grad^T x`` on ``torch.ops.swin_ext.linear_cpu_fwd`` /
  ``linear_cpu_bwd`` (``csrc/cpu/linear_cpu.cpp``: 6 x 16 register blocks, on AVX-512 6 x 32,
  packed panels, bitwise the same for any thread count and ISA); the bias gradient a ``sum``.  On
  the AVX2 EPYC (Zen 2) they run the Swin-T Linears at 1.19-1.26x MKL's rate (by the model's
  FLOPs), which took the model's CPU inference from 568 to 466-476 ms (batch 8) and the training
  step from 951 to 798-801 ms (batch 4; ``benchmarks/results/cpu_linear_gemm_avx2_2026-12-05.md``);
  on the AVX-512 EPYC (Zen 5) at 1.87-1.97x MKL's, and the model faster than on oneDNN's GEMMs
  (``benchmarks/results/cpu_gemm_avx512_zen5_2026-12-06.md``).  The op has Python autograd and
  fake kernels (registered below), so ``torch.compile`` keeps it; an exported program keeps
  ``aten.linear``.

* **CPU, float32, no autocast, oneDNN available and enabled** (:func:`config.use_onednn`: by default
  only on an AVX-512 CPU whose build lacks swin_ext's GEMMs, :func:`config.onednn_preferred`;
  elsewhere when chosen): the forward GEMM is oneDNN's (``torch.ops.mkldnn._linear_pointwise``, the
  op inductor's CPU backend uses), the bias in its epilogue, wrapped as the
  custom op ``swin_ext_layers::onednn_linear`` so that ``torch.compile``
  keeps it as one kernel.  Its autograd formula is the plain Linear
  backward: the input gradient ``grad @ W`` on oneDNN too, the weight
  gradient ``grad^T @ x`` on swin_ext's GEMM where that is on (else torch's ``mm``), the bias
  gradient a ``sum`` (the numbers: ``docs/models.md``).
  :func:`linear_gelu` puts fc1's exact (erf) GELU into the GEMM epilogue in
  inference (no pass over the ``(tokens, 4C)`` hidden map for the GELU); in
  training the epilogue cannot be used, since the GELU backward needs the
  pre-activation, which the epilogue does not keep (keeping it was
  measured at under 1% of a step: not done).
* **CPU training**, fc1 + GELU (:func:`linear_gelu`, ``fast=True``, float32
  or CPU autocast to bfloat16, autograd recording): the bias-free GEMM (on
  oneDNN in float32) and :func:`swin_ext.bias_gelu` -- its vectorised CPU
  kernel writes the GELU in one pass and, in the backward, GELU' and the bias
  gradient in one (torch's GELU backward writes the gradient and the Linear's
  backward reads it again for the bias); :data:`CPU_TRAINING_BIAS_GELU`.
* **CUDA**, fc1 + GELU (:func:`linear_gelu`, ``fast=True``): the bias-free
  GEMM ``F.linear(x, weight)`` and :func:`swin_ext.bias_gelu` (bias + exact
  GELU in one pass, and in the backward GELU' and the bias gradient in one);
  the other Linears ``F.linear``.
* **anything else** (float64 / half inputs or autocast on the CPU, a width that is not a multiple of
  16 without oneDNN, ``torch.func``
  transforms, forward-mode AD, ``torch.export`` / ONNX export on the CPU, ``fast=False``):
  ``F.linear`` and ``F.gelu``, as ``nn.Linear``.

Second-order gradients (``create_graph=True``) through the oneDNN path and swin_ext's GEMMs are
computed with differentiable torch ops.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import bias_gelu_unchecked as _bias_gelu_op
from ..ops import forward_mode, functorch_active
from . import config
from .pos_bias import eager_plain

__all__ = ["Linear", "linear", "linear_gelu", "mlp_inference"]

#: CPU training: fc1's bias + GELU as :func:`swin_ext.bias_gelu` after the
#: bias-free GEMM (measured: benchmarks/results/, issue 20); False: the GEMM
#: with its bias, then torch's GELU.
CPU_TRAINING_BIAS_GELU = True

#: CPU inference: an MLP whose ``(tokens, hidden)`` map would take more than
#: this many bytes runs in row chunks (:func:`mlp_inference`).
MLP_CHUNK_MIN_BYTES = 16 << 20
#: ... of about this many bytes of hidden map each.
MLP_CHUNK_BYTES = 6 << 20
#: CPU inference on swin_ext's GEMMs: an MLP whose two weights hold at most this many elements runs
#: as one fused op (:func:`mlp_inference`); larger weights, re-read once per row block there, run as
#: two Linears.  Measured on the AVX2 EPYC (2 threads, Swin-T's MLPs at batch 8): fused 1.08x /
#: 1.05x / 1.03x the unfused time at stages 1 / 2 / 3, 0.49x at stage 4 (weights of 4.7 M
#: elements); the limit takes stages 1-2 (benchmarks/results/cpu_mlp_fused_avx2_2026-12-06.md).
MLP_FUSED_MAX_WEIGHT = 2 * 768 * 192


def _plain_float32(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """What both CPU GEMM paths need: float32 input, weight and bias (or none), no CPU autocast (it
    picks the GEMM's dtype itself), no ``torch.func`` transform or forward-mode AD (their custom ops
    have no rule for them: a dual input's tangent would be lost), not exporting (an exported program,
    ``torch.export`` or ONNX, keeps ``aten.linear``)."""
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and config.autocast_dtype("cpu") is None
        and not functorch_active()
        and not forward_mode((x, weight, bias))
        and not torch.compiler.is_exporting()
    )


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """A CPU input, oneDNN on, non-empty widths, and :func:`_plain_float32`."""
    return (
        x.device.type == "cpu"  # first the two tests that end it off the path: a GPU model, oneDNN off
        and config.use_onednn()
        and x.dim() >= 1
        and x.shape[-1] > 0  # oneDNN has no primitive for an empty reduction
        and weight.shape[0] > 0
        and _plain_float32(x, weight, bias)
    )


def _cpu_gemm_ok(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """A CPU input, swin_ext's CPU GEMMs on (:func:`config.use_cpu_gemm`), a weight they take
    (:func:`_cpu_gemm_weight_ok`) and :func:`_plain_float32`."""
    return (
        x.device.type == "cpu"  # first the two tests that end it off the path: a GPU model, the GEMMs off
        and config.use_cpu_gemm()
        and x.dim() >= 1
        and _cpu_gemm_weight_ok(weight)
        and x.shape[-1] == weight.shape[1]
        and _plain_float32(x, weight, bias)
    )


def _cpu_gemm_weight_ok(weight: torch.Tensor) -> bool:
    """A 2-D weight whose widths are positive multiples of 16 (the CPU GEMM's column tile; every
    Swin Linear but the classifier)."""
    return (
        weight.dim() == 2
        and weight.shape[0] % 16 == 0
        and weight.shape[1] % 16 == 0
        and weight.shape[0] > 0
        and weight.shape[1] > 0
    )


def _cpu_linear_setup(ctx, inputs, output):
    x2d, weight, bias = inputs
    ctx.save_for_backward(x2d, weight)
    ctx.has_bias = bias is not None


def _cpu_linear_backward(ctx, grad):
    """The Linear backward on swin_ext's CPU GEMMs (``dx = grad W``, ``dW = grad^T x``), the bias
    gradient by ``sum``; differentiable torch ops when grad mode is on (``create_graph=True``)."""
    x2d, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dw = db = None
    if torch.is_grad_enabled():
        if need_x:
            dx = grad @ weight
        if need_w:
            dw = grad.t().mm(x2d)
    elif need_x or need_w:
        gx, gw = torch.ops.swin_ext.linear_cpu_bwd(grad, x2d, weight, [need_x, need_w])
        dx = gx if need_x else None
        dw = gw if need_w else None
    if need_b and ctx.has_bias:
        db = grad.sum(0)
    return dx, dw, db


if config._CPU_GEMM_KERNEL:  # the op exists in this build

    @torch.library.register_fake("swin_ext::linear_cpu_fwd")
    def _linear_cpu_fwd_fake(x, weight, bias):
        return x.new_empty((x.shape[0], weight.shape[0]))

    @torch.library.register_fake("swin_ext::linear_cpu_bwd")
    def _linear_cpu_bwd_fake(grad_y, x, weight, needs):
        dx = x.new_empty(x.shape) if needs[0] else x.new_empty((0,))
        dw = weight.new_empty(weight.shape) if needs[1] else weight.new_empty((0,))
        return dx, dw

    torch.library.register_autograd(
        "swin_ext::linear_cpu_fwd", _cpu_linear_backward, setup_context=_cpu_linear_setup
    )

if config._CPU_MLP_KERNEL:

    @torch.library.register_fake("swin_ext::mlp_cpu_fwd")
    def _mlp_cpu_fwd_fake(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        return x.new_empty((x.shape[0], fc2_weight.shape[0]))


def _lp(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], act: str = "none") -> torch.Tensor:
    if act == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


# The oneDNN GEMM as a custom op: eagerly it is one dispatch to torch's op; under
# torch.compile inductor keeps it as an opaque kernel (its own lowering of
# mkldnn._linear_pointwise wants a frozen, constant weight).
@torch.library.custom_op("swin_ext_layers::onednn_linear", mutates_args=(), device_types="cpu")
def onednn_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], act: str) -> torch.Tensor:
    """``act(x2d @ weight^T + bias)`` on oneDNN; ``x2d (T, in)``, ``weight (out, in)`` (any strides),
    ``act`` ``"none"`` or ``"gelu"`` (exact; inference only)."""
    return _lp(x2d, weight, bias, act)


@onednn_linear.register_fake
def _onednn_linear_fake(x2d, weight, bias, act):
    return x2d.new_empty((x2d.shape[0], weight.shape[0]))


def _onednn_linear_setup(ctx, inputs, output):
    x2d, weight, bias, act = inputs
    if act != "none":
        raise RuntimeError("swin_ext_layers::onednn_linear: the GELU epilogue is for inference only")
    ctx.save_for_backward(x2d, weight)
    ctx.has_bias = bias is not None


def _onednn_linear_backward(ctx, grad):
    """The plain Linear backward: ``dx = grad @ W`` on oneDNN; ``dW = grad^T x`` on swin_ext's CPU GEMM
    where it is on (:func:`config.use_cpu_gemm`) and takes the weight, else by ``mm``; ``db`` by
    ``sum``.  Why the weight gradient is not oneDNN's or ``mm``'s: on the AVX-512 AMD EPYC (Zen 5),
    swin_ext's AVX-512 tiles run Swin-T's weight gradients at 383 GFLOP/s on two threads against
    ``mm``'s (MKL) 205, and oneDNN's (reading the transposed operands in place) is slower than ``mm``
    at stage 1's shapes (``benchmarks/results/cpu_gemm_avx512_zen5_2026-12-06.md``); and its result
    is bitwise the same for any thread count."""
    x2d, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dw = db = None
    if need_x:
        if torch.is_grad_enabled():  # create_graph=True: differentiable ops
            dx = grad @ weight
        else:
            dx = onednn_linear(grad.contiguous(), weight.t(), None, "none")
    if need_w:
        if not torch.is_grad_enabled() and config.use_cpu_gemm() and _cpu_gemm_weight_ok(weight):
            dw = torch.ops.swin_ext.linear_cpu_bwd(grad, x2d, weight, [False, True])[1]
        else:
            dw = grad.t().mm(x2d)
    if need_b and ctx.has_bias:
        db = grad.sum(0)
    return dx, dw, db, None


onednn_linear.register_autograd(_onednn_linear_backward, setup_context=_onednn_linear_setup)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, fast: bool = True
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on the oneDNN path or swin_ext's CPU GEMMs when ``fast`` and
    eligible (module docstring).

    ``x (..., in)`` -> ``(..., out)``.
    """
    if fast and _onednn_ok(x, weight, bias):
        y = onednn_linear(x.reshape(-1, x.shape[-1]), weight, bias, "none")
    elif fast and _cpu_gemm_ok(x, weight, bias):
        y = torch.ops.swin_ext.linear_cpu_fwd(x.reshape(-1, x.shape[-1]), weight, bias)
    else:
        return F.linear(x, weight, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def linear_gelu(x: torch.Tensor, fc: nn.Linear, approximate: str = "none") -> torch.Tensor:
    """``F.gelu(fc(x), approximate)``, fc1 and its exact GELU, on the device's fused path.

    ``x (..., in)`` -> ``(..., out)``.

    * CPU inference (float32, oneDNN): one oneDNN GEMM with the exact GELU in
      its epilogue, saving a pass over the ``(tokens, 4C)`` hidden map, the
      largest tensor of a Swin block.  CPU training (float32, or autocast to
      bfloat16): the bias-free :func:`linear` then :func:`swin_ext.bias_gelu`
      (the GELU backward needs the pre-activation, which the epilogue does
      not keep; the bias gradient comes out of the GELU backward's pass).
      CPU inference without oneDNN (its default on a CPU without AVX-512):
      ``fc(x)`` then the GELU in place over it (:func:`_gelu_in_place_ok`).
    * CUDA (any dtype, autocast, training and inference): the bias-free GEMM
      ``F.linear(x, weight)`` then :func:`swin_ext.bias_gelu` -- the same
      forward bytes as ``addmm`` + GELU, and a backward that writes ``dz``
      and the bias gradient in one pass (torch's reads ``dz`` again for the
      bias).  cuBLASLt's GELU epilogue, reachable from torch as
      ``torch._addmm_activation(..., use_gelu=True)``, is the tanh
      approximation, not ``nn.GELU()``'s erf, so it is not used.
    """
    fast = getattr(fc, "fast", False)
    if (
        fast
        and approximate == "none"
        and x.device.type == "cuda"
        and fc.bias is not None
        and config.has_kernel("bias_gelu", "cuda")
    ):
        return _bias_gelu_op(F.linear(x, fc.weight), fc.bias)
    if (
        fast
        and CPU_TRAINING_BIAS_GELU
        and approximate == "none"
        and x.device.type == "cpu"
        and fc.bias is not None
        and torch.is_grad_enabled()
        and (x.requires_grad or fc.weight.requires_grad or fc.bias.requires_grad)
        and (config.autocast_dtype("cpu") or x.dtype) in (torch.float32, torch.bfloat16)
        and config.has_kernel("bias_gelu", "cpu")
        and not torch.compiler.is_exporting()
    ):
        return _bias_gelu_op(linear(x, fc.weight, None, fast), fc.bias)
    if (
        fast
        and approximate == "none"
        and not (
            torch.is_grad_enabled()
            and (x.requires_grad or fc.weight.requires_grad or (fc.bias is not None and fc.bias.requires_grad))
        )
        and _onednn_ok(x, fc.weight, fc.bias)
    ):
        y = onednn_linear(x.reshape(-1, x.shape[-1]), fc.weight, fc.bias, "gelu")
        return y.view(*x.shape[:-1], y.shape[-1])
    y = fc(x)
    if fast and x.device.type == "cpu" and _gelu_in_place_ok(fc, y):
        return torch.ops.aten.gelu_(y, approximate=approximate)
    return F.gelu(y, approximate=approximate)


def _gelu_in_place_ok(fc: nn.Module, y: torch.Tensor) -> bool:
    """Whether the GELU may overwrite fc's output ``y``: nothing records a gradient, an eager call on a
    plain tensor, and no forward hook of ``fc`` (or a global one) that may have kept ``y``.

    Why: in CPU inference without oneDNN's GELU epilogue, the out-of-place GELU allocated a second
    ``(tokens, hidden)`` map per MLP, the largest of a block (fresh pages, each faulting on first
    touch); in place it takes the same values in one map.  Measured on the AVX2 EPYC, Swin-T
    inference at batch 8: 584 -> 575 ms (``benchmarks/results/cpu_gemm_backend_avx2_2026-12-05.md``)."""
    return (
        not torch.is_grad_enabled()
        and eager_plain(y)
        and not functorch_active()
        and not forward_mode((y,))
        and not _has_hooks(fc)
    )


def mlp_inference(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, approximate: str = "none") -> Optional[torch.Tensor]:
    """``fc2(gelu(fc1(x)))`` on a fused CPU inference path, or ``None`` where none applies.

    ``x (..., in)`` -> ``(..., out)``.  Applies in inference (nothing records a gradient) to
    float32 CPU input, both Linears ``fast`` and without forward hooks (a fused path does not call
    the modules), the exact GELU, eager; the caller runs its usual path on ``None``.  Two paths:

    * **oneDNN** (:func:`config.use_onednn`), when the hidden map would exceed
      :data:`MLP_CHUNK_MIN_BYTES` (Swin-T's stage 1 from batch 4, stage 2 from batch 7, at 224 px;
      a stage run in image chunks, :mod:`swin_ext.layers.chunking`, passes smaller maps): row
      chunks of ~:data:`MLP_CHUNK_BYTES`, each oneDNN's fc1 with the GELU in its epilogue, then
      fc2.  Why: a hidden map that large is a fresh allocation of every call (glibc maps blocks
      over 32 MiB anew, so every page faults and is zeroed), written to DRAM and read back by fc2;
      the chunks are reused from the heap and stay in the cache.  Measured on the 2-core dev
      machine (benchmarks/results/, issue 20): Swin-T stage 1 at batch 8, 23.7 -> 15.6 ms per
      MLP.  Each row's result is the same GEMM's (the chunks split the token rows, never the
      reduction).
    * **swin_ext's CPU GEMMs** (:func:`config.use_cpu_gemm`, both widths multiples of 16), when
      the two weights hold at most :data:`MLP_FUSED_MAX_WEIGHT` elements:
      ``torch.ops.swin_ext.mlp_cpu_fwd`` (``csrc/cpu/mlp_cpu.cpp``), the whole MLP in one op
      whose rows go in blocks small enough that their hidden map never leaves the core's L2.
      The same bits as the training path's forward (fc1 without bias, :func:`swin_ext.bias_gelu`,
      fc2).  Swin-T inference at batch 8: 0.8-1.6% faster (the numbers: :data:`MLP_FUSED_MAX_WEIGHT`).
    """
    if (
        x.device.type != "cpu"  # first: the one test a GPU model's host pays per MLP
        or approximate != "none"
        or not (getattr(fc1, "fast", False) and getattr(fc2, "fast", False))
        or torch.compiler.is_compiling()
        or (
            torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in (*fc1.parameters(), *fc2.parameters())))
        )
        or _has_hooks(fc1)
        or _has_hooks(fc2)
    ):
        return None
    if _onednn_ok(x, fc1.weight, fc1.bias) and _onednn_ok(x, fc2.weight, fc2.bias):
        return _mlp_onednn_chunks(x, fc1, fc2)
    if (
        config._CPU_MLP_KERNEL
        and fc1.weight.numel() + fc2.weight.numel() <= MLP_FUSED_MAX_WEIGHT
        and fc2.weight.dim() == 2
        and fc2.weight.shape[1] == fc1.weight.shape[0]
        and _cpu_gemm_ok(x, fc1.weight, fc1.bias)
        and _cpu_gemm_weight_ok(fc2.weight)
        and _plain_float32(x, fc2.weight, fc2.bias)
    ):
        y = torch.ops.swin_ext.mlp_cpu_fwd(x.reshape(-1, x.shape[-1]), fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        return y.view(*x.shape[:-1], y.shape[-1])
    return None


def _has_hooks(m: nn.Module) -> bool:
    """Whether a forward hook (``m``'s own or a global one) would see the module's call."""
    return bool(m._forward_hooks or m._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _mlp_onednn_chunks(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> Optional[torch.Tensor]:
    """:func:`mlp_inference`'s oneDNN path: row chunks when the hidden map is large, else ``None``."""
    x2d = x.reshape(-1, x.shape[-1])
    rows, hidden = x2d.shape[0], fc1.weight.shape[0]
    hidden_bytes = rows * hidden * x2d.element_size()
    if hidden_bytes <= MLP_CHUNK_MIN_BYTES or fc2.weight.shape[1] != hidden:
        return None
    chunks = -(-hidden_bytes // MLP_CHUNK_BYTES)
    step = -(-rows // chunks)
    out = x2d.new_empty((rows, fc2.weight.shape[0]))
    for start in range(0, rows, step):
        h = _lp(x2d[start : start + step], fc1.weight, fc1.bias, "gelu")
        out[start : start + step] = _lp(h, fc2.weight, fc2.bias)
    return out.view(*x.shape[:-1], out.shape[-1])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, keys and initialisation) that takes the CPU GEMM paths of
    :func:`linear` (oneDNN's or swin_ext's) when :attr:`fast` (set by the model from its backend)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fast: bool = True, **kw) -> None:
        super().__init__(in_features, out_features, bias, **kw)
        #: use the CPU's fast GEMM paths (oneDNN's, swin_ext's) where eligible
        self.fast = bool(fast)
        config.onednn_available()  # probe once, eagerly (never while compiling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.fast)
