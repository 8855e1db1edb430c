// CPU kernels of patch merging: 2x2 gather (zero padding of odd sizes) fused
// with LayerNorm over the 4C gathered channels, forward and backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"

namespace swin_ext {
namespace {

// Output pixels per block of the weight/bias gradient partial sums.  Fixed,
// so that the reduction order (hence the result) is independent of threads.
constexpr int64_t kMergeRowsPerPartial = 64;

template <typename scalar_t, typename acc_t>
inline void gather_pixel(const scalar_t* x, int64_t H, int64_t W, int64_t C, int64_t b,
                         int64_t oy, int64_t ox, acc_t* buf) {
  for (int q = 0; q < 4; ++q) {
    int64_t y, xx;
    acc_t* dst = buf + q * C;
    if (merge_source(H, W, oy, ox, q, &y, &xx)) {
      const scalar_t* src = x + ((b * H + y) * W + xx) * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) dst[c] = acc_t(0);
    }
  }
}

template <typename scalar_t>
void merging_fwd_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      double eps, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = y.size(1), W2 = y.size(2), C4 = 4 * C;
  const scalar_t* x_p = x.const_data_ptr<scalar_t>();
  const acc_t* w_p = weight.const_data_ptr<acc_t>();
  const acc_t* b_p = bias.const_data_ptr<acc_t>();
  scalar_t* y_p = y.mutable_data_ptr<scalar_t>();
  acc_t* mean_p = mean.mutable_data_ptr<acc_t>();
  acc_t* rstd_p = rstd.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * H2 * W2, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(C4);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t ox = pix % W2;
      const int64_t oy = (pix / W2) % H2;
      const int64_t b = pix / (W2 * H2);
      gather_pixel(x_p, H, W, C, b, oy, ox, buf.data());
      acc_t m = 0;
      for (int64_t c = 0; c < C4; ++c) m += buf[c];
      m /= static_cast<acc_t>(C4);
      acc_t var = 0;
      for (int64_t c = 0; c < C4; ++c) {
        const acc_t dlt = buf[c] - m;
        var += dlt * dlt;
      }
      var /= static_cast<acc_t>(C4);
      const acc_t rs = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
      mean_p[pix] = m;
      rstd_p[pix] = rs;
      scalar_t* dst = y_p + pix * C4;
      for (int64_t c = 0; c < C4; ++c)
        dst[c] = static_cast<scalar_t>((buf[c] - m) * rs * w_p[c] + b_p[c]);
    }
  });
}

template <typename scalar_t>
void merging_bwd_impl(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& dx,
                      at::Tensor& dw_part, at::Tensor& db_part) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = grad_out.size(1), W2 = grad_out.size(2), C4 = 4 * C;
  const int64_t P = B * H2 * W2;
  const scalar_t* x_p = x.const_data_ptr<scalar_t>();
  const scalar_t* go_p = grad_out.const_data_ptr<scalar_t>();
  const acc_t* w_p = weight.const_data_ptr<acc_t>();
  const acc_t* mean_p = mean.const_data_ptr<acc_t>();
  const acc_t* rstd_p = rstd.const_data_ptr<acc_t>();
  scalar_t* dx_p = dx.mutable_data_ptr<scalar_t>();
  acc_t* dw_p = dw_part.mutable_data_ptr<acc_t>();
  acc_t* db_p = db_part.mutable_data_ptr<acc_t>();
  const int64_t nblocks = dw_part.size(0);
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xhat(C4), g(C4);
    for (int64_t blk = begin; blk < end; ++blk) {
      acc_t* dw = dw_p + blk * C4;
      acc_t* db = db_p + blk * C4;
      std::fill(dw, dw + C4, acc_t(0));
      std::fill(db, db + C4, acc_t(0));
      const int64_t p_end = std::min(P, (blk + 1) * kMergeRowsPerPartial);
      for (int64_t pix = blk * kMergeRowsPerPartial; pix < p_end; ++pix) {
        const int64_t ox = pix % W2;
        const int64_t oy = (pix / W2) % H2;
        const int64_t b = pix / (W2 * H2);
        gather_pixel(x_p, H, W, C, b, oy, ox, xhat.data());
        const acc_t m = mean_p[pix], rs = rstd_p[pix];
        const scalar_t* go = go_p + pix * C4;
        acc_t sum_g = 0, sum_gx = 0;
        for (int64_t c = 0; c < C4; ++c) {
          const acc_t gy = static_cast<acc_t>(go[c]);
          const acc_t xh = (xhat[c] - m) * rs;
          xhat[c] = xh;
          dw[c] += gy * xh;
          db[c] += gy;
          g[c] = gy * w_p[c];
          sum_g += g[c];
          sum_gx += g[c] * xh;
        }
        const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C4);
        const acc_t mg = sum_g * inv_n, mgx = sum_gx * inv_n;
        for (int q = 0; q < 4; ++q) {
          int64_t y, xx;
          if (!merge_source(H, W, oy, ox, q, &y, &xx)) continue;  // padding: no gradient
          scalar_t* dst = dx_p + ((b * H + y) * W + xx) * C;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t k = q * C + c;
            dst[c] = static_cast<scalar_t>(rs * (g[k] - mg - xhat[k] * mgx));
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd_cpu(const at::Tensor& x_in,
                                                                     const at::Tensor& weight_in,
                                                                     const at::Tensor& bias_in,
                                                                     double eps) {
  check_merging_args(x_in, weight_in, bias_in);
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext: CPU kernel called with ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H2 = (x.size(1) + 1) / 2, W2 = (x.size(2) + 1) / 2;
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
  const int64_t B = x_in.size(0), H2 = (x_in.size(1) + 1) / 2, W2 = (x_in.size(2) + 1) / 2;
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
