// Launch templates of the attention kernels (the shape of flash-attention's
// flash_fwd_launch_template.h): the plan (warps, blocks, shared memory,
// workspaces) and the launches, apart from the ATen glue.  Included only by
// the per-dtype instantiation files attention_<dtype>.cu.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "api.h"
#include "bias_table_kernels.cuh"
#include "bwd_kernel.cuh"
#include "bwd_mma_kernel.cuh"
#include "fwd_kernel.cuh"
#include "fwd_mma_kernel.cuh"
#include "static_switch.h"

namespace swin_ext {
namespace cuda {
namespace attn {

constexpr int kMaxDevices = 64;

// Whether the one-tile kernels may fold the bias into S (V1 at head_dim 16
// and 32: FwdMmaTraits::kFoldBias, BwdMmaTraits::kFoldBias).  Their bias tile
// then holds (bias + mask) / scale, the initial value of the accumulators of
// S = q.k, and the logits are S * scale * log2(e), formed in the FFMA before
// the exp2 (36 warp-instructions fewer per warp and image in the forward, 32
// in the backward).  The bf16 tile backward also forms dS times scale
// (BwdMmaTraits::kScaledDS) and multiplies the bias gradient's sums by
// 1 / scale.  That needs scale > 0 (the row maxima of S are then those of the
// logits), and a range: 2^-32 <= scale <= 2^32, so that a bias below 7.9e28
// in magnitude stays finite in the tile and dS scale does not underflow
// where dS matters (|dS| >= 2^-94).  Any other scale -- 0, negative, tiny,
// huge -- runs the streaming forward and the key-tiled backward, which add
// the bias to the scaled logits and scale dQ and dK at the end.
inline bool tile_folds_bias(const AttnParams& p) {
  return p.scale >= 0x1p-32 && p.scale <= 0x1p32;
}

// Whether the one-tile kernel of traits M1 (the V1 form of either pass) may
// run for p: V2 (M2, never folded) always; V1 where it does not fold the
// bias, or where tile_folds_bias allows the fold.
template <class M1>
bool tile_allowed(const AttnParams& p) {
  return p.qk_norm || !M1::kFoldBias || tile_folds_bias(p);
}

// The largest images per block in [start, most] with the fewest (waves of
// `slots` blocks) x (images per block), where B images of blocks_per_image
// blocks each run as ceil(B / c) * blocks_per_image blocks: fwd_chunk (the
// device's slots) and choose_chunk (the tile backward's notional ones).
inline int64_t fewest_waves_chunk(int64_t B, int64_t blocks_per_image, int64_t start, int64_t most, int64_t slots) {
  const auto cost = [&](int64_t c) { return ceil_div<int64_t>(ceil_div<int64_t>(B, c) * blocks_per_image, slots) * c; };
  int64_t best = start;
  for (int64_t c = start + 1; c <= most; ++c)
    if (cost(c) <= cost(best)) best = c;
  return best;
}

// Backward blocks aimed at (images per block = B * blocks per image / this):
// ~2 waves of 3 blocks per SM on an H200 (132 SMs), enough for any GPU, and
// several images per block wherever the batch allows, to spread the block's
// once-only work (token table, bias tile, bias-gradient binning) over them:
// at 2048 Swin-T's stage 4 (B = 128, 24 heads, one window) ran one image per
// block, 2,899 warp-instructions per warp per image against 1,643 at
// stage 1 (benchmarks/results/attn_bwd_dyn_sm90.md).  At most 16 images: at
// 8, Swin-T's stages 1 and 2 (B = 128: 3,072 and 1,536 blocks) still spread
// the tile backward's 1,923 once-only warp-instructions per warp over 8
// images, 240 of its 1,406 per image; at 16, 120 (and half the bias-gradient
// partials), with 3.9 and 1.9 waves of blocks left.
constexpr int kTargetBlocks = 768;
constexpr int kMaxChunk = 16;                  // images per block (backward, and the one-tile forward)
constexpr int64_t kMaxBiasPartials = int64_t(1) << 25;  // elements of dbias partials (128 MB fp32)

// Raises a kernel's dynamic shared-memory limit once per (device, kernel),
// to the most that kernel can ever ask for (its layout at the largest
// head_dim of its traits) or the device's opt-in limit, whichever is lower:
// setting it per launch would race between host threads launching the same
// kernel with different sizes.  Only a success is remembered: a failure
// (returned, the caller reports its text) is retried by the next launch, so
// that an error unrelated to this kernel cannot disable it for the life of
// the process.
template <auto kernel>
cudaError_t ensure_smem_limit(int max_bytes) {
  static std::atomic<bool> done[kMaxDevices];
  static std::mutex mu;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (done[dev].load(std::memory_order_acquire)) return cudaSuccess;
  std::lock_guard<std::mutex> lock(mu);
  if (done[dev].load(std::memory_order_relaxed)) return cudaSuccess;
  int optin = 0;
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, std::min(max_bytes, optin));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: clear it so that the next launch may try again
    return e;
  }
  done[dev].store(true, std::memory_order_release);
  return cudaSuccess;
}

// Largest shared memory any launch of a kernel can need (its layouts do not
// depend on N; the generic kernels are sized at kMaxHeadDim).
template <class Tr>
int fwd_smem_max() { return fwd_layout<Tr>(Tr::kMaxD, Tr::kFwdWarps).total; }
template <class Tr>
int fused_smem_max() { return fused_layout<Tr>(Tr::kMaxD, Tr::kFusedWarps).total; }
template <class Tr>
int dq_smem_max() { return dq_layout<Tr>(Tr::kMaxD, Tr::kDqWarps).total; }
template <class Tr>
int dkv_smem_max() { return dkv_layout<Tr>(Tr::kMaxD, Tr::kDkvWarps).total; }

// Images per block of the one-tile forward, at most kMaxChunk: the bias tile
// and the token table are staged once per block, so more images per block
// cost fewer instructions.  At least the target's, B * (windows x heads) /
// kFwdTargetBlocks (~2 waves of 4 blocks per SM on 132 SMs where the batch
// allows); given the device's resident blocks, the largest chunk from there
// up with the fewest (waves of blocks) x (images per block):
// Swin-T at batch 128 on an H200 (528 slots) runs stage 3 as one wave of 528
// blocks of 12 images instead of two of 6, stage 4 as one of 6 instead of
// two of 3.  Any chunk gives the same outputs: images are independent.
constexpr int kFwdTargetBlocks = 1024;

inline int fwd_chunk(int64_t B, int64_t wh, int64_t resident) {
  const int64_t most = std::min<int64_t>(kMaxChunk, std::max<int64_t>(B, 1));
  const int64_t start = std::max<int64_t>(1, std::min<int64_t>(most, B * wh / kFwdTargetBlocks));
  return static_cast<int>(resident > 0 ? fewest_waves_chunk(B, wh, start, most, resident) : start);
}

template <class Tr>
FwdPlan plan_fwd(const AttnParams& p, int force_chunk, bool per_tile, int sms) {
  static_assert(streaming_fits_everywhere<Tr>(), "a streaming attention kernel does not fit 99 KB of shared memory");
  FwdPlan plan;
  const int64_t wh = static_cast<int64_t>(p.g.nW) * p.heads;
  if constexpr (Tr::kTC) {
    using M1 = FwdMmaTraits<typename Tr::T, Tr::kD, false>;
    using M2 = FwdMmaTraits<typename Tr::T, Tr::kD, true>;
    static_assert(std::max(M2::kTileSmem, M2::kStrSmem) <= kSmallestOptinSmem, "forward shared memory > 99 KB");
    plan.nwarps = M1::kWarps;
    // The one-tile kernel for the specialised head_dims; the generic head_dim
    // (a correctness path) always streams, which keeps it within 128
    // registers without local memory.
    plan.tile = Tr::kD != 0 && p.g.N <= M1::kKeys && tile_allowed<M1>(p);
    if (plan.tile) {
      plan.n_row_blocks = 1;
      plan.chunk = force_chunk > 0 ? std::min(force_chunk, std::max(p.B, 1))
                                   : fwd_chunk(p.B, wh, static_cast<int64_t>(sms) * M1::kMinBlocks);
      plan.n_chunks = ceil_div<int>(p.B, plan.chunk);
      plan.smem = p.qk_norm ? M2::kTileSmem : M1::kTileSmem;
      plan.blocks = static_cast<int64_t>(plan.n_chunks) * wh;
    } else {
      plan.n_row_blocks = ceil_div<int>(p.g.N, M1::kRows);
      plan.smem = p.qk_norm ? M2::kStrSmem : M1::kStrSmem;
      plan.blocks = static_cast<int64_t>(p.B) * wh * plan.n_row_blocks;
      // The window's tables, then a table bias, after the layout where they
      // keep it within 99 KB (a rule of the shape only).
      const int keys = ceil_div<int>(p.g.N, M1::kStrKeys) * M1::kStrKeys;
      const int tabs = M1::str_tabs_bytes(keys), tbl = p.bias_table ? M1::str_table_bytes(p.bias_rows) : 0;
      plan.win_tabs = M1::kStrTabs && !per_tile && plan.smem + tabs <= kSmallestOptinSmem;
      plan.table_smem = plan.win_tabs && p.bias_table && p.bias_rows <= kTabMaxRows &&
                        plan.smem + tabs + tbl <= kSmallestOptinSmem;
      plan.smem += (plan.win_tabs ? tabs : 0) + (plan.table_smem ? tbl : 0);
    }
  } else {
    plan.nwarps = std::min(Tr::kFwdWarps, ceil_div<int>(p.g.N, kRowTile));
    plan.n_row_blocks = ceil_div<int>(p.g.N, kRowTile * plan.nwarps);
    plan.smem = fwd_layout<Tr>(p.d, plan.nwarps).total;
    plan.blocks = static_cast<int64_t>(p.B) * wh * plan.n_row_blocks;
  }
  // The one-tile kernel and the SIMT kernel read the (heads, N, N) bias: a
  // table is expanded by the glue (reading it in the one-tile kernel's
  // once-per-block staging cost ~500 warp-instructions per block more than the
  // gathered bias; see the issue 19 item 6 report); the streaming kernel
  // reads it from shared memory where it fits.
  plan.bias_expanded = p.bias_table && !plan.table_smem;
  return plan;
}

template <class M>
cudaError_t run_fwd_mma(AttnParams p, const FwdPlan& plan, cudaStream_t stream) {
  p.nwarps = plan.nwarps;
  p.n_row_blocks = plan.n_row_blocks;
  p.chunk = plan.chunk;
  p.n_chunks = plan.n_chunks;
  p.div_heads = FastDiv::make(p.heads);
  p.div_nW = FastDiv::make(p.g.nW);
  p.div_rb = FastDiv::make(plan.n_row_blocks);
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  if constexpr (M::kD != 0) {
    if (plan.tile) {
      const cudaError_t e = ensure_smem_limit<attn_fwd_tile_kernel<M>>(M::kTileSmem);
      if (e != cudaSuccess) return e;
      SWIN_LAUNCH_KERNEL((attn_fwd_tile_kernel<M>), grid, M::kThreads, plan.smem, stream, p);
      return cudaSuccess;
    }
  }
  {
    p.win_tabs = plan.win_tabs;
    if (p.bias_table && !plan.table_smem) return cudaErrorInvalidValue;  // (as in run_bwd_mma)
    const cudaError_t e = ensure_smem_limit<attn_fwd_stream_kernel<M>>(kSmallestOptinSmem);  // (+ the tables)
    if (e != cudaSuccess) return e;
    SWIN_LAUNCH_KERNEL((attn_fwd_stream_kernel<M>), grid, M::kThreads, plan.smem, stream, p);
  }
  return cudaSuccess;
}

template <class Tr>
cudaError_t run_fwd(AttnParams p, const FwdPlan& plan, cudaStream_t stream) {
  if (plan.blocks == 0) return cudaSuccess;
  if constexpr (Tr::kTC) {
    return p.qk_norm ? run_fwd_mma<FwdMmaTraits<typename Tr::T, Tr::kD, true>>(p, plan, stream)
                     : run_fwd_mma<FwdMmaTraits<typename Tr::T, Tr::kD, false>>(p, plan, stream);
  } else {
    const cudaError_t e = ensure_smem_limit<attn_fwd_kernel<Tr>>(fwd_smem_max<Tr>());
    if (e != cudaSuccess) return e;
    p.nwarps = plan.nwarps;
    p.n_row_blocks = plan.n_row_blocks;
    p.div_heads = FastDiv::make(p.heads);
    p.div_nW = FastDiv::make(p.g.nW);
    p.div_rb = FastDiv::make(plan.n_row_blocks);
    SWIN_LAUNCH_KERNEL((attn_fwd_kernel<Tr>), dim3(static_cast<unsigned>(plan.blocks)), plan.nwarps * 32,
                       plan.smem, stream, p);
    return cudaSuccess;
  }
}

// Resident blocks of the notional device the tile backward's chunk is
// planned for: 132 SMs (H100 SXM / H200) x the tile kernel's 3 blocks per SM.
// A constant, not the device's: the chunk must not depend on the GPU.
constexpr int64_t kBwdWaveSlots = 132 * 3;

// Images per backward block: a function of the shape only (so the bias
// gradient's summation order, hence its bits, do not depend on the GPU),
// enough blocks for any GPU, partials of bounded size.  At least the
// target's B * blocks_per_image / kTargetBlocks; with `slots` (> 0: the tile
// kernel, kBwdWaveSlots) the largest chunk from there up to kMaxChunk with
// the fewest (waves of `slots` blocks) x (images per block), as fwd_chunk
// does for the device: each block's once-only work (token table, bias tile,
// the binning of the bias gradient) is then spread over more images at no
// cost in waves.  Swin-T at batch 128 runs stage 3 as 384 blocks of 16
// images instead of 768 of 8, stage 4 as 384 of 8 instead of 768 of 4.
inline int choose_chunk(int B, int64_t blocks_per_image, int64_t partial_per_chunk, int64_t slots = 0) {
  const int64_t most = std::min<int64_t>(kMaxChunk, std::max(B, 1));
  int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(most, B * blocks_per_image / kTargetBlocks));
  if (slots > 0) chunk = fewest_waves_chunk(B, blocks_per_image, chunk, most, slots);
  while (chunk < B && ceil_div<int64_t>(B, chunk) * partial_per_chunk > kMaxBiasPartials) chunk *= 2;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(chunk, 1), std::max(B, 1)));
}

