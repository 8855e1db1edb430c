// CPU kernels of the fused shifted-window attention.
//
// One work item is a window of one image (forward) or a window over the
// whole batch (backward), for a chunk of its heads.  Maps are 2-D (B, H, W)
// or 3-D (B, T, H, W) clips: one geometry (swin_geometry.h), one code path.  The item's tokens are
// found by index math (pad + roll + partition, see swin_geometry.h) and each
// token's qkv row is read once, in order, for all the chunk's heads (one
// sequential pass over the row, which the hardware prefetcher follows; a
// per-head gather touches 3 short pieces of every row and waits on memory).
// The rows go into small zero-padded per-head buffers in the accumulation
// type; the products run through register-blocked GEMM micro-kernels
// (cpu_microkernels.h; the transposed operands of the backward are read in
// place, not copied), the softmax through a vectorised exp; results are
// written back to the tokens' own rows, all of the chunk's heads at once.
//
// Heads are chunked so that every item count is at least kMinItems (the
// small late-stage maps have few windows); the chunking depends only on the
// shapes, and each (window, head)'s bias gradient is summed over the batch in
// a fixed order inside its item, so the result does not depend on threads.
// The item code is compiled three times (AVX-512 with 64-byte vectors in its
// GEMMs and exps, AVX2+FMA with 32-byte ones, and baseline) and picked at run
// time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "bias_table_cpu.h"
#include "cpu_microkernels.h"

namespace swin_ext {
namespace {

using cpu::copy_row;
using cpu::copy_row_scaled;
using cpu::exp_row_max;
using cpu::exp_shift_row;
using cpu::gemm_nn;
using cpu::gemm_tn;
using cpu::round_up;
using cpu::softmax_bwd_row;

// Work items of a call are at least this many (when there are enough heads).
constexpr int64_t kMinItems = 16;

template <typename scalar_t>
struct AttnArgs {
  using acc_t = at::opmath_type<scalar_t>;
  WindowGeometry g;
  int64_t heads, d, C;
  int64_t chunks;  // head chunks per window
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

