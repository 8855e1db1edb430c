// CPU kernels of patch merging (patch_merging_fwd / patch_merging_bwd,
// schemas in op_schemas.h): the stage's pending residual add, the 2x2 gather
// (zero padding of odd sizes) and LayerNorm over the 4C gathered channels.
//
// Forward, one pass per output pixel: the four source rows of x (and of the
// branch, added in float32 -- float64 if either is float64 -- and rounded to
// x's dtype, as add_layernorm does) are gathered into a 4C row buffer in the
// accumulation type, its statistics computed (layernorm_cpu.h: right for
// every finite input) and y written in y's dtype.  h = x + branch is never
// stored: the backward recomputes it from x and the branch.
//
// Backward, one pass per output pixel: h recomputed, the LayerNorm backward,
// dx scattered back to the four source rows in x's dtype (and, when asked, in
// the branch's dtype: the branch's gradient has the same values).  dweight /
// dbias are summed per fixed block of pixels into partials which are then
// added in block order, so they do not depend on the number of threads
// (bitwise reproducible, no atomics).
//
// The float32 cases -- x float32, branch none / float32 / bfloat16, y (grad)
// float32 / bfloat16, the float32 and CPU-autocast model -- run 8-wide
// passes (layernorm_cpu.h); every other dtype mix runs the generic row code,
// whose dtypes are resolved per row by a switch in the load/store helpers.
// Each is compiled twice (AVX2+FMA and baseline, see isa_dispatch.h) and
// picked at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "cpu_microkernels.h"
#include "layernorm_cpu.h"

namespace swin_ext {
namespace {

using cpu::load_row;
using cpu::round_row;
using cpu::row_stats;
using cpu::store_row;

// Output pixels per block of the weight/bias gradient partial sums.  Fixed,
// so that the reduction order (hence the result) is independent of threads.
constexpr int64_t kMergeRowsPerPartial = 64;

template <typename acc_t>
struct MergeArgs {
  int64_t B, H, W, C, H2, W2;
  acc_t eps;
  at::ScalarType x_t, b_t, y_t;  // x, branch, y (backward: grad_out)
  at::ScalarType d_t;            // backward: dbranch
  const acc_t* weight;
  const acc_t* bias;
  const void* x;
  const void* branch;  // null: no residual add
  // forward
  void* y;
  acc_t* mean;
  acc_t* rstd;
  // backward
  const void* grad_out;
  const acc_t* mean_in;
  const acc_t* rstd_in;
  void* dx;
  void* dbranch;  // null: not asked for
  acc_t* dw_part;
  acc_t* db_part;

