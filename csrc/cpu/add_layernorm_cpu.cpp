// CPU kernels of the residual add fused with LayerNorm (add_layernorm_fwd /
// add_layernorm_bwd, schemas in op_schemas.h).
//
// Forward, one pass over each row: h = x + branch (summed in float32, float64
// if either input is float64; stored in x's dtype), the LayerNorm statistics
// of the stored h (layernorm_cpu.h: huge-value safe, corrected two-pass) and
// y = (h - mean) * rstd * weight + bias in y's dtype.  x and branch are read
// once and h and y written once; the row lives in a small buffer in the
// accumulation type in between.
//
// Backward, one pass over each row: dh = grad_h + rstd * (g - mean(g) -
// xhat * mean(g * xhat)) with g = grad_y * weight, written in h's dtype and,
// when asked, in the branch's dtype too (the branch's gradient has the same
// values).  dweight / dbias are summed per fixed block of rows into partials
// which are then added in block order, so they do not depend on the number
// of threads (bitwise reproducible, no atomics).
//
// Rows are split over threads with at::parallel_for; the row code is compiled
// twice (AVX2+FMA and baseline, see isa_dispatch.h) and picked at run
// time.  Dtypes are resolved per row by a switch in the load/store helpers,
// so the arithmetic is compiled once per accumulation type.
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
using cpu::row_stats;
using cpu::store_row;

// Rows per block of the weight/bias gradient partial sums.  Fixed, so that
// the reduction order (hence the result) is independent of threads.
constexpr int64_t kLnRowsPerPartial = 32;

template <typename acc_t>
struct AddLnArgs {
  int64_t rows, C;
  acc_t eps;
  at::ScalarType x_t, b_t, y_t;  // forward: x (and h), branch, y; backward: h, dbranch, grad_y
  const acc_t* weight;
  const acc_t* bias;
  // forward
  const void* x;
  const void* branch;
  void* h;
  void* y;
  acc_t* mean;
  acc_t* rstd;
  // backward
  const void* grad_h;  // null: no gradient from h's other uses
  const void* grad_y;
  const void* h_in;
  const acc_t* mean_in;
  const acc_t* rstd_in;
  void* dh;
  void* dbranch;  // null: not asked for
  acc_t* dw_part;
  acc_t* db_part;
};

// Forward of rows [begin, end).  add_t: the type the add runs in.
template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void add_ln_fwd_rows(const AddLnArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C;
  // h needs re-reading (rounded to x's dtype) unless the sum already is h exactly.
  constexpr bool kSameAcc = std::is_same<add_t, acc_t>::value;
  const bool h_exact = kSameAcc && (a.x_t == (std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat));
  std::vector<add_t> s_storage(2 * C);
  std::vector<acc_t> n_storage(h_exact ? 0 : C);
  add_t* __restrict s = s_storage.data();
  add_t* __restrict t = s_storage.data() + C;
  const acc_t* __restrict w = a.weight;
  const acc_t* __restrict bb = a.bias;
  for (int64_t r = begin; r < end; ++r) {
    load_row(a.x_t, a.x, r, C, s);
    load_row(a.b_t, a.branch, r, C, t);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) s[c] += t[c];
    store_row(a.x_t, a.h, r, C, s);
    acc_t* __restrict buf;
    if constexpr (kSameAcc) {
      buf = h_exact ? s : n_storage.data();
    } else {
      buf = n_storage.data();
    }
    if (!h_exact) load_row(a.x_t, a.h, r, C, buf);  // the stored (rounded) h, still in L1
    const auto st = row_stats(buf, C, a.eps);
    a.mean[r] = st.mean_store;
    a.rstd[r] = st.rstd_store;
    const acc_t m = st.mean, rs = st.rstd;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) buf[c] = (buf[c] - m) * rs * w[c] + bb[c];
    store_row(a.y_t, a.y, r, C, buf);
  }
}

// ---------------------------------------------------------------- float32 fast paths
//
// The autocast and float32 cases -- x (and h) float32, branch and y float32
// or bfloat16, accumulation float32 -- as three vectorised passes per row:
// (1) h = x + branch, stored, with sum and max|h|; (2) the corrected
// two-pass variance on h (re-read from L1); (3) y.  A row with max|h| above
// the rescaling threshold (or a non-finite one) goes through the generic
// code, which handles it (layernorm_cpu.h).  Same statistics as row_stats,
// summed in 8 lanes then across them.

