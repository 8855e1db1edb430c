// The block Linears' float32 GEMMs on the CPU (linear_cpu_fwd / linear_cpu_bwd,
// schemas in op_schemas.h): y = x W^T + b, dx = dy W, dW = dy^T x.
//
// Why swin_ext has its own: on the AVX2 CPUs measured (Zen 2), the GEMMs are
// ~75% of a Swin-T step and torch's (MKL's sgemm) runs them at 52-80 GFLOP/s
// a core, ~50-78% of the FMA peak; the attention's 6 x 16 register block
// (cpu_microkernels.h) runs at ~100 in the cache.  The Linear shapes are
// regular -- every width a multiple of 16 -- so one register block with
// cache blocking around it covers them (the numbers:
// benchmarks/results/cpu_linear_gemm_avx2_2026-12-05.md).
//
// The cache blocking (shared with the fused inference MLP) is in
// gemm_blocking.h.  Where the weight gradient's output is large
// (kPackMinRows, kPackMinCols) it packs x into panels and dy^T per (row
// chunk, depth block) as well; small outputs (Swin's stage-1 and -2 shapes,
// where packing costs more than it saves) read both in place.  The two give
// the same bits (same sums, same order).
//
// Compiled as the baseline, the AVX2 + FMA and the AVX-512 clones
// (isa_dispatch.h), all with the same bits; the model uses this op only on
// CPUs where it was measured faster than the alternatives
// (swin_ext/layers/config.py, use_cpu_gemm).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "../checks.h"
#include "cpu_microkernels.h"
#include "gemm_blocking.h"