  int64_t pixels() const { return B * H2 * W2; }
  // Source row of quadrant q of output pixel pix (b, oy, ox), or -1 for zero padding.
  int64_t source_row(int64_t pix, int q) const {
    const int64_t ox = pix % W2, oy = (pix / W2) % H2, b = pix / (W2 * H2);
    int64_t y, xx;
    return merge_source(H, W, oy, ox, q, &y, &xx) ? (b * H + y) * W + xx : -1;
  }
};

// ---------------------------------------------------------------- generic rows

// h of output pixel pix gathered into buf (4C, zeros for padding); s and t
// are C-element scratch rows in the type the add runs in.
template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void gather_h(const MergeArgs<acc_t>& a, int64_t pix, add_t* __restrict s, add_t* __restrict t,
                                 acc_t* __restrict buf) {
  const int64_t C = a.C;
  for (int q = 0; q < 4; ++q) {
    acc_t* __restrict dst = buf + q * C;
    const int64_t row = a.source_row(pix, q);
    if (row < 0) {
      std::fill(dst, dst + C, acc_t(0));
      continue;
    }
    load_row(a.x_t, a.x, row, C, s);
    if (a.branch != nullptr) {
      load_row(a.b_t, a.branch, row, C, t);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) s[c] += t[c];
      round_row(a.x_t, s, C);
    }
    cpu::cvt_row(s, dst, C);
  }
}

// Forward of output pixels [begin, end).  add_t: the type the add runs in.
template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void merging_fwd_pixels(const MergeArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t C4 = 4 * a.C;
  std::vector<add_t> scratch(2 * a.C);
  std::vector<acc_t> storage(C4);
  acc_t* __restrict buf = storage.data();
  const acc_t* __restrict w = a.weight;
  const acc_t* __restrict bb = a.bias;
  for (int64_t pix = begin; pix < end; ++pix) {
    gather_h(a, pix, scratch.data(), scratch.data() + a.C, buf);
    const auto st = row_stats(buf, C4, a.eps);
    a.mean[pix] = st.mean_store;
    a.rstd[pix] = st.rstd_store;
    const acc_t m = st.mean, rs = st.rstd;
#pragma omp simd
    for (int64_t c = 0; c < C4; ++c) buf[c] = (buf[c] - m) * rs * w[c] + bb[c];
    store_row(a.y_t, a.y, pix, C4, buf);
  }
}

// Backward of the fixed pixel blocks [begin, end): LayerNorm backward,
// scatter into dx (and dbranch), per-block weight/bias gradient partials.
template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void merging_bwd_blocks(const MergeArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C, C4 = 4 * C, P = a.pixels();
  std::vector<add_t> scratch(2 * C);
  std::vector<acc_t> storage(2 * C4);
  acc_t* __restrict xhat = storage.data();
  acc_t* __restrict g = storage.data() + C4;
  const acc_t* __restrict w = a.weight;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C4);
  for (int64_t blk = begin; blk < end; ++blk) {
    acc_t* __restrict dw = a.dw_part + blk * C4;
    acc_t* __restrict db = a.db_part + blk * C4;
    std::fill(dw, dw + C4, acc_t(0));
    std::fill(db, db + C4, acc_t(0));
    const int64_t p_end = std::min(P, (blk + 1) * kMergeRowsPerPartial);
    for (int64_t pix = blk * kMergeRowsPerPartial; pix < p_end; ++pix) {
      gather_h(a, pix, scratch.data(), scratch.data() + C, xhat);
      load_row(a.y_t, a.grad_out, pix, C4, g);
      const acc_t m = a.mean_in[pix], rs = a.rstd_in[pix];
      acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t c = 0; c < C4; ++c) {
        const acc_t gy = g[c];
        const acc_t xh = (xhat[c] - m) * rs;
        xhat[c] = xh;
        dw[c] += gy * xh;
        db[c] += gy;
        g[c] = gy * w[c];
        sum_g += g[c];
        sum_gx += g[c] * xh;
      }
      const acc_t mg = sum_g * inv_n, mgx = sum_gx * inv_n;
#pragma omp simd
      for (int64_t c = 0; c < C4; ++c) xhat[c] = rs * (g[c] - mg - xhat[c] * mgx);
      for (int q = 0; q < 4; ++q) {
        const int64_t row = a.source_row(pix, q);
        if (row < 0) continue;  // padding: no gradient
        store_row(a.x_t, a.dx, row, C, xhat + q * C);
        if (a.dbranch != nullptr) store_row(a.d_t, a.dbranch, row, C, xhat + q * C);
      }
    }
  }
}

// ---------------------------------------------------------------- float32 fast paths
//
// x float32; BT the branch (void: none), YT y / GT grad_out, DT dbranch
// (void: not asked for).  A pixel whose h has max|h| above the rescaling
// threshold (or a non-finite one) goes through the generic code.

template <typename BT>
SWIN_ALWAYS_INLINE float gather_h_f32(const MergeArgs<float>& a, int64_t pix, float* __restrict h, float& amax) {
  const int64_t C = a.C;
  cpu::v8f vs = {}, vm = {};
  float ts = 0, tm = 0;
  for (int q = 0; q < 4; ++q) {
    const int64_t row = a.source_row(pix, q);
    if (row < 0) {
      std::fill(h + q * C, h + (q + 1) * C, 0.0f);
      continue;
    }
    const float* x = static_cast<const float*>(a.x) + row * C;
    const BT* br = nullptr;
    if constexpr (!std::is_void<BT>::value) br = static_cast<const BT*>(a.branch) + row * C;
    cpu::f32_add_row<BT>(x, br, C, h + q * C, vs, vm, ts, tm);
  }
  amax = std::max(cpu::hmax8(vm), tm);
  return cpu::hsum8(vs) + ts;
}

template <typename BT, typename YT>
SWIN_ALWAYS_INLINE void merging_fwd_pixels_f32(const MergeArgs<float>& a, int64_t begin, int64_t end) {
  const int64_t C4 = 4 * a.C;
  std::vector<float> storage(C4);
  float* __restrict h = storage.data();
  for (int64_t pix = begin; pix < end; ++pix) {
    float amax;
    const float sum = gather_h_f32<BT>(a, pix, h, amax);
    if (!(amax <= cpu::kScaleAbove<float>)) {  // huge or non-finite: the generic row code
      merging_fwd_pixels<float>(a, pix, pix + 1);
      continue;
    }
    cpu::f32_stats(h, C4, sum, a.eps, a.mean[pix], a.rstd[pix]);
    cpu::f32_normalize(h, C4, a.mean[pix], a.rstd[pix], a.weight, a.bias, static_cast<YT*>(a.y) + pix * C4);
  }
}