// bf16 / fp16: the tile kernel (N <= 64, head_dim <= 64), else the
// key-tiled kernel with the window's dQ in shared memory where that fits the
// device, else the key-tiled kernel with dQ in a float32 workspace (any N,
// bounded shared memory).  SWIN_EXT_ATTN_BWD=streaming
// forces the last (at any N), =fused the first two.
template <class Tr>
BwdPlan plan_bwd_mma(const AttnParams& p, int smem_optin, BwdChoice choice, int force_chunk) {
  using M1 = bwd::BwdMmaTraits<typename Tr::T, Tr::kD, false>;
  using M2 = bwd::BwdMmaTraits<typename Tr::T, Tr::kD, true>;
  BwdPlan plan;
  const int N = p.g.N, n16 = align_up(N, kRowTile);
  const int64_t wh = static_cast<int64_t>(p.g.nW) * p.heads;
  // The key-tiled kernel keeps the window's tile tables in shared memory
  // (formed once per block) and reads a bias table from there (its head's
  // column), where they fit the device; else it forms each tile's table as
  // the tile is issued, and the glue expands a table.
  const int nkt = ceil_div<int>(N, M1::kTile);
  const int tabs_bytes = M1::window_tabs_bytes(nkt);
  const int table_bytes = p.bias_table ? M1::window_table_bytes(p.bias_rows) : 0;
  const auto window_smem = [&](bool dq_smem, int extra) {
    return (p.qk_norm ? M2::window_smem(n16, dq_smem) : M1::window_smem(n16, dq_smem)) + extra;
  };
  // Blocks per SM a launch of `smem` bytes allows (the SM holds the opt-in
  // limit plus 1 KB, and reserves 1 KB per block).
  const auto per_sm = [&](int smem) { return (smem_optin + 1024) / (smem + 1024); };
  if (N <= M1::kTile && M1::kDPad <= 64 && choice != BwdChoice::kStreaming && tile_allowed<M1>(p)) {
    plan.path = BwdPath::kFused;
    plan.smem = p.qk_norm ? M2::kTileSmem : M1::kTileSmem;
    if constexpr (Tr::kD == 32) {
      if (choice == BwdChoice::kTile4 && !p.qk_norm) {
        plan.tile4 = true;
        plan.smem = bwd::BwdMmaLeanTraits<typename Tr::T>::kTileSmem;
      }
    }
  } else {
    // The table in shared memory where the streamed form fits with it; the
    // window's dQ in shared memory (kWindow) where that fits as well and
    // keeps as many blocks per SM as the streamed form.
    plan.win_tabs = M1::kWinTabs && choice != BwdChoice::kPerTile && window_smem(false, tabs_bytes) <= smem_optin;
    plan.table_smem = plan.win_tabs && p.bias_table && p.bias_rows <= kTabMaxRows &&
                      window_smem(false, tabs_bytes + table_bytes) <= smem_optin;
    const int extra = (plan.win_tabs ? tabs_bytes : 0) + (plan.table_smem ? table_bytes : 0);
    const int res = window_smem(true, extra), str = window_smem(false, extra);
    if (choice != BwdChoice::kStreaming && res <= smem_optin && per_sm(res) >= per_sm(str)) {
      plan.path = BwdPath::kWindow;
      plan.smem = res;
    } else {
      plan.path = BwdPath::kStreaming;
      plan.smem = str;
    }
  }
  plan.nwarps = M1::kWarps;
  plan.n_row_blocks = plan.n_key_blocks = 1;
  // Both kernels bin the gradient of a table into its rows once per block
  // (partials of bias_rows, not N * N, per (chunk, window, head)): the tile
  // kernel from its shared-memory sums, the key-tiled one from its block's
  // N x N sums over the chunk's images in a workspace (L2-resident while the
  // block runs), which the glue never reads.  The tile kernel reads the table
  // itself, the key-tiled kernel its shared-memory copy (table_smem), else the
  // glue's expansion.
  plan.dbias_binned = p.bias_table;
  plan.bias_expanded = p.bias_table && plan.path != BwdPath::kFused && !plan.table_smem;
  // The chunk rule is the (heads, N, N) form's for both forms, so that every
  // other gradient (dqkv, the pad vector's, d head_scale) has the same bits.
  plan.chunk = force_chunk > 0 ? std::min(force_chunk, std::max(p.B, 1))
                               : choose_chunk(p.B, wh, wh * N * N, plan.path == BwdPath::kFused ? kBwdWaveSlots : 0);
  plan.n_chunks = ceil_div<int>(p.B, plan.chunk);
  plan.dbias_part_elems =
      static_cast<int64_t>(plan.n_chunks) * wh * (plan.dbias_binned ? static_cast<int64_t>(p.bias_rows) : int64_t(N) * N);
  plan.dpad_slots = p.padded ? static_cast<int64_t>(plan.n_chunks) * p.g.nW * M1::kWarps : 0;
  plan.dscale_slots = p.qk_norm ? static_cast<int64_t>(plan.n_chunks) * p.g.nW : 0;
  if (plan.path != BwdPath::kFused) {
    if (plan.dbias_binned) plan.dbias_ws_elems = static_cast<int64_t>(plan.n_chunks) * wh * N * N;
    plan.drow_elems = static_cast<int64_t>(p.B) * wh * N;
    plan.dq_ws_elems = static_cast<int64_t>(plan.n_chunks) * wh * M1::window_ws(n16, plan.path == BwdPath::kWindow);
  }
  return plan;
}

