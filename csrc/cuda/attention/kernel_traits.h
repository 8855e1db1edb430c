// Kernel traits of the window-attention kernels: tile shapes, warps per
// block and the shared-memory carve-up of every kernel, per (dtype, head_dim).
//
// One Traits<T, kD> type per configuration (the shape of flash-attention's
// kernel_traits.h).  The layouts below are computed by one function per
// kernel, used both by the host (size of the launch) and by the kernel (where
// each buffer starts), so the two cannot disagree.  No layout depends on the
// window size N: tiles stream over the keys and rows, so shared memory is
// bounded for every window, and the static_asserts at the bottom prove that
// the streaming kernels fit the smallest opt-in limit of every GPU this code
// claims (sm_86 / sm_89: 99 KB) for every head_dim up to kMaxHeadDim.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common.cuh"
#include "params.h"

namespace swin_ext {
namespace cuda {
namespace attn {

constexpr int kRowTile = 16;        // rows of a warp tile (the WMMA M and the SIMT tile)
constexpr int kFusedMaxN = 64;      // the fused backward holds the whole window in one tile
constexpr int kSmallestOptinSmem = 101376;  // sm_86 / sm_89 opt-in limit per block (99 KB)
constexpr int kSmemAlign = 128;
// The key-tiled kernels' window tables pack a key's relative-position code
// and its shift region into one int, code | region << kTabCodeBits: one
// shared load for both in the scores' loop.  A table staged in shared memory
// has at most 2^kTabCodeBits rows (kTabMaxRows; 99 KB allows ~25,000).
constexpr int kTabCodeBits = 16;
constexpr int kTabCodeMask = (1 << kTabCodeBits) - 1;
constexpr int kTabMaxRows = 1 << kTabCodeBits;

template <typename T>
struct IsTensorCore : std::false_type {};
template <>
struct IsTensorCore<__half> : std::true_type {};
template <>
struct IsTensorCore<__nv_bfloat16> : std::true_type {};

__host__ __device__ constexpr int align_up(int v, int a) { return (v + a - 1) / a * a; }

// T: element type of qkv; kD: head_dim, or 0 for the generic (run-time) path.
template <typename T_, int kD_>
struct Traits {
  using T = T_;
  using acc_t = typename AccType<T>::type;
  static constexpr bool kTC = IsTensorCore<T>::value;  // bf16 / fp16: WMMA tensor cores
  static constexpr int kD = kD_;
  static constexpr int kMaxD = kD ? kD : kMaxHeadDim;
  static constexpr int kVec = 16 / sizeof(T);           // elements of one 16-byte access
  static constexpr int kTB = sizeof(T);
  static constexpr int kAB = sizeof(acc_t);
  static_assert(kD == 0 || (kD > 0 && kD <= kMaxHeadDim), "head_dim out of range");
  static_assert(!kTC || kD % 16 == 0, "specialised tensor-core head_dims are multiples of 16");

  // Forward: warps per block (each owns a 16-row query tile) and keys per tile.
  static constexpr int kFwdWarps = kTC ? 4 : (kTB == 4 ? (kMaxD <= 64 ? 4 : 2) : (kMaxD <= 64 ? 2 : 1));
  static constexpr int kFwdKeyTile =
      kTC ? (kMaxD <= 64 ? 64 : 32) : (kTB == 4 ? (kMaxD <= 64 ? 64 : 32) : (kMaxD <= 32 ? 64 : (kMaxD <= 64 ? 32 : 16)));
  // Fused backward (N <= kFusedMaxN): one warp per 16-row tile of the window.
  static constexpr int kFusedWarps = kFusedMaxN / kRowTile;
  // Streaming backward, dq kernel: warps (16 query rows each) and keys per tile.
  static constexpr int kDqWarps = kTC ? (kMaxD <= 64 ? 4 : 2) : (kTB == 4 ? (kMaxD <= 64 ? 4 : 2) : (kMaxD <= 64 ? 2 : 1));
  static constexpr int kDqKeyTile = kTC ? (kMaxD <= 64 ? 64 : 32) : (kTB == 4 ? (kMaxD <= 64 ? 32 : 32) : 16);
  // Resident dq blocks per SM the register allocation is bounded for: at
  // head_dim 32 on tensor cores the block's 66 KB of shared memory allows 3
  // per SM, which 170 registers a thread or fewer keep (19% occupancy; the
  // compiler chose 172 unbounded, 2 blocks).
  static constexpr int kDqMinBlocks = (kTC && kD == 32) ? 3 : 1;
  // Streaming backward, dk/dv kernel: warps (16 keys each) and query rows per tile.
  static constexpr int kDkvWarps = kTC ? (kMaxD <= 64 ? 4 : 2) : (kTB == 4 ? (kMaxD <= 64 ? 2 : 1) : 1);
  static constexpr int kDkvQTile = kTC ? (kMaxD <= 32 ? 64 : 32) : (kTB == 4 ? 32 : (kMaxD <= 64 ? 16 : 8));

