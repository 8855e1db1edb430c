"""ONNX export of swin_ext models: translations of the ops into standard ONNX.

``torch.onnx.export(model, (x,), path, dynamo=True)`` keeps swin_ext's ops in
the captured graph and translates each into standard ONNX operators (opset
>= 18, no custom domain, no Roll), so the file runs in onnxruntime and in
TensorRT's ONNX parser:

* ``window_attention_fwd`` on 2-D maps and 3-D clips (and
  ``window_attention_v2_fwd``, with the ``ReduceL2`` normalisation of q and k
  and the per-head scale): pad, cyclic shift and window partition are one
  ``Gather`` of the token rows through a constant index (padding tokens read
  an appended ``qkv_pad`` row), the heads a ``Reshape`` + ``Transpose``,
  then ``MatMul`` / ``Add`` (the bias; the shift mask as a constant) /
  ``Softmax`` / ``MatMul``, and the inverse ``Gather`` back to the map;
* ``patch_merging_fwd``: the pending residual ``Add`` (when a branch is
  given), the 2x2 gather as one ``Gather`` (zero rows for odd sizes),
  ``LayerNormalization``, a ``Cast`` to the output dtype (under autocast);
* ``add_layernorm_fwd``: ``Add``, ``LayerNormalization``.

The spatial size is fixed at export (the window tables are constants); the
batch may be dynamic.  The translations are registered with torch's exporter
the first time it is imported (an import hook: importing swin_ext does not
import the exporter), and :func:`onnx_translation_table` returns them for an
explicit ``custom_translation_table=``.  :func:`export_onnx` wraps the export
and checks the file with onnxruntime when it is installed.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import math
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .layers.pos_bias import relative_position_index
from .ops.reference import SHIFT_MASK_VALUE

__all__ = ["export_onnx", "onnx_translation_table", "ExportError", "MIN_OPSET"]

#: The translations are written in opset 18 (ReduceL2 / ReduceLogSumExp take their axes as an input
#: from 18 on; LayerNormalization is 17): torch's converter cannot take them down to 17.
MIN_OPSET = 18


class ExportError(ValueError):
    """The model or the arguments cannot be exported (the message says why)."""


# ----------------------------------------------------------------------------- geometry tables


def _region_1d(pos, padded: int, w: int, shift: int):
    import numpy as np

    if shift == 0:
        return np.zeros_like(pos)
    return np.where(pos < padded - w, 0, np.where(pos < padded - shift, 1, 2))


def window_tables(sizes: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tuple[Any, Any, Optional[Any]]:
    """(token index per window slot, slot per token, shift mask) of a map, as swin_geometry.h defines them.

    ``sizes``, ``window``, ``shift``: ``(H, W)`` or ``(T, H, W)`` (a 2-D map is
    one frame with a window of depth 1).  Returns ``tok`` (nW * N,) int64: the
    row ``(z * H + y) * W + x`` of each window slot, or ``T * H * W`` (the
    padding row); ``inv`` (T * H * W,) int64: each token's slot; ``mask``
    (nW, 1, N, N) float32 from the shift-region ids (None without a shift).
    """
    import numpy as np

    if len(sizes) == 2:
        sizes, window, shift = (1, *sizes), (1, *window), (0, *shift)
    (T, H, W), (wt, wh, ww), (st, sh, sw) = sizes, window, shift
    nWt, nWh, nWw = -(-T // wt), -(-H // wh), -(-W // ww)
    Tp, Hp, Wp, N = nWt * wt, nWh * wh, nWw * ww, wt * wh * ww
    wz, wy, wx, f, r, c = np.meshgrid(np.arange(nWt), np.arange(nWh), np.arange(nWw), np.arange(wt), np.arange(wh),
                                      np.arange(ww), indexing="ij")
    rz, ry, rx = wz * wt + f, wy * wh + r, wx * ww + c  # rolled, padded coordinates
    z, y, x = (rz + st) % Tp, (ry + sh) % Hp, (rx + sw) % Wp  # roll(x, -s)[i] == x[(i + s) mod P]
    valid = (z < T) & (y < H) & (x < W)
    tok = np.where(valid, (z * H + y) * W + x, T * H * W).reshape(-1).astype(np.int64)
    inv = np.empty(T * H * W, dtype=np.int64)
    slots = np.arange(tok.size)
    inv[tok[valid.reshape(-1)]] = slots[valid.reshape(-1)]
    mask = None
    if st or sh or sw:
        region = (_region_1d(rz, Tp, wt, st) * 9 + _region_1d(ry, Hp, wh, sh) * 3 + _region_1d(rx, Wp, ww, sw))
        region = region.reshape(nWt * nWh * nWw, N)
        mask = np.where(region[:, :, None] != region[:, None, :], SHIFT_MASK_VALUE, 0.0).astype(np.float32)
        mask = mask[:, None]
    return tok, inv, mask


def merge_table(H: int, W: int):
    """Source row of each (output pixel, quadrant) of patch merging, ``H * W`` for zero padding."""
    import numpy as np

    H2, W2 = (H + 1) // 2, (W + 1) // 2
    oy, ox, q = np.meshgrid(np.arange(H2), np.arange(W2), np.arange(4), indexing="ij")
    y, x = 2 * oy + (q & 1), 2 * ox + (q >> 1)  # x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1)
    return np.where((y < H) & (x < W), y * W + x, H * W).reshape(-1).astype(np.int64)


# ----------------------------------------------------------------------------- translations


def _static_dims(value, names: str, what: str) -> Tuple[int, ...]:
    dims = tuple(value.shape)
    out = []
    for i, d in enumerate(dims):
        if i == 0:
            out.append(d)
            continue
        if not isinstance(d, int):
            raise ExportError(
                f"swin_ext ONNX export: {what} needs a static {names[i] if i < len(names) else 'dimension'} "
                f"(dimension {i} is {d}); only the batch dimension may be dynamic"
            )
        out.append(d)
    return tuple(out)


def _rows_with_pad(op, x, pad, C: int):
    """(B, T, C) rows with one more row appended: ``pad`` (C,), or zeros."""
    shape = op.Concat(op.Shape(x, start=0, end=1), op.Constant(value_ints=[1, C]), axis=0)
    if pad is None:
        row = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), shape)
    else:
        row = op.Expand(op.Reshape(pad, op.Constant(value_ints=[1, 1, C])), shape)
    return op.Concat(x, row, axis=1)


def _window_attention_graph(qkv, bias, qkv_pad, window, shift, scale: float, head_scale=None):
    """The window attention as standard ONNX, on a 2-D map or a 3-D clip (``window``, ``shift``: one
    entry per map axis); with head_scale, Swin V2's cosine attention."""
    from onnxscript import opset18 as op

    dims = _static_dims(qkv, "BHWC" if len(qkv.shape) == 4 else "BTHWC", "window_attention")
    sizes, C3 = dims[1:-1], dims[-1]
    L = math.prod(sizes)
    N = math.prod(window)
    if len(bias.shape) == 2:  # the relative-position table (rows, heads): gathered by the standard index
        heads = bias.shape[1]
        index = relative_position_index(tuple(window)).view(-1).numpy()
        bias = op.Transpose(op.Reshape(op.Gather(bias, op.Constant(value=_tensor(index)), axis=0),
                                       op.Constant(value_ints=[N, N, heads])), perm=[2, 0, 1])
    else:
        heads = bias.shape[0]
    C, d = C3 // 3, C3 // 3 // heads
    tok, inv, mask = window_tables(sizes, tuple(window), tuple(shift))
    nW = tok.size // N
    x = op.Reshape(qkv, op.Constant(value_ints=[-1, L, C3]))
    if tok.max() == L:  # padding tokens
        x = _rows_with_pad(op, x, qkv_pad, C3)
    g = op.Gather(x, op.Constant(value=_tensor(tok)), axis=1)  # (B, nW * N, 3C)
    g = op.Transpose(op.Reshape(g, op.Constant(value_ints=[-1, nW, N, 3, heads, d])), perm=[3, 0, 1, 4, 2, 5])
    q = op.Gather(g, op.Constant(value_int=0), axis=0)  # (B, nW, heads, N, d)
    k = op.Gather(g, op.Constant(value_int=1), axis=0)
    v = op.Gather(g, op.Constant(value_int=2), axis=0)
    if head_scale is not None:  # x / max(||x||, 1e-12), as F.normalize
        axes = op.Constant(value_ints=[-1])
        eps = op.CastLike(op.Constant(value_float=1e-12), q)
        q = op.Div(q, op.Max(op.ReduceL2(q, axes, keepdims=1), eps))
        k = op.Div(k, op.Max(op.ReduceL2(k, axes, keepdims=1), eps))
    logits = op.MatMul(q, op.Transpose(k, perm=[0, 1, 2, 4, 3]))
    logits = op.CastLike(logits, bias)  # softmax in the accumulation dtype (float32 for half inputs), as the kernels
    if head_scale is not None:
        logits = op.Mul(logits, op.Reshape(head_scale, op.Constant(value_ints=[1, 1, heads, 1, 1])))
    else:
        logits = op.Mul(logits, op.CastLike(op.Constant(value_float=float(scale)), bias))
    logits = op.Add(logits, bias)
    if mask is not None:
        logits = op.Add(logits, op.CastLike(op.Constant(value=_tensor(mask)), bias))
    p = op.Softmax(logits, axis=-1)
    lse = op.ReduceLogSumExp(logits, op.Constant(value_ints=[-1]), keepdims=0)  # (B, nW, heads, N)
    o = op.MatMul(op.CastLike(p, v), v)  # (B, nW, heads, N, d)
    o = op.Reshape(op.Transpose(o, perm=[0, 1, 3, 2, 4]), op.Constant(value_ints=[-1, nW * N, C]))
    out = op.Reshape(op.Gather(o, op.Constant(value=_tensor(inv)), axis=1),
                     op.Constant(value_ints=[-1, *sizes, C]))
    return out, lse