  int64_t head_begin(int64_t chunk) const { return chunk * heads / chunks; }
};

// Head chunks per window: enough items for the threads, from the shapes only.
inline int64_t head_chunks(int64_t items_per_chunk, int64_t heads) {
  const int64_t want = (kMinItems + items_per_chunk - 1) / std::max<int64_t>(1, items_per_chunk);
  return std::max<int64_t>(1, std::min(heads, want));
}

// Zero-padded per-thread buffers of one work item: per head of the chunk,
// q (scaled), k, v and the gradients as Nr x dp (rows padded to the GEMM row
// block), k^T and v^T as d x Np (token columns padded to `pad`, the GEMMs'
// column block); S and dS shared, Nr x Np.  Padding stays zero for the
// buffers' lifetime.
template <typename acc_t>
struct Work {
  int64_t N, Nr, Np, d, dp, tile, ttile;
  std::vector<acc_t> q, k, v, kt, vt, o, dO, dq, dk, dv, S, dS;
  std::vector<acc_t> row_max, row_sum;  // forward: the softmax rows' max and sum
  std::vector<int64_t> offset;  // token row of the (B, [T,] H, W) map; -1: padding
  std::vector<int> region;
  Work(int64_t N_, int64_t d_, int64_t hmax, bool backward, int64_t pad)
      : N(N_), Nr(round_up(N_, cpu::kRowBlock)), Np(round_up(N_, pad)), d(d_),
        dp(round_up(d_, pad)), tile(Nr * dp), ttile(d_ * Np), offset(N_), region(N_) {
    auto sized = [&](std::vector<acc_t>& b, int64_t n) { b.assign(n, acc_t(0)); };
    sized(q, hmax * tile);
    sized(k, hmax * tile);
    sized(v, hmax * tile);
    sized(kt, hmax * ttile);
    sized(S, Nr * Np);
    if (backward) {
      sized(vt, hmax * ttile);
      sized(dO, hmax * tile);
      sized(dq, tile);
      sized(dk, tile);
      sized(dv, tile);
      sized(dS, Nr * Np);
    } else {
      sized(o, hmax * tile);
      sized(row_max, N_);
      sized(row_sum, N_);
    }
  }
};

// fn(t, loc) for the tokens t = 0..N-1 of window `win`, loc = locate_token(g, win, t):
// the window's coordinates decoded once and the token's walked (frame, row,
// column), not four 64-bit divisions per token, twice per item.
template <typename Fn>
SWIN_ALWAYS_INLINE void for_window_tokens(const WindowGeometry& g, int64_t win, Fn&& fn) {
  const int64_t plane = g.nWh * g.nWw;
  const int64_t wz = win / plane, wrem = win - wz * plane;
  const int64_t wy = wrem / g.nWw, wx = wrem - wy * g.nWw;
  int64_t t = 0;
  for (int64_t f = 0; f < g.wt; ++f) {
    const int64_t rz = wz * g.wt + f;
    for (int64_t r = 0; r < g.wh; ++r) {
      const int64_t ry = wy * g.wh + r;
      for (int64_t c = 0; c < g.ww; ++c, ++t) fn(t, token_at(g, rz, ry, wx * g.ww + c));
    }
  }
}

// Token positions and regions of window `win`.
template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void locate_window(const AttnArgs<scalar_t>& a, int64_t b, int64_t win, Work<acc_t>& w) {
  for_window_tokens(a.g, win, [&](int64_t i, const TokenLoc& loc) {
    w.region[i] = loc.region;
    w.offset[i] = loc.valid ? token_row(a.g, b, loc) : -1;
  });
}

// Software prefetch of the pieces of window `win`'s token rows that an item
// of heads [h0, h1) reads (q, k, v of those heads; grad_out's too in the
// backward), issued one item ahead: the rows of a shifted window are
// scattered over the map, so without it every item waits on memory.
template <typename scalar_t>
SWIN_ALWAYS_INLINE void prefetch_window(const AttnArgs<scalar_t>& a, int64_t b, int64_t win, int64_t h0,
                                        int64_t h1, bool with_grad) {
#if defined(__GNUC__)
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const int64_t C = a.C, len = (h1 - h0) * a.d;
  for_window_tokens(a.g, win, [&](int64_t, const TokenLoc& loc) {
    if (!loc.valid) return;
    const int64_t off = token_row(a.g, b, loc);
    const scalar_t* row = a.qkv + off * 3 * C + h0 * a.d;
    for (int part = 0; part < 3; ++part)
      for (int64_t c = 0; c < len; c += kLine) __builtin_prefetch(row + part * C + c, 0, 3);
    if (with_grad) {
      const scalar_t* grow = a.grad_out + off * C + h0 * a.d;
      for (int64_t c = 0; c < len; c += kLine) __builtin_prefetch(grow + c, 0, 3);
    }
  });
#endif
}

// dst (d x rows, row stride ldd) = transpose(src (rows x d, row stride lds)):
// 8 x 8 blocks through shuffles for float (cpu::transpose8), the rest scalar.
template <typename acc_t>
SWIN_ALWAYS_INLINE void transpose_rows(const acc_t* src, int64_t lds, int64_t rows, int64_t d, acc_t* dst,
                                       int64_t ldd) {
  int64_t t0 = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (d % 8 == 0) {
      for (; t0 + 8 <= rows; t0 += 8)
        for (int64_t c0 = 0; c0 < d; c0 += 8) cpu::transpose8(src + t0 * lds + c0, lds, dst + c0 * ldd + t0, ldd);
    }
  }
  for (int64_t t = t0; t < rows; ++t)
    for (int64_t c = 0; c < d; ++c) dst[c * ldd + t] = src[t * lds + c];
}

// One pass over each token's qkv row for heads [h0, h1) -- q (scaled), then k,
// then v of those heads, in the row's order -- into row-major buffers; then k^T
// (and, for the backward, v^T) by blocked transposes, not a strided scalar
// store per element (which took a fifth of the forward).
template <typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void gather_qkv(const AttnArgs<scalar_t>& a, int64_t h0, int64_t h1, Work<acc_t>& w,
                                   bool backward) {
  const int64_t d = a.d, C = a.C, dp = w.dp, N = w.N;
  for (int64_t i = 0; i < N; ++i) {
    const scalar_t* src = w.offset[i] >= 0 ? a.qkv + w.offset[i] * 3 * C : a.pad;
    if (src == nullptr) {  // a padding token without qkv_pad: zeros
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t row = (h - h0) * w.tile + i * dp;
        for (acc_t* buf : {w.q.data(), w.k.data(), w.v.data()}) std::fill(buf + row, buf + row + d, acc_t(0));
      }
      continue;
    }
    const auto row_of = [&](std::vector<acc_t>& buf, int64_t h) { return buf.data() + (h - h0) * w.tile + i * dp; };
    for (int64_t h = h0; h < h1; ++h) copy_row_scaled(src + h * d, row_of(w.q, h), d, a.scale);
    for (int64_t h = h0; h < h1; ++h) copy_row(src + C + h * d, row_of(w.k, h), d);
    for (int64_t h = h0; h < h1; ++h) copy_row(src + 2 * C + h * d, row_of(w.v, h), d);
  }
  for (int64_t hh = 0; hh < h1 - h0; ++hh) {
    transpose_rows(w.k.data() + hh * w.tile, dp, N, d, w.kt.data() + hh * w.ttile, w.Np);
    if (backward) transpose_rows(w.v.data() + hh * w.tile, dp, N, d, w.vt.data() + hh * w.ttile, w.Np);
  }
}