template <typename BT, typename GT, typename DT>
SWIN_ALWAYS_INLINE void merging_bwd_blocks_f32(const MergeArgs<float>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C, C4 = 4 * C, P = a.pixels();
  std::vector<float> storage(3 * C4);
  float* __restrict h = storage.data();
  float* __restrict xh = h + C4;
  float* __restrict gw = xh + C4;
  const float inv_n = 1.0f / static_cast<float>(C4);
  for (int64_t blk = begin; blk < end; ++blk) {
    float* __restrict dw = a.dw_part + blk * C4;
    float* __restrict db = a.db_part + blk * C4;
    std::fill(dw, dw + C4, 0.0f);
    std::fill(db, db + C4, 0.0f);
    const int64_t p_end = std::min(P, (blk + 1) * kMergeRowsPerPartial);
    for (int64_t pix = blk * kMergeRowsPerPartial; pix < p_end; ++pix) {
      float amax;
      gather_h_f32<BT>(a, pix, h, amax);  // the forward's h, bit for bit (its statistics are given)
      float sum_g, sum_gx;
      cpu::f32_ln_bwd_row(h, static_cast<const GT*>(a.grad_out) + pix * C4, C4, a.mean_in[pix], a.rstd_in[pix],
                          a.weight, dw, db, xh, gw, sum_g, sum_gx);
      const float mg = sum_g * inv_n, mgx = sum_gx * inv_n;
      for (int q = 0; q < 4; ++q) {
        const int64_t row = a.source_row(pix, q);
        if (row < 0) continue;  // padding: no gradient
        void* dbr = nullptr;
        if constexpr (!std::is_void<DT>::value) dbr = static_cast<DT*>(a.dbranch) + row * C;
        cpu::f32_ln_bwd_out<DT>(gw + q * C, xh + q * C, C, a.rstd_in[pix], mg, mgx, nullptr,
                                static_cast<float*>(a.dx) + row * C, dbr);
      }
    }
  }
}

// ---------------------------------------------------------------- ISA dispatch

// Which row code a call takes: a float32 fast path or the generic one.
struct FastPath {
  int branch = -1;  // -1: generic; 0: none, 1: float32, 2: bfloat16
  bool low = false;  // y (forward) / grad_out (backward) bfloat16, else float32
  bool dbranch = false;  // backward: dbranch written (bfloat16)
};

inline FastPath fast_path(const MergeArgs<float>& a, bool backward) {
  FastPath p;
  if (a.x_t != at::kFloat || (a.y_t != at::kFloat && a.y_t != at::kBFloat16)) return p;
  const bool has_dbranch = backward && a.dbranch != nullptr;
  if (a.branch == nullptr) {
    if (has_dbranch) return p;
    p.branch = 0;
  } else if (a.b_t == at::kFloat && !has_dbranch) {
    p.branch = 1;
  } else if (a.b_t == at::kBFloat16 && (!has_dbranch || a.d_t == at::kBFloat16)) {
    p.branch = 2;
  } else {
    return p;
  }
  p.low = a.y_t == at::kBFloat16;
  p.dbranch = has_dbranch;
  return p;
}

// The fast paths are picked by switches over plain function templates, every
// one SWIN_ALWAYS_INLINE down to the row passes, so that each is compiled
// inside the ISA clone that calls it.  (A lambda here -- as the generic
// `with_fast_types(p, [&](auto bt, auto yt) {...})` was -- is a function of
// its own, compiled for the baseline ISA whichever clone calls it: the AVX2
// build ran these paths as SSE code, 4-5x slower; see
// benchmarks/results/cpu_merging_isa_avx2_2026-12-05.md.
// tests/test_cpu_isa.py checks the clones' code.)
template <typename BT>
SWIN_ALWAYS_INLINE void fwd_pixels_f32(const MergeArgs<float>& a, const FastPath& p, int64_t b, int64_t e) {
  if (p.low) return merging_fwd_pixels_f32<BT, c10::BFloat16>(a, b, e);
  merging_fwd_pixels_f32<BT, float>(a, b, e);
}

