// CPU kernels of the fused shifted-window attention.
//
// One work item is a (window, head) tile of one image: its N tokens are
// gathered by index math (pad + roll + partition, see swin_geometry.h) into
// small contiguous buffers, attention is computed row by row in the
// accumulation type, and the result is scattered back to the tokens' own
// positions.  All inner loops are axpy-shaped (contiguous, no reductions
// across lanes) so that the compiler vectorises them without -ffast-math.
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

namespace swin_ext {
namespace {

// Per-tile scratch: q (scaled), k, v row-major (N x d); k and v transposed (d x N).
template <typename acc_t>
struct TileBuffers {
  std::vector<acc_t> q, k, v, kt, vt;
  std::vector<int64_t> offset;  // token offset (in tokens) into the (B, H, W) map, -1 for padding
  std::vector<int> region;
  TileBuffers(int64_t N, int64_t d)
      : q(N * d), k(N * d), v(N * d), kt(N * d), vt(N * d), offset(N), region(N) {}
};

template <typename scalar_t, typename acc_t>
void gather_tile(const scalar_t* qkv, const scalar_t* pad, const WindowGeometry& g, int64_t b,
                 int64_t win, int64_t h, int64_t d, int64_t C, acc_t scale,
                 TileBuffers<acc_t>& t) {
  const int64_t N = g.N;
  for (int64_t i = 0; i < N; ++i) {
    const TokenLoc loc = locate_token(g, win, i);
    t.region[i] = loc.region;
    const scalar_t* src = nullptr;
    if (loc.valid) {
      t.offset[i] = (b * g.H + loc.y) * g.W + loc.x;
      src = qkv + t.offset[i] * 3 * C;
    } else {
      t.offset[i] = -1;
      src = pad;  // may be null: zero padding
    }
    for (int64_t c = 0; c < d; ++c) {
      acc_t qv = 0, kv = 0, vv = 0;
      if (src != nullptr) {
        qv = static_cast<acc_t>(src[h * d + c]);
        kv = static_cast<acc_t>(src[C + h * d + c]);
        vv = static_cast<acc_t>(src[2 * C + h * d + c]);
      }
      t.q[i * d + c] = qv * scale;
      t.k[i * d + c] = kv;
      t.v[i * d + c] = vv;
      t.kt[c * N + i] = kv;
      t.vt[c * N + i] = vv;
    }
  }
}

// Logits of row i: s = (q_i * scale) . k_j + bias[i, j] (+ mask).
template <typename acc_t>
inline void row_logits(const TileBuffers<acc_t>& t, const acc_t* bias_h, int64_t i, int64_t N,
                       int64_t d, bool masked, acc_t* s) {
  std::fill(s, s + N, acc_t(0));
  const acc_t* qi = t.q.data() + i * d;
  for (int64_t c = 0; c < d; ++c) {
    const acc_t qc = qi[c];
    const acc_t* ktc = t.kt.data() + c * N;
    for (int64_t j = 0; j < N; ++j) s[j] += qc * ktc[j];
  }
  const acc_t* bi = bias_h + i * N;
  for (int64_t j = 0; j < N; ++j) s[j] += bi[j];
  if (masked) {
    const int ri = t.region[i];
    for (int64_t j = 0; j < N; ++j)
      if (t.region[j] != ri) s[j] += static_cast<acc_t>(kShiftMaskValue);
  }
}

template <typename scalar_t>
void attention_fwd_cpu_impl(const at::Tensor& qkv, const at::Tensor& bias,
                            const at::Tensor& pad, bool has_pad, const WindowGeometry& g,
                            int64_t heads, double scale_d, at::Tensor& out, at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = qkv.size(3) / 3, d = C / heads, N = g.N;
  const scalar_t* qkv_p = qkv.const_data_ptr<scalar_t>();
  const scalar_t* pad_p = has_pad ? pad.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* bias_p = bias.const_data_ptr<acc_t>();
  scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_d);
  const bool masked = g.sh > 0 || g.sw > 0;
  const int64_t tiles = g.B * g.nW * heads;

  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    TileBuffers<acc_t> t(N, d);
    std::vector<acc_t> s(N), o(d);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t h = tile % heads;
      const int64_t bw = tile / heads;
      const int64_t win = bw % g.nW;
      const int64_t b = bw / g.nW;
      gather_tile(qkv_p, pad_p, g, b, win, h, d, C, scale, t);
      const acc_t* bias_h = bias_p + h * N * N;
      for (int64_t i = 0; i < N; ++i) {
        row_logits(t, bias_h, i, N, d, masked, s.data());
        acc_t mx = -std::numeric_limits<acc_t>::infinity();
        for (int64_t j = 0; j < N; ++j) mx = std::max(mx, s[j]);
        acc_t sum = 0;
        for (int64_t j = 0; j < N; ++j) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        const acc_t inv = acc_t(1) / sum;
        lse_p[tile * N + i] = mx + std::log(sum);
        if (t.offset[i] < 0) continue;  // padding token: output is cropped away
        std::fill(o.begin(), o.end(), acc_t(0));
        for (int64_t j = 0; j < N; ++j) {
          const acc_t p = s[j] * inv;
          const acc_t* vj = t.v.data() + j * d;
          for (int64_t c = 0; c < d; ++c) o[c] += p * vj[c];
        }
        scalar_t* dst = out_p + t.offset[i] * C + h * d;
        for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<scalar_t>(o[c]);
      }
    }
  });
}

