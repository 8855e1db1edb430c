// CPU kernels of the fused shifted-window attention.
//
// One work item is a (window, head) tile of one image.  Its N tokens are
// gathered by index math (pad + roll + partition, see swin_geometry.h) into
// small zero-padded buffers in the accumulation type; the products run
// through a register-blocked GEMM micro-kernel and the softmax through a
// vectorised exp; results are scattered back to the tokens' own positions.
// The tile code is compiled twice (AVX2+FMA and baseline) and picked at run
// time.
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

namespace swin_ext {
namespace {

using cpu::exp_shift_row;
using cpu::softmax_row;
using cpu::gemm_nn;
using cpu::round_up;

template <typename scalar_t>
struct AttnArgs {
  using acc_t = at::opmath_type<scalar_t>;
  WindowGeometry g;
  int64_t heads, d, C;
  acc_t scale;
  bool masked;
  const scalar_t* qkv;
  const scalar_t* pad;  // null: zero padding
  const acc_t* bias;    // (heads, N, N)
  // forward
  scalar_t* out;
  acc_t* lse;
  // backward
  const scalar_t* grad_out;
  const acc_t* lse_in;
  scalar_t* dqkv;
  acc_t* dbias_part;  // (nW, heads, N, N)
  acc_t* dpad_part;   // (nW, 3C)
};

// Zero-padded per-thread tile buffers.  Rows are padded to Nr (multiple of
// the GEMM row block), token columns to Np and channels to dp (multiples of
// the GEMM column block); padding stays zero for the buffers' lifetime.
template <typename acc_t>
struct Tile {
  int64_t N, Nr, Np, d, dp;
  std::vector<acc_t> q, k, v, kt, vt;  // q: Nr x dp (scaled), k, v: Np x dp, kt, vt: d x Np
  std::vector<acc_t> S, T;             // Nr x Np: logits/probabilities, scratch (transposes, dP)
  std::vector<acc_t> o, dO, dq, dk, dv;  // Nr x dp
  std::vector<int64_t> offset;         // token offset into the (B, H, W) map; -1: padding
  std::vector<int> region;
  Tile(int64_t N_, int64_t d_, bool backward)
      : N(N_), Nr(round_up(N_, cpu::kRowBlock)), Np(round_up(N_, cpu::kPad)), d(d_), dp(round_up(d_, cpu::kPad)),
        q(Nr * dp), k(Np * dp), v(Np * dp), kt(d * Np), vt(d * Np), S(Nr * Np),
        T(backward ? 2 * Nr * Np : 0), o(Nr * dp), dO(backward ? Nr * dp : 0), dq(backward ? Nr * dp : 0),
        dk(backward ? Nr * dp : 0), dv(backward ? Nr * dp : 0), offset(N_), region(N_) {}
};

template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void copy_scaled(const scalar_t* __restrict src, acc_t* __restrict dst, int64_t n,
                                    acc_t scale) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<acc_t>(src[c]) * scale;
}

template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void copy_cast(const scalar_t* __restrict src, acc_t* __restrict dst, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<acc_t>(src[c]);
}

// dst (d x Np) = top-left N x d block of src (ld dp), transposed.
template <typename acc_t>
SWIN_ALWAYS_INLINE void transpose_tokens(const acc_t* __restrict src, acc_t* __restrict dst, int64_t N,
                                         int64_t d, int64_t dp, int64_t Np) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < d; ++c) dst[c * Np + i] = src[i * dp + c];
}