template <class M>
cudaError_t run_bwd_mma(AttnParams p, const BwdPlan& plan, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(static_cast<int64_t>(plan.n_chunks) * p.g.nW * p.heads));
  if constexpr (M::kDPad <= 64) {  // (the plan takes the tile kernel only there)
    if (plan.path == BwdPath::kFused) {
      if constexpr (M::kD == 32 && !M::kV2) {
        if (plan.tile4) {
          using L = bwd::BwdMmaLeanTraits<typename M::T>;
          const cudaError_t e = ensure_smem_limit<bwd::attn_bwd_tile_kernel<L>>(L::kTileSmem);
          if (e != cudaSuccess) return e;
          // (spelled out: the harness's launch log names the form)
          SWIN_LAUNCH_KERNEL((bwd::attn_bwd_tile_kernel<bwd::BwdMmaLeanTraits<typename M::T>>), grid, L::kThreads,
                             plan.smem, stream, p);
          return cudaSuccess;
        }
      }
      const cudaError_t e = ensure_smem_limit<bwd::attn_bwd_tile_kernel<M>>(M::kTileSmem);
      if (e != cudaSuccess) return e;
      SWIN_LAUNCH_KERNEL((bwd::attn_bwd_tile_kernel<M>), grid, M::kThreads, plan.smem, stream, p);
      return cudaSuccess;
    }
  }
  p.win_tabs = plan.win_tabs;
  // A table reaches the key-tiled kernel only with its shared-memory copy (the
  // glue expands it otherwise): the kernel indexes it through the window's tables.
  if (p.bias_table && !plan.table_smem) return cudaErrorInvalidValue;
  if (plan.path == BwdPath::kWindow) {
    const cudaError_t e = ensure_smem_limit<bwd::attn_bwd_window_kernel<M, true>>(1 << 30);
    if (e != cudaSuccess) return e;
    SWIN_LAUNCH_KERNEL((bwd::attn_bwd_window_kernel<M, true>), grid, M::kThreads, plan.smem, stream, p);
  } else {
    const cudaError_t e = ensure_smem_limit<bwd::attn_bwd_window_kernel<M, false>>(1 << 30);  // (+ the table)
    if (e != cudaSuccess) return e;
    SWIN_LAUNCH_KERNEL((bwd::attn_bwd_window_kernel<M, false>), grid, M::kThreads, plan.smem, stream, p);
  }
  return cudaSuccess;
}