template <typename scalar_t>
void attention_bwd_cpu_impl(const at::Tensor& grad_out, const at::Tensor& qkv,
                            const at::Tensor& bias, const at::Tensor& pad, bool has_pad,
                            const at::Tensor& lse, const WindowGeometry& g, int64_t heads,
                            double scale_d, at::Tensor& dqkv, at::Tensor& dbias_part,
                            at::Tensor& dpad_part) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = qkv.size(3) / 3, d = C / heads, N = g.N, C3 = 3 * C;
  const scalar_t* qkv_p = qkv.const_data_ptr<scalar_t>();
  const scalar_t* go_p = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* pad_p = has_pad ? pad.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* bias_p = bias.const_data_ptr<acc_t>();
  const acc_t* lse_p = lse.const_data_ptr<acc_t>();
  scalar_t* dqkv_p = dqkv.mutable_data_ptr<scalar_t>();
  acc_t* dbias_p = dbias_part.mutable_data_ptr<acc_t>();  // (nW, heads, N, N)
  acc_t* dpad_p = dpad_part.mutable_data_ptr<acc_t>();    // (nW, 3C), zero-initialised
  const acc_t scale = static_cast<acc_t>(scale_d);
  const bool masked = g.sh > 0 || g.sw > 0;

  // One work item per (window position, head); the batch is looped inside so
  // that the bias gradient of a work item is summed in a fixed order: the
  // result does not depend on the number of threads.
  at::parallel_for(0, g.nW * heads, 1, [&](int64_t begin, int64_t end) {
    TileBuffers<acc_t> t(N, d);
    std::vector<acc_t> P(N * N), dS(N * N), dO(N * d), dq(N * d), dk(N * d), dv(N * d), dOt(N * d);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item % heads;
      const int64_t win = item / heads;
      acc_t* dbias_w = dbias_p + item * N * N;
      std::fill(dbias_w, dbias_w + N * N, acc_t(0));
      const acc_t* bias_h = bias_p + h * N * N;
      for (int64_t b = 0; b < g.B; ++b) {
        gather_tile(qkv_p, pad_p, g, b, win, h, d, C, scale, t);
        for (int64_t i = 0; i < N; ++i) {
          acc_t* dOi = dO.data() + i * d;
          if (t.offset[i] >= 0) {
            const scalar_t* src = go_p + t.offset[i] * C + h * d;
            for (int64_t c = 0; c < d; ++c) dOi[c] = static_cast<acc_t>(src[c]);
          } else {
            std::fill(dOi, dOi + d, acc_t(0));
          }
        }
        const acc_t* lse_t = lse_p + ((b * g.nW + win) * heads + h) * N;
        // P = exp(S - lse), dP = dO V^T, dS = P * (dP - rowsum(P * dP)).
        for (int64_t i = 0; i < N; ++i) {
          acc_t* Pi = P.data() + i * N;
          row_logits(t, bias_h, i, N, d, masked, Pi);
          const acc_t l = lse_t[i];
          for (int64_t j = 0; j < N; ++j) Pi[j] = std::exp(Pi[j] - l);
          acc_t* dSi = dS.data() + i * N;
          std::fill(dSi, dSi + N, acc_t(0));
          const acc_t* dOi = dO.data() + i * d;
          for (int64_t c = 0; c < d; ++c) {
            const acc_t g_c = dOi[c];
            const acc_t* vtc = t.vt.data() + c * N;
            for (int64_t j = 0; j < N; ++j) dSi[j] += g_c * vtc[j];
          }
          acc_t D = 0;
          for (int64_t j = 0; j < N; ++j) D += Pi[j] * dSi[j];
          for (int64_t j = 0; j < N; ++j) dSi[j] = Pi[j] * (dSi[j] - D);
          acc_t* dbi = dbias_w + i * N;
          for (int64_t j = 0; j < N; ++j) dbi[j] += dSi[j];
        }
        // dV = P^T dO, dK = dS^T (q * scale), dQ = scale * dS K.
        std::fill(dq.begin(), dq.end(), acc_t(0));
        std::fill(dk.begin(), dk.end(), acc_t(0));
        std::fill(dv.begin(), dv.end(), acc_t(0));
        for (int64_t i = 0; i < N; ++i) {
          const acc_t* Pi = P.data() + i * N;
          const acc_t* dSi = dS.data() + i * N;
          const acc_t* dOi = dO.data() + i * d;
          const acc_t* qi = t.q.data() + i * d;
          acc_t* dqi = dq.data() + i * d;
          for (int64_t j = 0; j < N; ++j) {
            const acc_t p = Pi[j], ds = dSi[j];
            acc_t* dvj = dv.data() + j * d;
            acc_t* dkj = dk.data() + j * d;
            const acc_t* kj = t.k.data() + j * d;
            for (int64_t c = 0; c < d; ++c) {
              dvj[c] += p * dOi[c];
              dkj[c] += ds * qi[c];
              dqi[c] += ds * kj[c];
            }
          }
        }
        acc_t* dpad_w = dpad_p + win * C3;
        for (int64_t i = 0; i < N; ++i) {
          const acc_t* dqi = dq.data() + i * d;
          const acc_t* dki = dk.data() + i * d;
          const acc_t* dvi = dv.data() + i * d;
          if (t.offset[i] >= 0) {
            scalar_t* dst = dqkv_p + t.offset[i] * C3 + h * d;
            for (int64_t c = 0; c < d; ++c) {
              dst[c] = static_cast<scalar_t>(dqi[c] * scale);
              dst[C + c] = static_cast<scalar_t>(dki[c]);
              dst[2 * C + c] = static_cast<scalar_t>(dvi[c]);
            }
          } else {
            for (int64_t c = 0; c < d; ++c) {
              dpad_w[h * d + c] += dqi[c] * scale;
              dpad_w[C + h * d + c] += dki[c];
              dpad_w[2 * C + h * d + c] += dvi[c];
            }
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& qkv_in, const at::Tensor& bias_in, const std::optional<at::Tensor>& qkv_pad,
    int64_t window_size, int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext: CPU kernel called with ", qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const int64_t heads = bias.size(0);
  at::Tensor out = at::empty({g.B, g.H, g.W, qkv.size(3) / 3}, qkv.options());
  at::Tensor lse =
      at::empty({g.B, g.nW, heads, g.N}, qkv.options().dtype(acc_type_of(qkv.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(),
                                  "window_attention_fwd_cpu", [&] {
                                    attention_fwd_cpu_impl<scalar_t>(qkv, bias, pad, has_pad, g,
                                                                     heads, scale, out, lse);
                                  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext: CPU kernel called with ", qkv_in.device());
  const int64_t heads = bias_in.size(0);
  const int64_t C3 = qkv_in.size(3);
  TORCH_CHECK(grad_out_in.dim() == 4 && grad_out_in.size(0) == g.B && grad_out_in.size(1) == g.H &&
                  grad_out_in.size(2) == g.W && grad_out_in.size(3) == C3 / 3,
              "swin_ext.window_attention_bwd: grad_out must be (", g.B, ", ", g.H, ", ", g.W, ", ",
              C3 / 3, "), got ", grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.scalar_type() == qkv_in.scalar_type(),
              "swin_ext.window_attention_bwd: grad_out dtype ", grad_out_in.scalar_type(),
              " differs from qkv dtype ", qkv_in.scalar_type());
  const auto acc = acc_type_of(qkv_in.scalar_type());
  TORCH_CHECK(lse_in.dim() == 4 && lse_in.size(0) == g.B && lse_in.size(1) == g.nW &&
                  lse_in.size(2) == heads && lse_in.size(3) == g.N && lse_in.scalar_type() == acc,
              "swin_ext.window_attention_bwd: lse must be ", acc, " (", g.B, ", ", g.nW, ", ",
              heads, ", ", g.N, "), got ", lse_in.scalar_type(), " ", lse_in.sizes());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();

  at::Tensor dqkv = at::empty_like(qkv);
  at::Tensor dbias_part = at::empty({g.nW, heads, g.N, g.N}, bias.options());
  at::Tensor dpad_part = at::zeros({g.nW, C3}, bias.options());
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros({heads, g.N, g.N}, bias.options()), at::zeros({C3}, bias.options())};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd_cpu", [&] {
        attention_bwd_cpu_impl<scalar_t>(grad_out, qkv, bias, pad, has_pad, lse, g, heads, scale,
                                         dqkv, dbias_part, dpad_part);
      });
  // Window partials are reduced in a fixed order (sum over dim 0 of a
  // contiguous tensor with a fixed shape), so the result is reproducible.
  return {dqkv, dbias_part.sum(0), dpad_part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cpu);
  m.impl("window_attention_bwd", &window_attention_bwd_cpu);
}

}  // namespace swin_ext