def _attention_onnx(qkv, bias, qkv_pad=None, window_size: Sequence[int] = (7, 7), shift: Sequence[int] = (0, 0),
                    scale: float = 1.0):
    """ONNX of swin_ext::window_attention_fwd (2-D maps and 3-D clips): returns (out, lse)."""
    return _window_attention_graph(qkv, bias, qkv_pad, window_size, shift, scale)


def _attention_v2_onnx(
    qkv, bias, qkv_pad=None, head_scale=None, window_size: int = 8, shift_h: int = 0, shift_w: int = 0
):
    """ONNX of swin_ext::window_attention_v2_fwd (Swin V2's cosine attention): returns (out, lse)."""
    return _window_attention_graph(qkv, bias, qkv_pad, (window_size, window_size), (shift_h, shift_w), 1.0,
                                   head_scale)


def _layer_norm_onnx(op, x, weight, bias, eps: float):
    """LayerNormalization over the last dim; returns (y, mean, rstd) with mean/rstd (...) in float32."""
    y, mean, rstd = op.LayerNormalization(
        x, op.CastLike(weight, x), op.CastLike(bias, x), axis=-1, epsilon=float(eps), stash_type=1
    )
    axes = op.Constant(value_ints=[-1])
    return y, op.Squeeze(mean, axes), op.Squeeze(rstd, axes)