// fp32 / fp64: the SIMT fused kernel (N <= 64, where it fits) or the dq + dk/dv pair.
template <class Tr>
BwdPlan plan_bwd_simt(const AttnParams& p, int smem_optin, BwdChoice choice, int force_chunk) {
  BwdPlan plan;
  const int N = p.g.N;
  const int64_t wh = static_cast<int64_t>(p.g.nW) * p.heads;
  const int64_t partial = wh * N * N;
  const int fused_warps = ceil_div<int>(N, kRowTile);
  const bool fused_ok = N <= kFusedMaxN && fused_layout<Tr>(p.d, fused_warps).total <= smem_optin;
  if (fused_ok && choice != BwdChoice::kStreaming) {
    plan.path = BwdPath::kFused;
    plan.nwarps = fused_warps;
    plan.n_row_blocks = 1;
    plan.chunk = force_chunk > 0 ? std::min(force_chunk, std::max(p.B, 1)) : choose_chunk(p.B, wh, partial);
    plan.n_chunks = ceil_div<int>(p.B, plan.chunk);
    plan.smem = fused_layout<Tr>(p.d, fused_warps).total;
    plan.dpad_slots = p.padded ? static_cast<int64_t>(plan.n_chunks) * p.g.nW * plan.nwarps : 0;
  } else {
    plan.path = BwdPath::kStreaming;
    plan.nwarps = std::min(Tr::kDqWarps, ceil_div<int>(N, kRowTile));
    plan.n_row_blocks = ceil_div<int>(N, kRowTile * plan.nwarps);
    plan.nwarps_dkv = std::min(Tr::kDkvWarps, ceil_div<int>(N, kRowTile));
    plan.n_key_blocks = ceil_div<int>(N, kRowTile * plan.nwarps_dkv);
    plan.chunk = force_chunk > 0 ? std::min(force_chunk, std::max(p.B, 1))
                                 : choose_chunk(p.B, wh * plan.n_row_blocks, partial);
    plan.n_chunks = ceil_div<int>(p.B, plan.chunk);
    plan.smem = dq_layout<Tr>(p.d, plan.nwarps).total;
    plan.smem_dkv = dkv_layout<Tr>(p.d, plan.nwarps_dkv).total;
    plan.dbuf_elems = static_cast<int64_t>(p.B) * wh * N;
    plan.dpad_slots = p.padded ? static_cast<int64_t>(p.B) * p.g.nW * plan.n_key_blocks * plan.nwarps_dkv : 0;
  }
  plan.dbias_part_elems = static_cast<int64_t>(plan.n_chunks) * partial;
  plan.dscale_slots = p.qk_norm ? static_cast<int64_t>(plan.n_chunks) * plan.n_row_blocks * p.g.nW : 0;
  plan.bias_expanded = p.bias_table;  // the SIMT kernels read the (heads, N, N) bias
  return plan;
}