template <typename BT, typename YT>
SWIN_ALWAYS_INLINE void add_ln_fwd_rows_f32(const AddLnArgs<float>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C;
  for (int64_t r = begin; r < end; ++r) {
    float* __restrict h = static_cast<float*>(a.h) + r * C;
    cpu::v8f vs = {}, vm = {};
    float ts = 0, tm = 0;
    cpu::f32_add_row(static_cast<const float*>(a.x) + r * C, static_cast<const BT*>(a.branch) + r * C, C, h, vs,
                     vm, ts, tm);
    if (!(std::max(cpu::hmax8(vm), tm) <= cpu::kScaleAbove<float>)) {  // huge or non-finite: the generic row code
      add_ln_fwd_rows<float>(a, r, r + 1);
      continue;
    }
    cpu::f32_stats(h, C, cpu::hsum8(vs) + ts, a.eps, a.mean[r], a.rstd[r]);
    cpu::f32_normalize(h, C, a.mean[r], a.rstd[r], a.weight, a.bias, static_cast<YT*>(a.y) + r * C);
  }
}

// Backward of the float32 fast path: h, grad_h, dh float32; grad_y and dbranch
// float32 or bfloat16 (DT = void: no dbranch).
template <typename GT, typename DT>
SWIN_ALWAYS_INLINE void add_ln_bwd_blocks_f32(const AddLnArgs<float>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C;
  std::vector<float> storage(2 * C);
  float* __restrict xh = storage.data();
  float* __restrict gwb = storage.data() + C;
  const float inv_n = 1.0f / static_cast<float>(C);
  for (int64_t blk = begin; blk < end; ++blk) {
    float* __restrict dw = a.dw_part + blk * C;
    float* __restrict db = a.db_part + blk * C;
    std::fill(dw, dw + C, 0.0f);
    std::fill(db, db + C, 0.0f);
    const int64_t r_end = std::min(a.rows, (blk + 1) * kLnRowsPerPartial);
    for (int64_t r = blk * kLnRowsPerPartial; r < r_end; ++r) {
      float sum_g, sum_gx;
      cpu::f32_ln_bwd_row(static_cast<const float*>(a.h_in) + r * C, static_cast<const GT*>(a.grad_y) + r * C, C,
                          a.mean_in[r], a.rstd_in[r], a.weight, dw, db, xh, gwb, sum_g, sum_gx);
      void* dbr = nullptr;
      if constexpr (!std::is_void<DT>::value) dbr = static_cast<DT*>(a.dbranch) + r * C;
      cpu::f32_ln_bwd_out<DT>(gwb, xh, C, a.rstd_in[r], sum_g * inv_n, sum_gx * inv_n,
                              a.grad_h ? static_cast<const float*>(a.grad_h) + r * C : nullptr,
                              static_cast<float*>(a.dh) + r * C, dbr);
    }
  }
}

// Backward of the fixed row blocks [begin, end): dh (and dbranch) and the
// per-block dweight/dbias partials.
template <typename acc_t>
SWIN_ALWAYS_INLINE void add_ln_bwd_blocks(const AddLnArgs<acc_t>& a, int64_t begin, int64_t end) {
  const int64_t C = a.C;
  std::vector<acc_t> storage(2 * C);
  acc_t* __restrict xh = storage.data();
  acc_t* __restrict g = storage.data() + C;
  const acc_t* __restrict w = a.weight;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t blk = begin; blk < end; ++blk) {
    acc_t* __restrict dw = a.dw_part + blk * C;
    acc_t* __restrict db = a.db_part + blk * C;
    std::fill(dw, dw + C, acc_t(0));
    std::fill(db, db + C, acc_t(0));
    const int64_t r_end = std::min(a.rows, (blk + 1) * kLnRowsPerPartial);
    for (int64_t r = blk * kLnRowsPerPartial; r < r_end; ++r) {
      load_row(a.x_t, a.h_in, r, C, xh);
      load_row(a.y_t, a.grad_y, r, C, g);
      const acc_t m = a.mean_in[r], rs = a.rstd_in[r];
      acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t c = 0; c < C; ++c) {
        const acc_t gy = g[c];
        const acc_t x = (xh[c] - m) * rs;
        xh[c] = x;
        dw[c] += gy * x;
        db[c] += gy;
        const acc_t gw = gy * w[c];
        g[c] = gw;
        sum_g += gw;
        sum_gx += gw * x;
      }
      const acc_t mg = sum_g * inv_n, mgx = sum_gx * inv_n;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) xh[c] = rs * (g[c] - mg - xh[c] * mgx);
      if (a.grad_h != nullptr) {
        load_row(a.x_t, a.grad_h, r, C, g);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) xh[c] += g[c];
      }
      store_row(a.x_t, a.dh, r, C, xh);
      if (a.dbranch != nullptr) store_row(a.b_t, a.dbranch, r, C, xh);
    }
  }
}

// ---------------------------------------------------------------- ISA dispatch