def _cast_to(op, v, dtype):
    """``v`` cast to the torch dtype ``dtype`` (``None``: unchanged)."""
    if dtype is None:
        return v
    import onnx_ir as ir
    from torch.onnx._internal.exporter import _type_casting  # noqa: F401  (present since torch 2.6)

    to = {torch.float16: ir.DataType.FLOAT16, torch.bfloat16: ir.DataType.BFLOAT16, torch.float32: ir.DataType.FLOAT,
          torch.float64: ir.DataType.DOUBLE}.get(dtype)
    return v if to is None else op.Cast(v, to=int(to))


def _merging_onnx(x, weight, bias, eps: float = 1e-5, branch=None, y_dtype=None):
    """ONNX of swin_ext::patch_merging_fwd: returns (y, mean, rstd)."""
    from onnxscript import opset18 as op

    _, H, W, C = _static_dims(x, "BHWC", "patch_merging")
    H2, W2 = (H + 1) // 2, (W + 1) // 2
    idx = merge_table(H, W)
    if branch is not None:
        x = op.Add(x, op.CastLike(branch, x))  # the pending residual add, in x's dtype
    rows = op.Reshape(x, op.Constant(value_ints=[-1, H * W, C]))
    if idx.max() == H * W:
        rows = _rows_with_pad(op, rows, None, C)
    g = op.Reshape(
        op.Gather(rows, op.Constant(value=_tensor(idx)), axis=1), op.Constant(value_ints=[-1, H2, W2, 4 * C])
    )
    y, mean, rstd = _layer_norm_onnx(op, g, weight, bias, eps)
    return _cast_to(op, y, y_dtype), op.CastLike(mean, weight), op.CastLike(rstd, weight)