  // head_dim padded for the tensor-core k dimension (zeros beyond d).
  __host__ __device__ static constexpr int dpad(int d) { return kTC ? align_up(d, 16) : d; }
  // Row stride (elements of T) of operand tiles: 16-byte rows for WMMA, an
  // odd stride (no bank conflicts) for the SIMT loops.
  __host__ __device__ static constexpr int ld_op(int d) { return kTC ? dpad(d) + 8 : d + 1; }
  // Row stride (elements of acc_t) of accumulator / score tiles.
  __host__ __device__ static constexpr int ld_acc(int cols) { return kTC ? cols + 4 : cols + 1; }
  // Probabilities (P, dS) are written over the scores they come from, row r
  // inside score row r, in T for the tensor cores (so the row stride in T
  // elements is scaled), in place for SIMT.
  __host__ __device__ static constexpr int ld_p(int cols) { return ld_acc(cols) * (kAB / kTB); }
};

// Offsets (bytes) of the buffers of one kernel's dynamic shared memory.
struct Carve {
  int off = 0;
  __host__ __device__ constexpr int take(int bytes) {
    const int o = off;
    off = align_up(off + bytes, kSmemAlign);
    return o;
  }
};

// ---------------------------------------------------------------- forward
struct FwdLayout {
  int tok_r, reg_r, tok_k, reg_k, q, k, v, s, o, stats, inv, total;
};
template <class Tr>
__host__ __device__ constexpr FwdLayout fwd_layout(int d, int nwarps) {
  constexpr int Kt = Tr::kFwdKeyTile;
  const int rows = kRowTile * nwarps;
  Carve c;
  FwdLayout L{};
  L.tok_r = c.take(rows * 4);
  L.reg_r = c.take(rows * 4);
  L.tok_k = c.take(Kt * 4);
  L.reg_k = c.take(Kt * 4);
  L.q = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.k = c.take(Kt * Tr::ld_op(d) * Tr::kTB);
  L.v = c.take(Kt * Tr::ld_op(d) * Tr::kTB);
  L.s = c.take(nwarps * kRowTile * Tr::ld_acc(Kt) * Tr::kAB);          // scores, then P
  L.o = c.take(nwarps * kRowTile * Tr::ld_acc(Tr::dpad(d)) * Tr::kAB);  // output accumulator
  L.stats = c.take(nwarps * 3 * kRowTile * Tr::kAB);                  // row max, sum, rescale
  L.inv = c.take((rows + Kt) * Tr::kAB);                              // Swin V2: 1 / ||q||, 1 / ||k||
  L.total = c.off;
  return L;
}

// ---------------------------------------------------------------- fused backward
struct FusedLayout {
  int tok, reg, q, k, v, dout, s, dp, stage, dpad, inv, dscale, total;
};
template <class Tr>
__host__ __device__ constexpr FusedLayout fused_layout(int d, int nwarps) {
  const int rows = kRowTile * nwarps;  // the window, padded to the warp tiles
  Carve c;
  FusedLayout L{};
  L.tok = c.take(rows * 4);
  L.reg = c.take(rows * 4);
  L.q = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.k = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.v = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.dout = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.s = c.take(nwarps * kRowTile * Tr::ld_acc(rows) * Tr::kAB);   // S, then P
  L.dp = c.take(nwarps * kRowTile * Tr::ld_acc(rows) * Tr::kAB);  // dP, then dS
  L.stage = c.take(nwarps * kRowTile * Tr::ld_acc(Tr::dpad(d)) * Tr::kAB);  // dV / dK / dQ tile
  L.dpad = c.take(nwarps * 2 * Tr::dpad(d) * Tr::kAB);             // per-warp padding-key gradients
  L.inv = c.take(2 * rows * Tr::kAB);                              // Swin V2: 1 / ||q||, 1 / ||k|| per row
  L.dscale = c.take(nwarps * Tr::kAB);                             // Swin V2: per-warp d head_scale
  L.total = c.off;
  return L;
}

// ---------------------------------------------------------------- streaming backward: dq
struct DqLayout {
  int tok_r, reg_r, tok_k, reg_k, q, dout, k, v, s, dp, acc, stats, inv, dscale, total;
};
template <class Tr>
__host__ __device__ constexpr DqLayout dq_layout(int d, int nwarps) {
  constexpr int Kt = Tr::kDqKeyTile;
  const int rows = kRowTile * nwarps;
  Carve c;
  DqLayout L{};
  L.tok_r = c.take(rows * 4);
  L.reg_r = c.take(rows * 4);
  L.tok_k = c.take(Kt * 4);
  L.reg_k = c.take(Kt * 4);
  L.q = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.dout = c.take(rows * Tr::ld_op(d) * Tr::kTB);
  L.k = c.take(Kt * Tr::ld_op(d) * Tr::kTB);
  L.v = c.take(Kt * Tr::ld_op(d) * Tr::kTB);
  L.s = c.take(nwarps * kRowTile * Tr::ld_acc(Kt) * Tr::kAB);
  L.dp = c.take(nwarps * kRowTile * Tr::ld_acc(Kt) * Tr::kAB);
  L.acc = c.take(nwarps * kRowTile * Tr::ld_acc(Tr::dpad(d)) * Tr::kAB);  // dQ accumulator
  L.stats = c.take(nwarps * 2 * kRowTile * Tr::kAB);                    // lse, D per row
  L.inv = c.take((rows + Kt) * Tr::kAB);  // Swin V2: 1 / ||q|| per row, 1 / ||k|| of the key tile
  L.dscale = c.take(nwarps * Tr::kAB);                                   // Swin V2: per-warp d head_scale
  L.total = c.off;
  return L;
}

// ---------------------------------------------------------------- streaming backward: dk, dv
struct DkvLayout {
  int tok_k, reg_k, tok_q, reg_q, k, v, q, dout, stats, s, dp, dk, dv, inv, total;
};
template <class Tr>
__host__ __device__ constexpr DkvLayout dkv_layout(int d, int nwarps) {
  constexpr int Qt = Tr::kDkvQTile;
  const int keys = kRowTile * nwarps;
  Carve c;
  DkvLayout L{};
  L.tok_k = c.take(keys * 4);
  L.reg_k = c.take(keys * 4);
  L.tok_q = c.take(Qt * 4);
  L.reg_q = c.take(Qt * 4);
  L.k = c.take(keys * Tr::ld_op(d) * Tr::kTB);
  L.v = c.take(keys * Tr::ld_op(d) * Tr::kTB);
  L.q = c.take(Qt * Tr::ld_op(d) * Tr::kTB);
  L.dout = c.take(Qt * Tr::ld_op(d) * Tr::kTB);
  L.stats = c.take(2 * Qt * Tr::kAB);  // lse, D of the query tile
  L.s = c.take(nwarps * kRowTile * Tr::ld_acc(Qt) * Tr::kAB);   // S^T, then P^T
  L.dp = c.take(nwarps * kRowTile * Tr::ld_acc(Qt) * Tr::kAB);  // dP^T, then dS^T
  L.dk = c.take(nwarps * kRowTile * Tr::ld_acc(Tr::dpad(d)) * Tr::kAB);
  L.dv = c.take(nwarps * kRowTile * Tr::ld_acc(Tr::dpad(d)) * Tr::kAB);
  L.inv = c.take((keys + Qt) * Tr::kAB);  // Swin V2: 1 / ||k|| per key, 1 / ||q|| of the query tile
  L.total = c.off;
  return L;
}

// Every head_dim of a configuration fits the smallest opt-in limit, for the
// forward and both streaming backward kernels (the fused kernel is chosen
// only when it fits the device at hand).
template <class Tr>
constexpr bool streaming_fits_everywhere() {
  for (int d = 1; d <= Tr::kMaxD; ++d) {
    if (Tr::kD && d != Tr::kD) continue;
    if (fwd_layout<Tr>(d, Tr::kFwdWarps).total > kSmallestOptinSmem) return false;
    if (dq_layout<Tr>(d, Tr::kDqWarps).total > kSmallestOptinSmem) return false;
    if (dkv_layout<Tr>(d, Tr::kDkvWarps).total > kSmallestOptinSmem) return false;
  }
  return true;
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