// S = (q * scale) k^T + bias (+ mask) for rows < N; padding columns -inf.
template <int VB, int RB, typename scalar_t, typename acc_t>
SWIN_ALWAYS_INLINE void tile_logits(const AttnArgs<scalar_t>& a, int64_t h, int64_t hh, Work<acc_t>& w) {
  const int64_t N = w.N, Np = w.Np;
  gemm_nn<acc_t, VB, RB>(w.Nr, Np, a.d, acc_t(1), w.q.data() + hh * w.tile, w.dp, w.kt.data() + hh * w.ttile, Np,
                         w.S.data(), Np, false);
  const acc_t* bias_h = a.bias + h * N * N;
  const int* __restrict region = w.region.data();
  const acc_t mask_value = static_cast<acc_t>(kShiftMaskValue);
  for (int64_t i = 0; i < N; ++i) {
    acc_t* __restrict s = w.S.data() + i * Np;
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

// Items [begin, end) of the forward, with VB-byte vectors in the GEMMs and exps
// and RB-row register blocks in the GEMMs (cpu::gemm_rows_for).
template <int VB, int RB, typename scalar_t>
SWIN_ALWAYS_INLINE void attention_fwd_items(const AttnArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const WindowGeometry& g = a.g;
  const int64_t N = g.N, d = a.d;
  Work<acc_t> w(N, d, ceil_div(a.heads, a.chunks), false, std::max(cpu::kPad, cpu::col_block<acc_t, VB>()));
  const int64_t Np = w.Np, dp = w.dp;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t chunk = item % a.chunks;
    const int64_t bw = item / a.chunks;
    const int64_t win = bw % g.nW;
    const int64_t b = bw / g.nW;
    const int64_t h0 = a.head_begin(chunk), h1 = a.head_begin(chunk + 1);
    locate_window(a, b, win, w);
    gather_qkv(a, h0, h1, w, false);
    if (item + 1 < end) {
      const int64_t nchunk = (item + 1) % a.chunks, nbw = (item + 1) / a.chunks;
      prefetch_window(a, nbw / g.nW, nbw % g.nW, a.head_begin(nchunk), a.head_begin(nchunk + 1), false);
    }
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t hh = h - h0;
      tile_logits<VB, RB>(a, h, hh, w);
      // O = softmax(S) v as (exp(S - max) v) / sum: the division scales O's d-wide rows,
      // not P's Np-wide ones (the backward recomputes P from the log-sum-exp).
      for (int64_t i = 0; i < N; ++i) w.row_max[i] = exp_row_max<VB>(w.S.data() + i * Np, Np, w.row_sum[i]);
      acc_t* o = w.o.data() + hh * w.tile;
      gemm_nn<acc_t, VB, RB>(w.Nr, dp, N, acc_t(1), w.S.data(), Np, w.v.data() + hh * w.tile, dp, o, dp, false);
      acc_t* lse = a.lse + (bw * a.heads + h) * N;
      for (int64_t i = 0; i < N; ++i) {
        const acc_t inv = acc_t(1) / w.row_sum[i];
        acc_t* __restrict oi = o + i * dp;
        for (int64_t c = 0; c < d; ++c) oi[c] *= inv;
        lse[i] = w.row_max[i] + std::log(w.row_sum[i]);
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      if (w.offset[i] < 0) continue;  // padding token: its output is cropped away
      scalar_t* dst = a.out + w.offset[i] * a.C;
      for (int64_t h = h0; h < h1; ++h) copy_row(w.o.data() + (h - h0) * w.tile + i * dp, dst + h * d, d);
    }
  }
}

// Items [begin, end) of the backward, with VB-byte vectors and RB-row blocks, as the forward.
template <int VB, int RB, typename scalar_t>
SWIN_ALWAYS_INLINE void attention_bwd_items(const AttnArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const WindowGeometry& g = a.g;
  const int64_t N = g.N, d = a.d, C = a.C, C3 = 3 * C;
  Work<acc_t> w(N, d, ceil_div(a.heads, a.chunks), true, std::max(cpu::kPad, cpu::col_block<acc_t, VB>()));
  const int64_t Nr = w.Nr, Np = w.Np, dp = w.dp;
  acc_t* P = w.S.data();
  acc_t* dS = w.dS.data();
  for (int64_t item = begin; item < end; ++item) {
    const int64_t chunk = item % a.chunks;
    const int64_t win = item / a.chunks;
    const int64_t h0 = a.head_begin(chunk), h1 = a.head_begin(chunk + 1);
    for (int64_t h = h0; h < h1; ++h) {
      acc_t* dbias_w = a.dbias_part + (win * a.heads + h) * N * N;
      std::fill(dbias_w, dbias_w + N * N, acc_t(0));
    }
    acc_t* dpad_w = a.dpad_part + win * C3;
    // The batch is looped inside the work item, so each (window, head)'s bias
    // gradient is summed in a fixed order whatever the number of threads.
    for (int64_t b = 0; b < g.B; ++b) {
      locate_window(a, b, win, w);
      gather_qkv(a, h0, h1, w, true);
      if (b + 1 < g.B) prefetch_window(a, b + 1, win, h0, h1, true);
      for (int64_t i = 0; i < N; ++i) {
        const scalar_t* src = w.offset[i] >= 0 ? a.grad_out + w.offset[i] * C : nullptr;
        for (int64_t h = h0; h < h1; ++h) {
          acc_t* dOi = w.dO.data() + (h - h0) * w.tile + i * dp;
          if (src != nullptr) {
            copy_row(src + h * d, dOi, d);
          } else {
            std::fill(dOi, dOi + d, acc_t(0));
          }
        }
      }
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t hh = h - h0;
        const acc_t* q = w.q.data() + hh * w.tile;
        const acc_t* k = w.k.data() + hh * w.tile;
        const acc_t* dO = w.dO.data() + hh * w.tile;
        // P = exp(S - lse)
        tile_logits<VB, RB>(a, h, hh, w);
        const acc_t* lse_t = a.lse_in + ((b * g.nW + win) * a.heads + h) * N;
        for (int64_t i = 0; i < N; ++i) exp_shift_row<VB>(P + i * Np, lse_t[i], Np);
        // dP = dO v^T  (into dS), dS = P * (dP - rowsum(P * dP))
        gemm_nn<acc_t, VB, RB>(Nr, Np, d, acc_t(1), dO, dp, w.vt.data() + hh * w.ttile, Np, dS, Np, false);
        acc_t* dbias_w = a.dbias_part + (win * a.heads + h) * N * N;
        for (int64_t i = 0; i < N; ++i) {
          acc_t* __restrict ds = dS + i * Np;
          softmax_bwd_row<VB>(P + i * Np, ds, N, Np);
          acc_t* __restrict dbi = dbias_w + i * N;
          for (int64_t j = 0; j < N; ++j) dbi[j] += ds[j];
        }
        // dV = P^T dO, dQ = scale * dS k, dK = dS^T (q * scale); P's and dS's
        // padding columns are 0, so the rows of dV and dK past N are 0.
        gemm_tn<acc_t, VB, RB>(Nr, dp, N, acc_t(1), P, Np, dO, dp, w.dv.data(), dp);
        gemm_nn<acc_t, VB, RB>(Nr, dp, N, a.scale, dS, Np, k, dp, w.dq.data(), dp, false);
        gemm_tn<acc_t, VB, RB>(Nr, dp, N, acc_t(1), dS, Np, q, dp, w.dk.data(), dp);
        for (int64_t i = 0; i < N; ++i) {
          const acc_t* dqi = w.dq.data() + i * dp;
          const acc_t* dki = w.dk.data() + i * dp;
          const acc_t* dvi = w.dv.data() + i * dp;
          if (w.offset[i] >= 0) {
            scalar_t* dst = a.dqkv + w.offset[i] * C3 + h * d;
            copy_row(dqi, dst, d);
            copy_row(dki, dst + C, d);
            copy_row(dvi, dst + 2 * C, d);
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
}

// ---------------------------------------------------------------- ISA dispatch

SWIN_CPU_CLONES((template <typename scalar_t>), fwd_items, (const AttnArgs<scalar_t>& a, int64_t b, int64_t e),
                attention_fwd_items<32, cpu::gemm_rows_for(kIsa)>(a, b, e));
SWIN_CPU_CLONE_AVX512((template <typename scalar_t>), fwd_items, (const AttnArgs<scalar_t>& a, int64_t b, int64_t e),
                      attention_fwd_items<64, cpu::gemm_rows_for(kIsa)>(a, b, e));
SWIN_CPU_CLONES((template <typename scalar_t>), bwd_items, (const AttnArgs<scalar_t>& a, int64_t b, int64_t e),
                attention_bwd_items<32, cpu::gemm_rows_for(kIsa)>(a, b, e));
SWIN_CPU_CLONE_AVX512((template <typename scalar_t>), bwd_items, (const AttnArgs<scalar_t>& a, int64_t b, int64_t e),
                      attention_bwd_items<64, cpu::gemm_rows_for(kIsa)>(a, b, e));

// The AVX-512 build pads the head dimension to its 32-float column block:
// taken where that costs nothing (head_dim a multiple of 32, as every Swin's);
// at head_dim 16 it would double the P V and dq / dk / dv products (measured
// slower there), so the AVX2 build runs.
template <typename scalar_t>
bool wide_vectors(const AttnArgs<scalar_t>& a) {
  return a.d % cpu::col_block<at::opmath_type<scalar_t>, 64>() == 0;
}

template <typename scalar_t>
void run_fwd(AttnArgs<scalar_t>& a) {
  a.chunks = head_chunks(a.g.B * a.g.nW, a.heads);
  const bool wide = wide_vectors(a);
  at::parallel_for(0, a.g.B * a.g.nW * a.chunks, 1, [&](int64_t begin, int64_t end) {
    if (wide) {
      SWIN_CPU_DISPATCH_AVX512(fwd_items, (a, begin, end));
    } else {
      SWIN_CPU_DISPATCH(fwd_items, (a, begin, end));
    }
  });
}

template <typename scalar_t>
void run_bwd(AttnArgs<scalar_t>& a) {
  a.chunks = head_chunks(a.g.nW, a.heads);
  const bool wide = wide_vectors(a);
  at::parallel_for(0, a.g.nW * a.chunks, 1, [&](int64_t begin, int64_t end) {
    if (wide) {
      SWIN_CPU_DISPATCH_AVX512(bwd_items, (a, begin, end));
    } else {
      SWIN_CPU_DISPATCH(bwd_items, (a, begin, end));
    }
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
  a.C = qkv.size(-1) / 3;
  a.d = a.C / a.heads;
  a.chunks = 1;
  a.scale = static_cast<acc_t>(scale);
  a.masked = g.shifted();
  a.qkv = qkv.const_data_ptr<scalar_t>();
  a.pad = has_pad ? pad.const_data_ptr<scalar_t>() : nullptr;
  a.bias = bias.const_data_ptr<acc_t>();
  return a;
}

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& qkv_in, const at::Tensor& bias_in, const std::optional<at::Tensor>& qkv_pad,
    at::IntArrayRef window_size, at::IntArrayRef shift, double scale) {
  const WindowGeometry g = check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift);
  check_attention_scale(scale);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext: CPU kernel called with ", qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor bias = bias_is_table(bias_in) ? cpu::expand_bias_table(bias_in, g) : bias_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();
  const int64_t heads = bias.size(0);
  std::vector<int64_t> out_sizes = attention_map_sizes(g, qkv);
  out_sizes.push_back(qkv.size(-1) / 3);
  at::Tensor out = at::empty(out_sizes, qkv.options());
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
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse_in, at::IntArrayRef window_size,
    at::IntArrayRef shift, double scale) {
  const WindowGeometry g = check_attention_args(qkv_in, bias_in, qkv_pad, window_size, shift);
  check_attention_scale(scale);
  TORCH_CHECK(qkv_in.device().is_cpu(), "swin_ext: CPU kernel called with ", qkv_in.device());
  const int64_t heads = attention_heads(bias_in);
  const int64_t C3 = qkv_in.size(-1);
  check_attention_bwd_args(grad_out_in, qkv_in, lse_in, g, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const bool table = bias_is_table(bias_in);
  const at::Tensor bias = table ? cpu::expand_bias_table(bias_in, g) : bias_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const bool has_pad = qkv_pad.has_value();
  const at::Tensor pad = has_pad ? qkv_pad->contiguous() : at::Tensor();

  at::Tensor dqkv = at::empty_like(qkv);
  if (qkv.numel() == 0) {
    return {dqkv, at::zeros_like(bias_in, at::MemoryFormat::Contiguous), at::zeros({C3}, bias.options())};
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
  const at::Tensor dbias = dbias_part.sum(0);
  return {dqkv, table ? cpu::bin_bias_grad(dbias, g) : dbias, dpad_part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("window_attention_fwd", &window_attention_fwd_cpu);
  m.impl("window_attention_bwd", &window_attention_bwd_cpu);
}

}  // namespace swin_ext