def _tensor(a):
    import onnx_ir as ir

    return ir.tensor(a)


def onnx_translation_table() -> Dict[Any, Callable]:
    """``{swin_ext op overload: ONNX translation}`` for ``torch.onnx.export(..., custom_translation_table=)``."""
    table: Dict[Any, Callable] = {
        torch.ops.swin_ext.window_attention_fwd.default: _attention_onnx,
        torch.ops.swin_ext.patch_merging_fwd.default: _merging_onnx,
    }
    extra = _extra_translations()
    table.update(extra)
    return table


def _extra_translations() -> Dict[Any, Callable]:
    """Translations of ops that may not be compiled in every build."""
    out: Dict[Any, Callable] = {}
    if hasattr(torch.ops.swin_ext, "add_layernorm_fwd"):
        out[torch.ops.swin_ext.add_layernorm_fwd.default] = _add_layernorm_onnx
    if hasattr(torch.ops.swin_ext, "bias_gelu_fwd"):
        out[torch.ops.swin_ext.bias_gelu_fwd.default] = _bias_gelu_onnx
    if hasattr(torch.ops.swin_ext, "window_attention_v2_fwd"):
        out[torch.ops.swin_ext.window_attention_v2_fwd.default] = _attention_v2_onnx
    return out


def _add_layernorm_onnx(x, branch, weight, bias, eps: float = 1e-5, y_dtype=None):
    """ONNX of swin_ext::add_layernorm_fwd: returns (h, y, mean, rstd)."""
    from onnxscript import opset18 as op

    h = op.Add(x, op.CastLike(branch, x))
    y, mean, rstd = _layer_norm_onnx(op, h, weight, bias, eps)
    return h, _cast_to(op, y, y_dtype), op.CastLike(mean, weight), op.CastLike(rstd, weight)



def _bias_gelu_onnx(z, bias):
    """ONNX of swin_ext::bias_gelu_fwd: the exact GELU 0.5 u (1 + erf(u / sqrt(2))) of u = z + bias."""
    from onnxscript import opset18 as op

    u = op.Add(z, op.CastLike(bias, z))
    c = lambda v: op.CastLike(op.Constant(value_float=v), z)  # noqa: E731
    return op.Mul(op.Mul(c(0.5), u), op.Add(c(1.0), op.Erf(op.Mul(u, c(0.7071067811865476)))))


# ----------------------------------------------------------------------------- registration with torch.onnx

# torch's exporter builds its registry for every export from the torchlib
# list of _torchlib_registry; the hook waits for _registration (which imports
# that list, and is complete only once its own import has finished).
_REGISTRY_MODULE = "torch.onnx._internal.exporter._registration"
_registered = False


def _register_with_torch_onnx(module) -> None:
    """Adds the translations to torch's exporter registry (what every export starts from)."""
    global _registered
    if _registered:
        return
    try:
        from torch.onnx._internal.exporter._torchlib import _torchlib_registry

        for target, fn in onnx_translation_table().items():
            _torchlib_registry._registry.append(
                module.OnnxDecompMeta(onnx_function=fn, fx_target=target, signature=None, is_custom=True)
            )
        _registered = True
    except Exception as e:  # pragma: no cover - another torch's exporter internals
        import warnings

        warnings.warn(
            f"swin_ext could not register its ONNX translations with torch.onnx ({e!r}); "
            "pass custom_translation_table=swin_ext.onnx_translation_table() or use swin_ext.export_onnx"
        )