// Gathers q (scaled), k, v of one (image, window, head) tile and k^T (and
// v^T for the backward) by index math: pad + roll + partition.
template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void gather_tile(const AttnArgs<scalar_t>& a, int64_t b, int64_t win, int64_t h,
                                    Tile<acc_t>& t, bool need_vt) {
  const WindowGeometry& g = a.g;
  const int64_t d = a.d, C = a.C, dp = t.dp;
  const acc_t scale = a.scale;
  for (int64_t i = 0; i < t.N; ++i) {
    const TokenLoc loc = locate_token(g, win, i);
    t.region[i] = loc.region;
    const scalar_t* src = a.pad;
    t.offset[i] = -1;
    if (loc.valid) {
      t.offset[i] = (b * g.H + loc.y) * g.W + loc.x;
      src = a.qkv + t.offset[i] * 3 * C;
    }
    acc_t* qi = t.q.data() + i * dp;
    acc_t* ki = t.k.data() + i * dp;
    acc_t* vi = t.v.data() + i * dp;
    if (src == nullptr) {
      std::fill(qi, qi + d, acc_t(0));
      std::fill(ki, ki + d, acc_t(0));
      std::fill(vi, vi + d, acc_t(0));
    } else {
      copy_scaled(src + h * d, qi, d, scale);
      copy_cast(src + C + h * d, ki, d);
      copy_cast(src + 2 * C + h * d, vi, d);
    }
  }
  transpose_tokens(t.k.data(), t.kt.data(), t.N, d, dp, t.Np);
  if (need_vt) transpose_tokens(t.v.data(), t.vt.data(), t.N, d, dp, t.Np);
}

// S = (q * scale) k^T + bias (+ mask) for rows < N; padding columns -inf.
template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void tile_logits(const AttnArgs<scalar_t>& a, int64_t h, Tile<acc_t>& t) {
  const int64_t N = t.N, Np = t.Np;
  gemm_nn<acc_t>(t.Nr, Np, t.d, acc_t(1), t.q.data(), t.dp, t.kt.data(), Np, t.S.data(), Np, false);
  const acc_t* bias_h = a.bias + h * N * N;
  const int* __restrict region = t.region.data();
  const acc_t mask_value = static_cast<acc_t>(kShiftMaskValue);
  for (int64_t i = 0; i < N; ++i) {
    acc_t* __restrict s = t.S.data() + i * Np;
    const acc_t* __restrict bi = bias_h + i * N;
    if (a.masked) {
      const int ri = region[i];
      for (int64_t j = 0; j < N; ++j) s[j] += bi[j] + (region[j] != ri ? mask_value : acc_t(0));
    } else {
      for (int64_t j = 0; j < N; ++j) s[j] += bi[j];
    }
    for (int64_t j = N; j < Np; ++j) s[j] = -std::numeric_limits<acc_t>::infinity();
  }
}

template <typename scalar_t>
SWIN_ALWAYS_INLINE void attention_fwd_tiles(const AttnArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const WindowGeometry& g = a.g;
  const int64_t N = g.N, d = a.d;
  Tile<acc_t> t(N, d, false);
  const int64_t Np = t.Np, dp = t.dp;
  for (int64_t tile = begin; tile < end; ++tile) {
    const int64_t h = tile % a.heads;
    const int64_t bw = tile / a.heads;
    const int64_t win = bw % g.nW;
    const int64_t b = bw / g.nW;
    gather_tile(a, b, win, h, t, false);
    tile_logits(a, h, t);
    for (int64_t i = 0; i < N; ++i) a.lse[tile * N + i] = softmax_row(t.S.data() + i * Np, Np);
    gemm_nn<acc_t>(t.Nr, dp, N, acc_t(1), t.S.data(), Np, t.v.data(), dp, t.o.data(), dp, false);
    for (int64_t i = 0; i < N; ++i) {
      if (t.offset[i] < 0) continue;  // padding token: its output is cropped away
      scalar_t* dst = a.out + t.offset[i] * a.C + h * d;
      const acc_t* oi = t.o.data() + i * dp;
      copy_cast(oi, dst, d);
    }
  }
}

// Transpose the top-left N x N block of src (ld Np) into dst (ld Np); dst's
// padding stays zero.
template <typename acc_t>
SWIN_ALWAYS_INLINE void transpose_nn(const acc_t* src, acc_t* dst, int64_t N, int64_t Np) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) dst[j * Np + i] = src[i * Np + j];
}