template <class Tr>
cudaError_t run_bwd_simt(AttnParams p, const BwdPlan& plan, cudaStream_t stream) {
  if (static_cast<int64_t>(p.B) * p.g.nW * p.heads == 0) return cudaSuccess;
  p.chunk = plan.chunk;
  p.n_chunks = plan.n_chunks;
  const int64_t wh = static_cast<int64_t>(p.g.nW) * p.heads;
  if (plan.path == BwdPath::kFused) {
    const cudaError_t e = ensure_smem_limit<attn_bwd_fused_kernel<Tr>>(fused_smem_max<Tr>());
    if (e != cudaSuccess) return e;
    p.nwarps = plan.nwarps;
    p.n_row_blocks = 1;
    SWIN_LAUNCH_KERNEL((attn_bwd_fused_kernel<Tr>), dim3(static_cast<unsigned>(plan.n_chunks * wh)),
                       plan.nwarps * 32, plan.smem, stream, p);
    return cudaSuccess;
  }
  cudaError_t e = ensure_smem_limit<attn_bwd_dq_kernel<Tr>>(dq_smem_max<Tr>());
  if (e != cudaSuccess) return e;
  e = ensure_smem_limit<attn_bwd_dkv_kernel<Tr>>(dkv_smem_max<Tr>());
  if (e != cudaSuccess) return e;
  p.nwarps = plan.nwarps;
  p.n_row_blocks = plan.n_row_blocks;
  SWIN_LAUNCH_KERNEL((attn_bwd_dq_kernel<Tr>), dim3(static_cast<unsigned>(plan.n_chunks * wh * plan.n_row_blocks)),
                     plan.nwarps * 32, plan.smem, stream, p);
  p.nwarps = plan.nwarps_dkv;
  p.n_row_blocks = plan.n_key_blocks;
  SWIN_LAUNCH_KERNEL((attn_bwd_dkv_kernel<Tr>), dim3(static_cast<unsigned>(p.B * wh * plan.n_key_blocks)),
                     plan.nwarps_dkv * 32, plan.smem_dkv, stream, p);
  return cudaSuccess;
}

