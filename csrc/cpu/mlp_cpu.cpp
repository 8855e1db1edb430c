// The transformer MLP's inference forward on the CPU in one op (mlp_cpu_fwd,
// schema in op_schemas.h): y = fc2(GELU(fc1(x))), float32, with the exact
// (erf) GELU, on swin_ext's CPU GEMMs (gemm_blocking.h).
//
// Why: run as two Linears and a GELU, the (tokens, hidden) map between them
// -- the largest tensor of a Swin block, 4x the token map -- is a fresh
// allocation that fc1 writes out of the cache, the GELU reads and writes, and
// fc2 reads back.  Here the rows go in blocks whose hidden map
// (block rows x hidden floats, about kHiddenBytes) stays in the core's L2:
// fc1 writes it, the GELU rewrites it in place, fc2 reads it, and only x and
// y touch memory.  Measured on the AVX2 EPYC (Swin-T, batch 8): 1.05-1.08x
// the unfused MLPs of stages 1-2, ~1% of the forward
// (benchmarks/results/cpu_mlp_fused_avx2_2026-12-06.md).
//
// The same bits as the unfused composition: each block is fc1 without its
// bias (linear_cpu_fwd's tiles and depth blocks; a row's sums do not depend
// on the block it is in), then GELU(h + fc1 bias) (bias_gelu_fwd's rows), then
// fc2 with its bias, so y is bitwise
//   linear_cpu_fwd(bias_gelu_fwd(linear_cpu_fwd(x, w1, None), b1), w2, b2)
// -- the forward the model's CPU training path computes -- for any number of
// threads (blocks are split over threads, never a row).
//
// The weights are packed once per call into column panels (pack_b).  Large
// weights (Swin-T's stages 3-4) are streamed once per row block, which costs
// more than the map saves; the layer path uses this op below a weight size
// (swin_ext/layers/fast_linear.py, MLP_FUSED_MAX_WEIGHT).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../checks.h"
#include "cpu_microkernels.h"
#include "gelu_cpu.h"
#include "gemm_blocking.h"

namespace swin_ext {
namespace {

using namespace cpu_gemm;

// The hidden map of one row block, about this many bytes: with the block's
// rows of x and the packed weights' current panels, within a 512 KiB L2.
constexpr int64_t kHiddenBytes = 192 << 10;

// Rows per block: a multiple of 12 (whole 4- and 6-row tiles), at least 12.
inline int64_t mlp_block_rows(int64_t hidden) {
  return std::max<int64_t>(12, kHiddenBytes / (hidden * int64_t(sizeof(float))) / 12 * 12);
}

struct MlpArgs {
  int64_t M, C, H, C2, R;  // rows, in, hidden, out features; rows per block
  const float* x;
  const float* w1p;  // fc1's weight, packed (pack_b: H / kColTile panels of C x kColTile)
  const float* b1;   // fc1's bias (H), zeros where it has none
  const float* w2p;  // fc2's weight, packed (C2 / kColTile panels of H x kColTile)
  const float* b2;   // fc2's bias (C2) or nullptr
  float* y;
};

// Row blocks [b0, b1), with `h` (R x H floats) for the hidden map.
// kWide: the GEMMs' AVX-512 tiles (gemm_b), with 16-lane GELU vectors.
template <int RB, typename V, bool kWide = false>
SWIN_ALWAYS_INLINE void mlp_blocks_body(const MlpArgs& a, int64_t b0, int64_t b1, float* h) {
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t r0 = blk * a.R, rows = std::min(a.R, a.M - r0);
    gemm_b<RB, kWide>(0, rows, 0, a.H, a.C, a.x + r0 * a.C, a.C, 1, a.w1p, a.C * kColTile, kColTile, nullptr, h,
                      a.H);
    cpu_gelu::bg_fwd_rows_vec<V>(h, a.b1, h, a.H, 0, rows);
    gemm_b<RB, kWide>(0, rows, 0, a.C2, a.H, h, a.H, 1, a.w2p, a.H * kColTile, kColTile, a.b2, a.y + r0 * a.C2,
                      a.C2);
  }
}

SWIN_CPU_CLONES((), mlp_blocks, (const MlpArgs& a, int64_t b0, int64_t b1, float* h),
                mlp_blocks_body<cpu::gemm_rows_for(kIsa), cpu::v8f>(a, b0, b1, h));
SWIN_CPU_CLONE_AVX512((), mlp_blocks, (const MlpArgs& a, int64_t b0, int64_t b1, float* h),
                      mlp_blocks_body<cpu::gemm_rows_for(kIsa), cpu::v16f, true>(a, b0, b1, h));

constexpr const char* kOp = "swin_ext mlp_cpu_fwd";

void check_bias(const std::optional<at::Tensor>& b, const char* name, int64_t n) {
  if (!b.has_value()) return;
  check_gemm_operand(kOp, *b, name, 1);
  TORCH_CHECK(b->size(0) == n, "swin_ext mlp_cpu_fwd: ", name, " has ", b->size(0), " elements, its weight ", n,
              " rows");
}

at::Tensor mlp_cpu_fwd(const at::Tensor& x_in, const at::Tensor& w1_in, const std::optional<at::Tensor>& b1_in,
                       const at::Tensor& w2_in, const std::optional<at::Tensor>& b2_in) {
  check_gemm_operand(kOp, x_in, "x", 2);
  check_gemm_weight(kOp, w1_in, "fc1_weight");
  check_gemm_weight(kOp, w2_in, "fc2_weight");
  const int64_t M = x_in.size(0), C = w1_in.size(1), H = w1_in.size(0), C2 = w2_in.size(0);
  TORCH_CHECK(x_in.size(1) == C, "swin_ext mlp_cpu_fwd: x has ", x_in.size(1), " features, fc1_weight ", C);
  TORCH_CHECK(w2_in.size(1) == H, "swin_ext mlp_cpu_fwd: fc2_weight takes ", w2_in.size(1), " features, fc1 gives ",
              H);
  check_bias(b1_in, "fc1_bias", H);
  check_bias(b2_in, "fc2_bias", C2);
  at::Tensor y = at::empty({M, C2}, x_in.options());
  if (M == 0) return y;
  const at::Tensor x = x_in.contiguous(), w1 = w1_in.contiguous(), w2 = w2_in.contiguous();
  const at::Tensor b1 = b1_in.has_value() ? b1_in->contiguous() : at::zeros({H}, x.options());
  const at::Tensor b2 = b2_in.has_value() ? b2_in->contiguous() : at::Tensor();
  const at::Tensor w1p = pack_b(C, H, w1.const_data_ptr<float>(), C, true, x.options());
  const at::Tensor w2p = pack_b(H, C2, w2.const_data_ptr<float>(), H, true, x.options());
  MlpArgs a{M,
            C,
            H,
            C2,
            mlp_block_rows(H),
            x.const_data_ptr<float>(),
            w1p.const_data_ptr<float>(),
            b1.const_data_ptr<float>(),
            w2p.const_data_ptr<float>(),
            b2.defined() ? b2.const_data_ptr<float>() : nullptr,
            y.mutable_data_ptr<float>()};
  at::parallel_for(0, ceil_div(M, a.R), 1, [&](int64_t b, int64_t e) {
    std::vector<float> h(a.R * H);
    SWIN_CPU_DISPATCH_AVX512(mlp_blocks, (a, b, e, h.data()));
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) { m.impl("mlp_cpu_fwd", &mlp_cpu_fwd); }

}  // namespace swin_ext