template <typename scalar_t>
SWIN_ALWAYS_INLINE void attention_bwd_items(const AttnArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const WindowGeometry& g = a.g;
  const int64_t N = g.N, d = a.d, C = a.C, C3 = 3 * C;
  Tile<acc_t> t(N, d, true);
  const int64_t Nr = t.Nr, Np = t.Np, dp = t.dp;
  acc_t* PT = t.T.data();
  acc_t* dS = t.T.data() + Nr * Np;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t h = item % a.heads;
    const int64_t win = item / a.heads;
    acc_t* dbias_w = a.dbias_part + item * N * N;
    std::fill(dbias_w, dbias_w + N * N, acc_t(0));
    acc_t* dpad_w = a.dpad_part + win * C3;
    // The batch is looped inside the work item, so the bias gradient is
    // summed in a fixed order whatever the number of threads.
    for (int64_t b = 0; b < g.B; ++b) {
      gather_tile(a, b, win, h, t, true);
      for (int64_t i = 0; i < N; ++i) {
        acc_t* dOi = t.dO.data() + i * dp;
        if (t.offset[i] >= 0) {
          copy_cast(a.grad_out + t.offset[i] * C + h * d, dOi, d);
        } else {
          for (int64_t c = 0; c < d; ++c) dOi[c] = acc_t(0);
        }
      }
      // P = exp(S - lse)
      tile_logits(a, h, t);
      const acc_t* lse_t = a.lse_in + ((b * g.nW + win) * a.heads + h) * N;
      for (int64_t i = 0; i < N; ++i) exp_shift_row(t.S.data() + i * Np, lse_t[i], Np);
      // dP = dO v^T  (into dS), dS = P * (dP - rowsum(P * dP))
      gemm_nn<acc_t>(Nr, Np, d, acc_t(1), t.dO.data(), dp, t.vt.data(), Np, dS, Np, false);
      for (int64_t i = 0; i < N; ++i) {
        const acc_t* p = t.S.data() + i * Np;
        acc_t* ds = dS + i * Np;
        acc_t D = 0;
        for (int64_t j = 0; j < N; ++j) D += p[j] * ds[j];
        for (int64_t j = 0; j < N; ++j) ds[j] = p[j] * (ds[j] - D);
        for (int64_t j = N; j < Np; ++j) ds[j] = acc_t(0);
        acc_t* dbi = dbias_w + i * N;
        for (int64_t j = 0; j < N; ++j) dbi[j] += ds[j];
      }
      // dV = P^T dO
      transpose_nn(t.S.data(), PT, N, Np);
      gemm_nn<acc_t>(Nr, dp, N, acc_t(1), PT, Np, t.dO.data(), dp, t.dv.data(), dp, false);
      // dQ = scale * dS k,  dK = dS^T (q * scale)
      gemm_nn<acc_t>(Nr, dp, N, a.scale, dS, Np, t.k.data(), dp, t.dq.data(), dp, false);
      transpose_nn(dS, PT, N, Np);
      gemm_nn<acc_t>(Nr, dp, N, acc_t(1), PT, Np, t.q.data(), dp, t.dk.data(), dp, false);
      for (int64_t i = 0; i < N; ++i) {
        const acc_t* dqi = t.dq.data() + i * dp;
        const acc_t* dki = t.dk.data() + i * dp;
        const acc_t* dvi = t.dv.data() + i * dp;
        if (t.offset[i] >= 0) {
          scalar_t* dst = a.dqkv + t.offset[i] * C3 + h * d;
          copy_cast(dqi, dst, d);
          copy_cast(dki, dst + C, d);
          copy_cast(dvi, dst + 2 * C, d);
        } else {
          // A padding token's k and v feed every query; as a query its dO is
          // 0 (its output is cropped away), so its dq is 0.
          for (int64_t c = 0; c < d; ++c) {
            dpad_w[C + h * d + c] += dki[c];
            dpad_w[2 * C + h * d + c] += dvi[c];
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- ISA dispatch

template <typename scalar_t>
void fwd_tiles_default(const AttnArgs<scalar_t>& a, int64_t b, int64_t e) {
  attention_fwd_tiles(a, b, e);
}
template <typename scalar_t>
void bwd_items_default(const AttnArgs<scalar_t>& a, int64_t b, int64_t e) {
  attention_bwd_items(a, b, e);
}
#if SWIN_HAVE_AVX2_CLONE
template <typename scalar_t>
SWIN_TARGET_AVX2 void fwd_tiles_avx2(const AttnArgs<scalar_t>& a, int64_t b, int64_t e) {
  attention_fwd_tiles(a, b, e);
}
template <typename scalar_t>
SWIN_TARGET_AVX2 void bwd_items_avx2(const AttnArgs<scalar_t>& a, int64_t b, int64_t e) {
  attention_bwd_items(a, b, e);
}
#endif

template <typename scalar_t>
void run_fwd(const AttnArgs<scalar_t>& a) {
  const int64_t tiles = a.g.B * a.g.nW * a.heads;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
#if SWIN_HAVE_AVX2_CLONE
    if (cpu::cpu_has_avx2()) return fwd_tiles_avx2(a, begin, end);
#endif
    fwd_tiles_default(a, begin, end);
  });
}

template <typename scalar_t>
void run_bwd(const AttnArgs<scalar_t>& a) {
  at::parallel_for(0, a.g.nW * a.heads, 1, [&](int64_t begin, int64_t end) {
#if SWIN_HAVE_AVX2_CLONE
    if (cpu::cpu_has_avx2()) return bwd_items_avx2(a, begin, end);
#endif
    bwd_items_default(a, begin, end);
  });
}

// ---------------------------------------------------------------- ATen glue

template <typename scalar_t>
AttnArgs<scalar_t> make_args(const at::Tensor& qkv, const at::Tensor& bias, const at::Tensor& pad,
                             bool has_pad, const WindowGeometry& g, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  AttnArgs<scalar_t> a{};
  a.g = g;
  a.heads = bias.size(0);
  a.C = qkv.size(3) / 3;
  a.d = a.C / a.heads;
  a.scale = static_cast<acc_t>(scale);
  a.masked = g.sh > 0 || g.sw > 0;
  a.qkv = qkv.const_data_ptr<scalar_t>();
  a.pad = has_pad ? pad.const_data_ptr<scalar_t>() : nullptr;
  a.bias = bias.const_data_ptr<acc_t>();
  return a;
}

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& qkv_in, const at::Tensor& bias_in, const std::optional<at::Tensor>& qkv_pad,
    int64_t window_size, int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_attention_scale(scale);
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
                                    using acc_t = at::opmath_type<scalar_t>;
                                    auto a = make_args<scalar_t>(qkv, bias, pad, has_pad, g, scale);
                                    a.out = out.mutable_data_ptr<scalar_t>();
                                    a.lse = lse.mutable_data_ptr<acc_t>();
                                    run_fwd(a);
                                  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& qkv_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_h, int64_t shift_w, double scale) {
  const WindowGeometry g =
      check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift_h, shift_w);
  check_attention_scale(scale);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext: CPU kernel called with ", qkv_in.device());
  const int64_t heads = bias_in.size(0);
  const int64_t C3 = qkv_in.size(3);
  check_attention_bwd_args(grad_out_in, qkv_in, lse_in, g, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();

  at::Tensor dqkv = at::empty_like(qkv);
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros({heads, g.N, g.N}, bias.options()), at::zeros({C3}, bias.options())};
  }
  at::Tensor dbias_part = at::empty({g.nW, heads, g.N, g.N}, bias.options());
  at::Tensor dpad_part = at::zeros({g.nW, C3}, bias.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_bwd_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto a = make_args<scalar_t>(qkv, bias, pad, has_pad, g, scale);
        a.grad_out = grad_out.const_data_ptr<scalar_t>();
        a.lse_in = lse.const_data_ptr<acc_t>();
        a.dqkv = dqkv.mutable_data_ptr<scalar_t>();
        a.dbias_part = dbias_part.mutable_data_ptr<acc_t>();
        a.dpad_part = dpad_part.mutable_data_ptr<acc_t>();
        run_bwd(a);
      });
  // Window partials are reduced over a fixed shape, so the result is reproducible.
  return {dqkv, dbias_part.sum(0), dpad_part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cpu);
  m.impl("window_attention_bwd", &window_attention_bwd_cpu);
}

}  // namespace swin_ext