template <class Tr>
BwdPlan plan_bwd(const AttnParams& p, int smem_optin, BwdChoice choice, int force_chunk) {
  if constexpr (Tr::kTC) {
    return plan_bwd_mma<Tr>(p, smem_optin, choice, force_chunk);
  } else {
    return plan_bwd_simt<Tr>(p, smem_optin, choice, force_chunk);
  }
}

template <class Tr>
cudaError_t run_bwd(AttnParams p, const BwdPlan& plan, cudaStream_t stream) {
  if constexpr (Tr::kTC) {
    if (static_cast<int64_t>(p.B) * p.g.nW * p.heads == 0) return cudaSuccess;
    p.chunk = plan.chunk;
    p.n_chunks = plan.n_chunks;
    p.nwarps = plan.nwarps;
    p.n_row_blocks = 1;
    p.div_heads = FastDiv::make(p.heads);
    p.div_nW = FastDiv::make(p.g.nW);
    return p.qk_norm ? run_bwd_mma<bwd::BwdMmaTraits<typename Tr::T, Tr::kD, true>>(p, plan, stream)
                     : run_bwd_mma<bwd::BwdMmaTraits<typename Tr::T, Tr::kD, false>>(p, plan, stream);
  } else {
    return run_bwd_simt<Tr>(p, plan, stream);
  }
}