class _RegistryHook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers the translations right after torch imports its exporter registry."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                self._inner = spec.loader
                spec.loader = self
                return spec
        return None

    def create_module(self, spec):
        return self._inner.create_module(spec) if hasattr(self._inner, "create_module") else None

    def exec_module(self, module):
        self._inner.exec_module(module)
        _register_with_torch_onnx(module)


def install_onnx_hook() -> None:
    """Registers now if torch's exporter is already imported, else when it is."""
    mod = sys.modules.get(_REGISTRY_MODULE)
    if mod is not None:
        _register_with_torch_onnx(mod)
    elif not any(isinstance(f, _RegistryHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryHook())


# ----------------------------------------------------------------------------- export_onnx


def _max_opset() -> int:
    """The newest opset the installed ``onnx`` package defines (torch's exporter converts to it)."""
    try:
        import onnx

        return int(onnx.defs.onnx_opset_version())
    except Exception:  # pragma: no cover - onnx is a dependency of torch's exporter
        return MIN_OPSET


def _check_export_args(model, example, opset_version, rtol) -> Tuple[torch.Tensor, ...]:
    """Every argument of :func:`export_onnx` checked before the (slow) export; returns the example tuple."""
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"export_onnx: model must be a torch.nn.Module, got {type(model).__name__}")
    in_training = {name for name, m in model.named_modules() if m.training}
    training = [
        n
        for n, _ in model.named_modules()  # the outermost modules in training mode
        if n in in_training and (n == "" or n.rpartition(".")[0] not in in_training)
    ]
    if training:
        where = (
            "the model is"
            if "" in training
            else (
                f"its submodule{'s' if len(training) > 1 else ''} {training[:4]}{' ...' if len(training) > 4 else ''} "
                f"{'are' if len(training) > 1 else 'is'}"
            )
        )
        raise ExportError(
            f"export_onnx: {where} in training mode (dropout, stochastic depth and the training-only "
            "paths would be exported); call model.eval() first, which sets every submodule"
        )
    if opset_version is not None:
        if not isinstance(opset_version, int) or isinstance(opset_version, bool):
            raise TypeError(f"export_onnx: opset_version must be an int, got {type(opset_version).__name__}")
        if not MIN_OPSET <= opset_version <= _max_opset():
            raise ExportError(
                f"export_onnx: opset_version {opset_version} is not supported; swin_ext's translations "
                f"need opset >= {MIN_OPSET} and the installed onnx package defines opsets up to "
                f"{_max_opset()}"
            )
    if rtol is not None:
        if not isinstance(rtol, (int, float)) or isinstance(rtol, bool):
            raise TypeError(f"export_onnx: rtol must be a number, got {type(rtol).__name__}")
        if not (math.isfinite(rtol) and rtol >= 0):
            raise ExportError(f"export_onnx: rtol must be a finite number >= 0 (a relative error bound), got {rtol}")
    args = (
        (example,)
        if isinstance(example, torch.Tensor)
        else tuple(example)
        if isinstance(example, (list, tuple))
        else ()
    )
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ExportError("export_onnx: example must be a tensor or a sequence of tensors")
    for i, a in enumerate(args):
        if (a.is_floating_point() or a.is_complex()) and not bool(torch.isfinite(a).all()):
            bad = int((~torch.isfinite(a)).sum())
            raise ExportError(
                f"export_onnx: example{'' if len(args) == 1 else f' {i}'} holds {bad} NaN or infinite "
                "values; the export is traced and checked on it: pass a finite example"
            )
    dtypes = {t.dtype for t in list(model.parameters()) + list(args) if t.is_floating_point()}
    if torch.float64 in dtypes:
        raise ExportError(
            "export_onnx: float64 is not supported: onnxruntime and TensorRT have no float64 convolution "
            "or LayerNormalization kernels, so the file could not run; export model.float() with a "
            "float32 example (or .half() / .bfloat16())"
        )
    param = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    for i, a in enumerate(args):
        if a.is_floating_point() and param is not None and a.dtype != param:
            raise ExportError(
                f"export_onnx: example{'' if len(args) == 1 else f' {i}'} is {a.dtype} but the model's "
                f"parameters are {param}; pass an example of the model's dtype"
            )
    return args


