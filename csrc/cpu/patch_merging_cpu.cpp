// CPU kernels of patch merging: 2x2 gather (zero padding of odd sizes) fused
// with LayerNorm over the 4C gathered channels, forward and backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "cpu_microkernels.h"
#include "layernorm_cpu.h"

namespace swin_ext {
namespace {

// Output pixels per block of the weight/bias gradient partial sums.  Fixed,
// so that the reduction order (hence the result) is independent of threads.
constexpr int64_t kMergeRowsPerPartial = 64;

template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void gather_pixel(const scalar_t* x, int64_t H, int64_t W, int64_t C, int64_t b,
                                     int64_t oy, int64_t ox, acc_t* __restrict buf) {
  for (int q = 0; q < 4; ++q) {
    int64_t y, xx;
    acc_t* __restrict dst = buf + q * C;
    if (merge_source(H, W, oy, ox, q, &y, &xx)) {
      const scalar_t* __restrict src = x + ((b * H + y) * W + xx) * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) dst[c] = acc_t(0);
    }
  }
}

template <typename scalar_t>
struct MergeArgs {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t B, H, W, C, H2, W2;
  acc_t eps;
  const scalar_t* x;
  const acc_t* weight;
  const acc_t* bias;
  scalar_t* y;
  acc_t* mean;
  acc_t* rstd;
  // backward
  const scalar_t* grad_out;
  const acc_t* mean_in;
  const acc_t* rstd_in;
  scalar_t* dx;
  acc_t* dw_part;
  acc_t* db_part;
};

// Forward of output pixels [begin, end): gather, the LayerNorm statistics
// (cpu::row_stats: right for every finite input, see layernorm_cpu.h),
// normalise.
template <typename scalar_t>
SWIN_ALWAYS_INLINE void merging_fwd_pixels(const MergeArgs<scalar_t>& a, int64_t begin,
                                           int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C4 = 4 * a.C;
  std::vector<acc_t> storage(C4);
  acc_t* __restrict buf = storage.data();
  const acc_t* __restrict w = a.weight;
  const acc_t* __restrict bb = a.bias;
  for (int64_t pix = begin; pix < end; ++pix) {
    const int64_t ox = pix % a.W2;
    const int64_t oy = (pix / a.W2) % a.H2;
    const int64_t b = pix / (a.W2 * a.H2);
    gather_pixel(a.x, a.H, a.W, a.C, b, oy, ox, buf);
    const auto st = cpu::row_stats(buf, C4, a.eps);
    a.mean[pix] = st.mean_store;
    a.rstd[pix] = st.rstd_store;
    const acc_t m = st.mean, rs = st.rstd;
    scalar_t* __restrict dst = a.y + pix * C4;
    for (int64_t c = 0; c < C4; ++c) dst[c] = static_cast<scalar_t>((buf[c] - m) * rs * w[c] + bb[c]);
  }
}

// Backward of the fixed pixel blocks [begin, end): LayerNorm backward +
// scatter into dx, and per-block weight/bias gradient partials.
template <typename scalar_t>
SWIN_ALWAYS_INLINE void merging_bwd_blocks(const MergeArgs<scalar_t>& a, int64_t begin,
                                           int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, C4 = 4 * C, P = a.B * a.H2 * a.W2;
  std::vector<acc_t> storage(2 * C4);
  acc_t* __restrict xhat = storage.data();
  acc_t* __restrict g = storage.data() + C4;
  const acc_t* __restrict w = a.weight;
  for (int64_t blk = begin; blk < end; ++blk) {
    acc_t* __restrict dw = a.dw_part + blk * C4;
    acc_t* __restrict db = a.db_part + blk * C4;
    std::fill(dw, dw + C4, acc_t(0));
    std::fill(db, db + C4, acc_t(0));
    const int64_t p_end = std::min(P, (blk + 1) * kMergeRowsPerPartial);
    for (int64_t pix = blk * kMergeRowsPerPartial; pix < p_end; ++pix) {
      const int64_t ox = pix % a.W2;
      const int64_t oy = (pix / a.W2) % a.H2;
      const int64_t b = pix / (a.W2 * a.H2);
      gather_pixel(a.x, a.H, a.W, C, b, oy, ox, xhat);
      const acc_t m = a.mean_in[pix], rs = a.rstd_in[pix];
      const scalar_t* __restrict go = a.grad_out + pix * C4;
      acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t c = 0; c < C4; ++c) {
        const acc_t gy = static_cast<acc_t>(go[c]);
        const acc_t xh = (xhat[c] - m) * rs;
        xhat[c] = xh;
        dw[c] += gy * xh;
        db[c] += gy;
        g[c] = gy * w[c];
        sum_g += g[c];
        sum_gx += g[c] * xh;
      }
      const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C4);
      const acc_t mg = sum_g * inv_n, mgx = sum_gx * inv_n;
      for (int q = 0; q < 4; ++q) {
        int64_t y, xx;
        if (!merge_source(a.H, a.W, oy, ox, q, &y, &xx)) continue;  // padding: no gradient
        scalar_t* __restrict dst = a.dx + ((b * a.H + y) * a.W + xx) * C;
        const acc_t* __restrict gq = g + q * C;
        const acc_t* __restrict xq = xhat + q * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(rs * (gq[c] - mg - xq[c] * mgx));
      }
    }
  }
}