// ------------------------------------------------------------------ per-dtype entry points

template <typename T>
FwdPlan attention_fwd_plan(const AttnParams& p, int chunk, bool per_tile, int sms) {
  return SWIN_HEADDIM_SWITCH(p.d, [&] { return plan_fwd<Traits<T, kHeadDim>>(p, chunk, per_tile, sms); });
}
template <typename T>
cudaError_t attention_fwd_run(AttnParams p, const FwdPlan& plan, cudaStream_t stream) {
  return SWIN_HEADDIM_SWITCH(p.d, [&] { return run_fwd<Traits<T, kHeadDim>>(p, plan, stream); });
}
template <typename T>
BwdPlan attention_bwd_plan(const AttnParams& p, int smem_optin, BwdChoice choice, int chunk) {
  return SWIN_HEADDIM_SWITCH(p.d, [&] { return plan_bwd<Traits<T, kHeadDim>>(p, smem_optin, choice, chunk); });
}
template <typename T>
cudaError_t attention_bwd_run(AttnParams p, const BwdPlan& plan, cudaStream_t stream) {
  return SWIN_HEADDIM_SWITCH(p.d, [&] { return run_bwd<Traits<T, kHeadDim>>(p, plan, stream); });
}

#define SWIN_ATTN_INSTANTIATE(T)                                                                 \
  template FwdPlan attention_fwd_plan<T>(const AttnParams&, int, bool, int);                     \
  template cudaError_t attention_fwd_run<T>(AttnParams, const FwdPlan&, cudaStream_t);           \
  template BwdPlan attention_bwd_plan<T>(const AttnParams&, int, BwdChoice, int);                \
  template cudaError_t attention_bwd_run<T>(AttnParams, const BwdPlan&, cudaStream_t);