// Which row code a call takes: the float32 fast paths (by branch / y /
// grad_y / dbranch dtype) or the generic one.
enum class Path { kGeneric, kF32F32, kF32BF16, kBF16F32, kBF16BF16 };

inline Path fast_path(at::ScalarType first, at::ScalarType second, bool second_none = false) {
  const bool f1 = first == at::kFloat, b1 = first == at::kBFloat16;
  const bool f2 = second_none || second == at::kFloat, b2 = !second_none && second == at::kBFloat16;
  if (!(f1 || b1) || !(f2 || b2)) return Path::kGeneric;
  return f1 ? (f2 ? Path::kF32F32 : Path::kF32BF16) : (f2 ? Path::kBF16F32 : Path::kBF16BF16);
}

template <typename add_t, typename acc_t>
SWIN_ALWAYS_INLINE void fwd_rows(const AddLnArgs<acc_t>& a, Path path, int64_t b, int64_t e) {
  if constexpr (std::is_same<add_t, float>::value && std::is_same<acc_t, float>::value) {
    switch (path) {
      case Path::kF32F32: return add_ln_fwd_rows_f32<float, float>(a, b, e);
      case Path::kF32BF16: return add_ln_fwd_rows_f32<float, c10::BFloat16>(a, b, e);
      case Path::kBF16F32: return add_ln_fwd_rows_f32<c10::BFloat16, float>(a, b, e);
      case Path::kBF16BF16: return add_ln_fwd_rows_f32<c10::BFloat16, c10::BFloat16>(a, b, e);
      default: break;
    }
  }
  add_ln_fwd_rows<add_t>(a, b, e);
}

template <typename acc_t>
SWIN_ALWAYS_INLINE void bwd_blocks(const AddLnArgs<acc_t>& a, Path path, int64_t b, int64_t e) {
  if constexpr (std::is_same<acc_t, float>::value) {
    const bool none = a.dbranch == nullptr;
    switch (path) {
      case Path::kF32F32: return none ? add_ln_bwd_blocks_f32<float, void>(a, b, e)
                                      : add_ln_bwd_blocks_f32<float, float>(a, b, e);
      case Path::kF32BF16: return add_ln_bwd_blocks_f32<float, c10::BFloat16>(a, b, e);
      case Path::kBF16F32: return none ? add_ln_bwd_blocks_f32<c10::BFloat16, void>(a, b, e)
                                       : add_ln_bwd_blocks_f32<c10::BFloat16, float>(a, b, e);
      case Path::kBF16BF16: return add_ln_bwd_blocks_f32<c10::BFloat16, c10::BFloat16>(a, b, e);
      default: break;
    }
  }
  add_ln_bwd_blocks(a, b, e);
}

SWIN_CPU_CLONES((template <typename add_t, typename acc_t>), fwd_rows,
                (const AddLnArgs<acc_t>& a, Path p, int64_t b, int64_t e), fwd_rows<add_t>(a, p, b, e));
SWIN_CPU_CLONES((template <typename acc_t>), bwd_blocks, (const AddLnArgs<acc_t>& a, Path p, int64_t b, int64_t e),
                bwd_blocks(a, p, b, e));

// Rows per parallel task: about 16K elements, so small tensors stay on one thread.
inline int64_t row_grain(int64_t C) { return std::max<int64_t>(1, (int64_t(1) << 14) / C); }

template <typename add_t, typename acc_t>
void run_fwd(const AddLnArgs<acc_t>& a) {
  const Path p = a.x_t == at::kFloat ? fast_path(a.b_t, a.y_t) : Path::kGeneric;
  at::parallel_for(0, a.rows, row_grain(a.C), [&](int64_t begin, int64_t end) {
    SWIN_CPU_DISPATCH(fwd_rows, <add_t>(a, p, begin, end));
  });
}

template <typename acc_t>
void run_bwd(const AddLnArgs<acc_t>& a, int64_t nblocks, acc_t* dweight, acc_t* dbias) {
  const int64_t grain = std::max<int64_t>(1, row_grain(a.C) / kLnRowsPerPartial);
  const Path p = a.x_t == at::kFloat ? fast_path(a.y_t, a.b_t, a.dbranch == nullptr) : Path::kGeneric;
  at::parallel_for(0, nblocks, grain, [&](int64_t begin, int64_t end) {
    SWIN_CPU_DISPATCH(bwd_blocks, (a, p, begin, end));
  });
  cpu::sum_partials(a.dw_part, a.db_part, nblocks, a.C, dweight, dbias);
}

// ---------------------------------------------------------------- ATen glue