template <typename BT, typename GT>
SWIN_ALWAYS_INLINE void bwd_blocks_f32_dbranch(const MergeArgs<float>& a, const FastPath& p, int64_t b, int64_t e) {
  if constexpr (std::is_same<BT, c10::BFloat16>::value) {
    if (p.dbranch) return merging_bwd_blocks_f32<BT, GT, BT>(a, b, e);
  }
  merging_bwd_blocks_f32<BT, GT, void>(a, b, e);
}

template <typename BT>
SWIN_ALWAYS_INLINE void bwd_blocks_f32(const MergeArgs<float>& a, const FastPath& p, int64_t b, int64_t e) {
  if (p.low) return bwd_blocks_f32_dbranch<BT, c10::BFloat16>(a, p, b, e);
  bwd_blocks_f32_dbranch<BT, float>(a, p, b, e);
}

template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void fwd_pixels(const MergeArgs<acc_t>& a, const FastPath& p, int64_t b, int64_t e) {
  if constexpr (std::is_same<acc_t, float>::value && std::is_same<add_t, float>::value) {
    switch (p.branch) {
      case 0: return fwd_pixels_f32<void>(a, p, b, e);
      case 1: return fwd_pixels_f32<float>(a, p, b, e);
      case 2: return fwd_pixels_f32<c10::BFloat16>(a, p, b, e);
      default: break;
    }
  }
  merging_fwd_pixels<add_t>(a, b, e);
}

template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void bwd_blocks(const MergeArgs<acc_t>& a, const FastPath& p, int64_t b, int64_t e) {
  if constexpr (std::is_same<acc_t, float>::value && std::is_same<add_t, float>::value) {
    switch (p.branch) {
      case 0: return bwd_blocks_f32<void>(a, p, b, e);
      case 1: return bwd_blocks_f32<float>(a, p, b, e);
      case 2: return bwd_blocks_f32<c10::BFloat16>(a, p, b, e);
      default: break;
    }
  }
  merging_bwd_blocks<add_t>(a, b, e);
}

SWIN_CPU_CLONES((template <typename add_t, typename acc_t>), fwd_pixels,
                (const MergeArgs<acc_t>& a, const FastPath& p, int64_t b, int64_t e), fwd_pixels<add_t>(a, p, b, e));
SWIN_CPU_CLONES((template <typename add_t, typename acc_t>), bwd_blocks,
                (const MergeArgs<acc_t>& a, const FastPath& p, int64_t b, int64_t e), bwd_blocks<add_t>(a, p, b, e));

template <typename acc_t>
FastPath path_of(const MergeArgs<acc_t>& a, bool backward) {
  if constexpr (std::is_same<acc_t, float>::value) return fast_path(a, backward);
  return FastPath{};
}

template <typename add_t, typename acc_t>
void run_fwd(const MergeArgs<acc_t>& a) {
  const FastPath p = std::is_same<add_t, acc_t>::value ? path_of(a, false) : FastPath{};
  // About 16K elements per task, so small maps stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / (4 * a.C));
  at::parallel_for(0, a.pixels(), grain, [&](int64_t begin, int64_t end) {
    SWIN_CPU_DISPATCH(fwd_pixels, <add_t>(a, p, begin, end));
  });
}

template <typename add_t, typename acc_t>
void run_bwd(const MergeArgs<acc_t>& a, int64_t nblocks, acc_t* dweight, acc_t* dbias) {
  const FastPath p = std::is_same<add_t, acc_t>::value ? path_of(a, true) : FastPath{};
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    SWIN_CPU_DISPATCH(bwd_blocks, <add_t>(a, p, begin, end));
  });
  cpu::sum_partials(a.dw_part, a.db_part, nblocks, 4 * a.C, dweight, dbias);
}

// Calls f(acc_t{}, add_t{}) with the accumulation type (double for float64 x)
// and the type the add runs in (double if x or the branch is float64).
template <typename F>
void with_types(at::ScalarType xt, const std::optional<at::Tensor>& branch, F&& f) {
  if (xt == at::kDouble) return f(double{}, double{});
  if (branch.has_value() && branch->scalar_type() == at::kDouble) return f(float{}, double{});
  f(float{}, float{});
}