// The tensor-core backward of one (dtype, head_dim), in a translation unit of
// its own (attention_bwd_hdim<D>_<dtype>.cu, as flash-attention splits its
// kernels): its launches hold ~90% of the attention's device code, and one
// unit per dtype made the build's critical path (about 100 s of nvcc for one
// sm_90a unit, 199 s of the H200 build on 2026-12-04).  The dtype's unit
// declares these extern (SWIN_ATTN_BWD_EXTERN), so only the head_dim units
// compile the kernels.  The head_dims are SWIN_HEADDIM_SWITCH's.
#define SWIN_ATTN_BWD_HEADDIMS(X, T) X(T, 32) X(T, 16) X(T, 64) X(T, 128) X(T, 0)
#define SWIN_ATTN_BWD_EXTERN_ONE(T, D) \
  extern template cudaError_t run_bwd<Traits<T, D>>(AttnParams, const BwdPlan&, cudaStream_t);
#define SWIN_ATTN_BWD_EXTERN(T) SWIN_ATTN_BWD_HEADDIMS(SWIN_ATTN_BWD_EXTERN_ONE, T)
#define SWIN_ATTN_BWD_INSTANTIATE(T, D) \
  template cudaError_t run_bwd<Traits<T, D>>(AttnParams, const BwdPlan&, cudaStream_t);

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