template <typename scalar_t>
void fwd_pixels_default(const MergeArgs<scalar_t>& a, int64_t b, int64_t e) {
  merging_fwd_pixels(a, b, e);
}
template <typename scalar_t>
void bwd_blocks_default(const MergeArgs<scalar_t>& a, int64_t b, int64_t e) {
  merging_bwd_blocks(a, b, e);
}
#if SWIN_HAVE_AVX2_CLONE
template <typename scalar_t>
SWIN_TARGET_AVX2 void fwd_pixels_avx2(const MergeArgs<scalar_t>& a, int64_t b, int64_t e) {
  merging_fwd_pixels(a, b, e);
}
template <typename scalar_t>
SWIN_TARGET_AVX2 void bwd_blocks_avx2(const MergeArgs<scalar_t>& a, int64_t b, int64_t e) {
  merging_bwd_blocks(a, b, e);
}
#endif

template <typename scalar_t>
void merging_fwd_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      double eps, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  MergeArgs<scalar_t> a{};
  a.B = x.size(0), a.H = x.size(1), a.W = x.size(2), a.C = x.size(3);
  a.H2 = y.size(1), a.W2 = y.size(2);
  a.eps = static_cast<acc_t>(eps);
  a.x = x.const_data_ptr<scalar_t>();
  a.weight = weight.const_data_ptr<acc_t>();
  a.bias = bias.const_data_ptr<acc_t>();
  a.y = y.mutable_data_ptr<scalar_t>();
  a.mean = mean.mutable_data_ptr<acc_t>();
  a.rstd = rstd.mutable_data_ptr<acc_t>();
  at::parallel_for(0, a.B * a.H2 * a.W2, 16, [&](int64_t begin, int64_t end) {
#if SWIN_HAVE_AVX2_CLONE
    if (cpu::cpu_has_avx2()) return fwd_pixels_avx2(a, begin, end);
#endif
    fwd_pixels_default(a, begin, end);
  });
}

template <typename scalar_t>
void merging_bwd_impl(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& dx,
                      at::Tensor& dw_part, at::Tensor& db_part) {
  using acc_t = at::opmath_type<scalar_t>;
  MergeArgs<scalar_t> a{};
  a.B = x.size(0), a.H = x.size(1), a.W = x.size(2), a.C = x.size(3);
  a.H2 = grad_out.size(1), a.W2 = grad_out.size(2);
  a.x = x.const_data_ptr<scalar_t>();
  a.weight = weight.const_data_ptr<acc_t>();
  a.grad_out = grad_out.const_data_ptr<scalar_t>();
  a.mean_in = mean.const_data_ptr<acc_t>();
  a.rstd_in = rstd.const_data_ptr<acc_t>();
  a.dx = dx.mutable_data_ptr<scalar_t>();
  a.dw_part = dw_part.mutable_data_ptr<acc_t>();
  a.db_part = db_part.mutable_data_ptr<acc_t>();
  at::parallel_for(0, dw_part.size(0), 1, [&](int64_t begin, int64_t end) {
#if SWIN_HAVE_AVX2_CLONE
    if (cpu::cpu_has_avx2()) return bwd_blocks_avx2(a, begin, end);
#endif
    bwd_blocks_default(a, begin, end);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd_cpu(const at::Tensor& x_in,
                                                                     const at::Tensor& weight_in,
                                                                     const at::Tensor& bias_in,
                                                                     double eps) {
  check_merging_args(x_in, weight_in, bias_in);
  check_merging_eps(eps);
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext: CPU kernel called with ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H2 = checked_ceil_div(x.size(1), 2), W2 = checked_ceil_div(x.size(2), 2);
  at::Tensor y = at::empty({B, H2, W2, 4 * x.size(3)}, x.options());
  at::Tensor mean = at::empty({B, H2, W2}, weight.options());
  at::Tensor rstd = at::empty({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "patch_merging_fwd_cpu", [&] {
                                    merging_fwd_impl<scalar_t>(x, weight, bias, eps, y, mean, rstd);
                                  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in) {
  check_merging_args(x_in, weight_in, weight_in);
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext: CPU kernel called with ", x_in.device());
  check_merging_bwd_args(grad_out_in, x_in, mean_in, rstd_in);
  const int64_t B = x_in.size(0), H2 = checked_ceil_div(x_in.size(1), 2),
                W2 = checked_ceil_div(x_in.size(2), 2);
  const int64_t C4 = 4 * x_in.size(3);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  const int64_t P = B * H2 * W2;
  const int64_t nblocks = (P + kMergeRowsPerPartial - 1) / kMergeRowsPerPartial;
  at::Tensor dw_part = at::empty({nblocks, C4}, weight.options());
  at::Tensor db_part = at::empty({nblocks, C4}, weight.options());
  if (P == 0 || C4 == 0) {
    return {dx.zero_(), at::zeros({C4}, weight.options()), at::zeros({C4}, weight.options())};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "patch_merging_bwd_cpu", [&] {
                                    merging_bwd_impl<scalar_t>(grad_out, x, weight, mean, rstd, dx,
                                                               dw_part, db_part);
                                  });
  return {dx, dw_part.sum(0), db_part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("patch_merging_fwd", &patch_merging_fwd_cpu);
  m.impl("patch_merging_bwd", &patch_merging_bwd_cpu);
}

}  // namespace swin_ext