def _file_opset(path: str) -> Optional[int]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


def export_onnx(
    model: torch.nn.Module,
    path: str,
    example: Union[torch.Tensor, Sequence[torch.Tensor]],
    dynamic_batch: bool = True,
    check: bool = True,
    opset_version: Optional[int] = None,
    rtol: Optional[float] = None,
) -> "Any":
    """Exports ``model`` (in eval mode) to ONNX at ``path``; returns the ONNXProgram.

    Args:
        model: a swin_ext model (or any module using swin_ext's ops), in eval
            mode -- every submodule (a block left in training mode is refused,
            not silently switched: call ``model.eval()``).  float32, float16
            or bfloat16 (float64 is refused: no ONNX runtime convolves in it).
        path: the ``.onnx`` file to write.
        example: an input ``(B, 3, H, W)`` (or a tuple of inputs), finite, of
            the model's dtype; the spatial size is fixed in the file.
        dynamic_batch: export the batch dimension as dynamic.
        check: run the file in onnxruntime (when installed) on ``example`` and
            compare every output (a tensor, tuple or dict of tensors) with
            PyTorch's: relative error <= ``rtol`` (default 1e-4 in float32,
            1e-2 in half precision), else an ExportError.
        opset_version: ONNX opset, from :data:`MIN_OPSET` to the newest the
            installed ``onnx`` defines (default torch's); a file torch could
            not convert to it is an ExportError.
        rtol: a finite number >= 0.

    Raises :class:`ExportError` (a ``ValueError``) naming the problem, or
    ``TypeError`` for an ``rtol`` / ``opset_version`` of the wrong type.
    """
    args = _check_export_args(model, example, opset_version, rtol)
    dyn = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dyn = tuple({0: batch} for _ in args)
    kw = {} if opset_version is None else {"opset_version": opset_version}
    with torch.no_grad():
        prog = torch.onnx.export(
            model,
            args,
            path,
            dynamo=True,
            dynamic_shapes=dyn,
            custom_translation_table=onnx_translation_table(),
            verbose=False,
            **kw,
        )
    if opset_version is not None:
        got_opset = _file_opset(path)
        if got_opset != opset_version:
            raise ExportError(
                f"export_onnx: torch.onnx could not convert the model to opset {opset_version} (its "
                f"version converter failed; {path} holds opset {got_opset}); use the default opset "
                "(opset_version=None) or another one"
            )
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            return prog
        _check_with_onnxruntime(ort, model, path, args, rtol)
    return prog


def _check_with_onnxruntime(ort, model, path: str, args, rtol: Optional[float]) -> None:
    """Every output of the file in onnxruntime against PyTorch's, on the example."""
    import numpy as np
    from torch.utils._pytree import tree_leaves

    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(
            f"export_onnx: onnxruntime {ort.__version__} cannot load {path} ({' '.join(str(e).split())})"
        ) from e
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        out = model(*args)
    want = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if len(got) != len(want):
        raise ExportError(f"export_onnx: the file has {len(got)} outputs, the model returns {len(want)} tensors")
    tol = rtol if rtol is not None else (1e-4 if args[0].dtype in (torch.float32, torch.float64) else 1e-2)
    for i, (g, w) in enumerate(zip(got, want)):
        w = w.detach().float().cpu().numpy()
        which = "" if len(want) == 1 else f" {i}"
        if not np.isfinite(w).all():
            raise ExportError(
                f"export_onnx: the model's own output{which} on the example is not finite (NaN or inf); "
                "the export cannot be checked: look at the model's weights"
            )
        err = float(np.linalg.norm(g.astype(np.float64) - w) / max(np.linalg.norm(w), 1e-30))
        if not err <= tol:
            raise ExportError(
                f"export_onnx: onnxruntime's output{which} differs from PyTorch's by {err:.2e} "
                f"(relative), more than {tol:.0e}"
            )