namespace swin_ext {
namespace {

using namespace cpu_gemm;

// The weight gradient packs x and dy^T where its output has at least this
// many rows and columns (measured: benchmarks/results/cpu_linear_gemm_avx2_2026-12-05.md).
constexpr int64_t kPackMinRows = 384;
constexpr int64_t kPackMinCols = 192;

// Rows [r0, r1) of dW(N x K) = sum_p dy[p, n] x[p, k] with x packed (xp,
// pack_panels) and dy^T packed per (row chunk, depth block) into `ap`
// (kRowChunk x kDepth floats: RB-row panels, each p's RB values contiguous).
template <int RB, bool kWide = false>
SWIN_ALWAYS_INLINE void wgrad_packed(int64_t r0, int64_t r1, int64_t N, int64_t K, int64_t P, const float* dy,
                                     const float* xp, float* dw, float* ap) {
  for (int64_t ic = r0; ic < r1; ic += kRowChunk) {
    const int64_t rows = std::min(kRowChunk, r1 - ic);
    for (int64_t pc = 0; pc < P; pc += kDepth) {
      const int64_t depth = std::min(kDepth, P - pc);
      for (int64_t ir = 0; ir < rows; ir += RB) {
        const int64_t rb = std::min<int64_t>(RB, rows - ir);
        float* d = ap + ir * depth;
        for (int64_t p = 0; p < depth; ++p) {
          const float* s = dy + (pc + p) * N + ic + ir;
          for (int64_t r = 0; r < RB; ++r) d[p * RB + r] = r < rb ? s[r] : 0.0f;
        }
      }
      // x's panel (or, kWide, panel pair) stays in L1 while the row panels of ap stream past it.
      for (int64_t j = 0; j < K;) {
        const bool pair = kWide && j + 2 * kColTile <= K;
        const float* bp = xp + ((j / kColTile) * P + pc) * kColTile;
        float* c = dw + ic * K + j;
        for (int64_t ir = 0; ir < rows; ir += RB) {
          const int64_t rb = std::min<int64_t>(RB, rows - ir);
          if (pair)
            tile_rows_pair<RB>(0, rb, depth, ap + ir * depth, 1, RB, bp, P * kColTile, kColTile, c + ir * K, K,
                               pc > 0, nullptr);
          else
            tile_rows<RB>(0, rb, depth, ap + ir * depth, 1, RB, bp, kColTile, c + ir * K, K, pc > 0, nullptr);
        }
        j += pair ? 2 * kColTile : kColTile;
      }
    }
  }
}

// The ISA clones: the row tile is 6 on AVX2 (12 accumulators of the 16 ymm),
// 4 on the baseline (a 32-byte vector is two xmm there); AVX-512 runs 6 rows
// over two panels at once (12 of the 32 zmm; gemm_blocking.h, tile_rows_pair),
// with the same bits as the others.
SWIN_CPU_CLONES((), gemm_rows,
                (int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t P, const float* A, int64_t ars, int64_t aps,
                 const float* B, int64_t bps, int64_t ldb, const float* bias, float* C, int64_t ldc),
                gemm_b<cpu::gemm_rows_for(kIsa)>(r0, r1, c0, c1, P, A, ars, aps, B, bps, ldb, bias, C, ldc));
SWIN_CPU_CLONES((), wgrad_rows_packed,
                (int64_t r0, int64_t r1, int64_t N, int64_t K, int64_t P, const float* dy, const float* xp, float* dw,
                 float* ap),
                wgrad_packed<cpu::gemm_rows_for(kIsa)>(r0, r1, N, K, P, dy, xp, dw, ap));
SWIN_CPU_CLONE_AVX512((), gemm_rows,
                      (int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t P, const float* A, int64_t ars,
                       int64_t aps, const float* B, int64_t bps, int64_t ldb, const float* bias, float* C, int64_t ldc),
                      gemm_b<cpu::gemm_rows_for(kIsa), true>(r0, r1, c0, c1, P, A, ars, aps, B, bps, ldb, bias, C,
                                                             ldc));
SWIN_CPU_CLONE_AVX512((), wgrad_rows_packed,
                      (int64_t r0, int64_t r1, int64_t N, int64_t K, int64_t P, const float* dy, const float* xp,
                       float* dw, float* ap),
                      wgrad_packed<cpu::gemm_rows_for(kIsa), true>(r0, r1, N, K, P, dy, xp, dw, ap));

// The op name of the argument checks' messages (check_gemm_operand).
constexpr const char* kOp = "swin_ext linear_cpu";

at::Tensor linear_cpu_fwd(const at::Tensor& x_in, const at::Tensor& weight_in,
                          const std::optional<at::Tensor>& bias_in) {
  check_gemm_operand(kOp, x_in, "x", 2);
  const auto [N, K] = check_gemm_weight(kOp, weight_in, "weight");
  TORCH_CHECK(x_in.size(1) == K, "swin_ext linear_cpu: x has ", x_in.size(1), " features, the weight ", K);
  if (bias_in.has_value()) {
    check_gemm_operand(kOp, *bias_in, "bias", 1);
    TORCH_CHECK(bias_in->size(0) == N, "swin_ext linear_cpu: bias has ", bias_in->size(0), " elements, the weight ", N,
                " rows");
  }
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t M = x.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  const at::Tensor wp = pack_b(K, N, weight.const_data_ptr<float>(), K, true, x.options());
  const float* xp = x.const_data_ptr<float>();
  const float* wpp = wp.const_data_ptr<float>();
  const float* bp = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* yp = y.mutable_data_ptr<float>();
  for_blocks(M, N, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    SWIN_CPU_DISPATCH_AVX512(gemm_rows, (r0, r1, c0, c1, K, xp, K, 1, wpp, K * kColTile, kColTile, bp, yp, N));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> linear_cpu_bwd(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                  const at::Tensor& weight_in, std::array<bool, 2> needs) {
  check_gemm_operand(kOp, grad_in, "grad_y", 2);
  check_gemm_operand(kOp, x_in, "x", 2);
  const auto [N, K] = check_gemm_weight(kOp, weight_in, "weight");
  const int64_t M = x_in.size(0);
  TORCH_CHECK(x_in.size(1) == K, "swin_ext linear_cpu: x has ", x_in.size(1), " features, the weight ", K);
  TORCH_CHECK(grad_in.size(0) == M && grad_in.size(1) == N, "swin_ext linear_cpu: grad_y must be (", M, ", ", N,
              "), got ", grad_in.sizes());
  const at::Tensor g = grad_in.contiguous(), x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor dx, dw;
  const float* gp = g.const_data_ptr<float>();
  if (needs[0]) {
    dx = at::empty({M, K}, x.options());
    if (M > 0) {
      const at::Tensor wp = pack_b(N, K, weight.const_data_ptr<float>(), K, false, x.options());
      const float* wpp = wp.const_data_ptr<float>();
      float* dxp = dx.mutable_data_ptr<float>();
      for_blocks(M, K, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        SWIN_CPU_DISPATCH_AVX512(gemm_rows,
                                 (r0, r1, c0, c1, N, gp, N, 1, wpp, N * kColTile, kColTile, nullptr, dxp, K));
      });
    }
  } else {
    dx = at::empty({0}, x.options());
  }
  if (needs[1]) {
    if (M == 0) {
      dw = at::zeros({N, K}, x.options());
    } else {
      dw = at::empty({N, K}, x.options());
      float* dwp = dw.mutable_data_ptr<float>();
      const float* xp = x.const_data_ptr<float>();
      if (N >= kPackMinRows && K >= kPackMinCols) {
        const at::Tensor xpk = pack_b(M, K, xp, K, false, x.options());
        const float* xpkp = xpk.const_data_ptr<float>();
        for_blocks(N, kColTile, [&](int64_t r0, int64_t r1, int64_t, int64_t) {  // row chunks only
          std::vector<float> ap(kRowChunk * kDepth);
          SWIN_CPU_DISPATCH_AVX512(wgrad_rows_packed, (r0, r1, N, K, M, gp, xpkp, dwp, ap.data()));
        });
      } else {
        // A = dy^T (a(n, p) = dy[p * N + n]), B = x in place (rows of K floats).
        for_blocks(N, K, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
          SWIN_CPU_DISPATCH_AVX512(gemm_rows, (r0, r1, c0, c1, M, gp, 1, N, xp, kColTile, K, nullptr, dwp, K));
        });
      }
    }
  } else {
    dw = at::empty({0}, x.options());
  }
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("linear_cpu_fwd", &linear_cpu_fwd);
  m.impl("linear_cpu_bwd", &linear_cpu_bwd);
}

}  // namespace swin_ext