// ---------------------------------------------------------------- ATen glue

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in, double eps,
    const std::optional<at::Tensor>& branch_in, std::optional<at::ScalarType> y_dtype) {
  check_merging_args(x_in, weight_in, bias_in, branch_in, y_dtype);
  check_layernorm_eps(eps, "swin_ext.patch_merging");
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext: CPU kernel called with ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.has_value() ? branch_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H2 = checked_ceil_div(x.size(1), 2), W2 = checked_ceil_div(x.size(2), 2);
  at::Tensor y = at::empty({B, H2, W2, 4 * x.size(3)}, x.options().dtype(y_dtype.value_or(x.scalar_type())));
  at::Tensor mean = at::empty({B, H2, W2}, weight.options());
  at::Tensor rstd = at::empty({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  with_types(x.scalar_type(), branch_in, [&](auto acc_tag, auto add_tag) {
    using acc_t = decltype(acc_tag);
    MergeArgs<acc_t> a{};
    a.B = B, a.H = x.size(1), a.W = x.size(2), a.C = x.size(3), a.H2 = H2, a.W2 = W2;
    a.eps = static_cast<acc_t>(eps);
    a.x_t = x.scalar_type(), a.b_t = branch.defined() ? branch.scalar_type() : x.scalar_type();
    a.y_t = y.scalar_type();
    a.weight = weight.const_data_ptr<acc_t>();
    a.bias = bias.const_data_ptr<acc_t>();
    a.x = x.const_data_ptr();
    a.branch = branch.defined() ? branch.const_data_ptr() : nullptr;
    a.y = y.mutable_data_ptr();
    a.mean = mean.mutable_data_ptr<acc_t>();
    a.rstd = rstd.mutable_data_ptr<acc_t>();
    run_fwd<decltype(add_tag)>(a);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const std::optional<at::Tensor>& branch_in,
    std::optional<at::ScalarType> branch_dtype) {
  check_merging_bwd_args(grad_out_in, x_in, weight_in, mean_in, rstd_in, branch_in, branch_dtype);
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext: CPU kernel called with ", x_in.device());
  const int64_t B = x_in.size(0), H2 = checked_ceil_div(x_in.size(1), 2), W2 = checked_ceil_div(x_in.size(2), 2);
  const int64_t C4 = 4 * x_in.size(3);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.has_value() ? branch_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dbranch = branch_dtype.has_value() ? at::empty(x.sizes(), x.options().dtype(*branch_dtype))
                                                : at::empty({0}, x.options());
  const int64_t P = B * H2 * W2;
  if (P == 0 || C4 == 0) {
    if (dbranch.numel()) dbranch.zero_();
    return {dx.zero_(), dbranch, at::zeros({C4}, weight.options()), at::zeros({C4}, weight.options())};
  }
  const int64_t nblocks = ceil_div(P, kMergeRowsPerPartial);
  at::Tensor dw_part = at::empty({nblocks, C4}, weight.options());
  at::Tensor db_part = at::empty({nblocks, C4}, weight.options());
  at::Tensor dweight = at::empty({C4}, weight.options());
  at::Tensor dbias = at::empty({C4}, weight.options());
  with_types(x.scalar_type(), branch_in, [&](auto acc_tag, auto add_tag) {
    using acc_t = decltype(acc_tag);
    MergeArgs<acc_t> a{};
    a.B = B, a.H = x.size(1), a.W = x.size(2), a.C = x.size(3), a.H2 = H2, a.W2 = W2;
    a.x_t = x.scalar_type(), a.y_t = grad_out.scalar_type();
    a.b_t = branch.defined() ? branch.scalar_type() : x.scalar_type();
    a.d_t = branch_dtype.value_or(a.b_t);
    a.weight = weight.const_data_ptr<acc_t>();
    a.x = x.const_data_ptr();
    a.branch = branch.defined() ? branch.const_data_ptr() : nullptr;
    a.grad_out = grad_out.const_data_ptr();
    a.mean_in = mean.const_data_ptr<acc_t>();
    a.rstd_in = rstd.const_data_ptr<acc_t>();
    a.dx = dx.mutable_data_ptr();
    a.dbranch = branch_dtype.has_value() ? dbranch.mutable_data_ptr() : nullptr;
    a.dw_part = dw_part.mutable_data_ptr<acc_t>();
    a.db_part = db_part.mutable_data_ptr<acc_t>();
    run_bwd<decltype(add_tag)>(a, nblocks, dweight.mutable_data_ptr<acc_t>(), dbias.mutable_data_ptr<acc_t>());
  });
  return {dx, dbranch, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("patch_merging_fwd", &patch_merging_fwd_cpu);
  m.impl("patch_merging_bwd", &patch_merging_bwd_cpu);
}

}  // namespace swin_ext