std::vector<int64_t> row_shape(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - 1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& branch_in, const at::Tensor& weight_in,
    const at::Tensor& bias_in, double eps, std::optional<at::ScalarType> y_dtype) {
  const int64_t C = check_add_layernorm_args(x_in, branch_in, weight_in, bias_in, y_dtype);
  check_layernorm_eps(eps, "swin_ext.add_layernorm");
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext: CPU kernel called with ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const at::ScalarType yt = y_dtype.value_or(x.scalar_type());
  at::Tensor h = at::empty(x.sizes(), x.options());
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(yt));
  at::Tensor mean = at::empty(row_shape(x), weight.options());
  at::Tensor rstd = at::empty(row_shape(x), weight.options());
  const int64_t rows = x.numel() / C;
  if (rows == 0) return {h, y, mean, rstd};
  const bool wide_add = x.scalar_type() == at::kDouble || branch.scalar_type() == at::kDouble;
  auto launch = [&](auto acc_tag, auto add_tag) {
    using acc_t = decltype(acc_tag);
    using add_t = decltype(add_tag);
    AddLnArgs<acc_t> a{};
    a.rows = rows, a.C = C, a.eps = static_cast<acc_t>(eps);
    a.x_t = x.scalar_type(), a.b_t = branch.scalar_type(), a.y_t = yt;
    a.weight = weight.const_data_ptr<acc_t>();
    a.bias = bias.const_data_ptr<acc_t>();
    a.x = x.const_data_ptr();
    a.branch = branch.const_data_ptr();
    a.h = h.mutable_data_ptr();
    a.y = y.mutable_data_ptr();
    a.mean = mean.mutable_data_ptr<acc_t>();
    a.rstd = rstd.mutable_data_ptr<acc_t>();
    run_fwd<add_t>(a);
  };
  if (x.scalar_type() == at::kDouble) {
    launch(double{}, double{});
  } else if (wide_add) {
    launch(float{}, double{});
  } else {
    launch(float{}, float{});
  }
  return {h, y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_bwd_cpu(
    const std::optional<at::Tensor>& grad_h_in, const at::Tensor& grad_y_in, const at::Tensor& h_in,
    const at::Tensor& weight_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    std::optional<at::ScalarType> branch_dtype) {
  const int64_t C = check_add_layernorm_bwd_args(grad_h_in, grad_y_in, h_in, weight_in, mean_in,
                                                 rstd_in, branch_dtype);
  TORCH_CHECK(h_in.device().is_cpu(), "swin_ext: CPU kernel called with ", h_in.device());
  const at::Tensor h = h_in.contiguous();
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const bool has_grad_h = grad_h_in.has_value();
  const at::Tensor grad_h = has_grad_h ? grad_h_in->contiguous() : at::Tensor();
  at::Tensor dh = at::empty(h.sizes(), h.options());
  at::Tensor dbranch = branch_dtype.has_value() ? at::empty(h.sizes(), h.options().dtype(*branch_dtype))
                                                : at::empty({0}, h.options());
  at::Tensor dweight = at::empty({C}, weight.options());
  at::Tensor dbias = at::empty({C}, weight.options());
  const int64_t rows = h.numel() / C;
  if (rows == 0) return {dh, dbranch, dweight.zero_(), dbias.zero_()};
  const int64_t nblocks = ceil_div(rows, kLnRowsPerPartial);
  at::Tensor dw_part = at::empty({nblocks, C}, weight.options());
  at::Tensor db_part = at::empty({nblocks, C}, weight.options());
  auto launch = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    AddLnArgs<acc_t> a{};
    a.rows = rows, a.C = C;
    a.x_t = h.scalar_type(), a.y_t = grad_y.scalar_type();
    a.b_t = branch_dtype.value_or(h.scalar_type());
    a.weight = weight.const_data_ptr<acc_t>();
    a.grad_h = has_grad_h ? grad_h.const_data_ptr() : nullptr;
    a.grad_y = grad_y.const_data_ptr();
    a.h_in = h.const_data_ptr();
    a.mean_in = mean.const_data_ptr<acc_t>();
    a.rstd_in = rstd.const_data_ptr<acc_t>();
    a.dh = dh.mutable_data_ptr();
    a.dbranch = branch_dtype.has_value() ? dbranch.mutable_data_ptr() : nullptr;
    a.dw_part = dw_part.mutable_data_ptr<acc_t>();
    a.db_part = db_part.mutable_data_ptr<acc_t>();
    run_bwd(a, nblocks, dweight.mutable_data_ptr<acc_t>(), dbias.mutable_data_ptr<acc_t>());
  };
  if (h.scalar_type() == at::kDouble) {
    launch(double{});
  } else {
    launch(float{});
  }
  return {dh, dbranch, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("add_layernorm_fwd", &add_layernorm_fwd_cpu);
  m.impl("add_layernorm_bwd", &add_layernorm_bwd_cpu);
}

}  // namespace swin_ext
