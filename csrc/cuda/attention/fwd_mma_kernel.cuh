// Forward of the fused shifted-window attention on tensor cores (bf16 /
// fp16), register-resident in the manner of FlashAttention-2.
//
// Each warp owns 16 query rows.  S = Q K^T is computed by mma.sync
// m16n8k16 into accumulator fragments and never leaves the registers: the
// scale, the relative-position bias and the shift mask are added in the
// fragment layout, the row max and row sum are reduced over the 4 lanes that
// share a row (2 shuffles), exp2 runs on log2(e)-prescaled logits, and the
// probabilities are packed to bf16 / fp16 pairs that are directly the A
// operand of O += P V.  Q and K fragments come from shared memory by
// ldmatrix, V by ldmatrix.trans; operands arrive by 16-byte cp.async.
//
// attn_fwd_tile_kernel (N <= 64, every 224-px Swin and V2 window 8): one
//   block per (window, head, chunk of images), 4 warps over the window's (up
//   to) 64 rows, one key tile: the softmax is exact in one pass.  The block
//   stages, once, the window's token table and the head's bias with the
//   window's shift mask, -inf past N, in fragment order (a float4 per lane
//   and 8-key tile), in log2 units or divided by scale as S's initial
//   accumulators (kFoldBias), so the logits of an image cost one FFMA per
//   element; then it walks its images with the next image's q, k, v
//   in flight (two stages) while the current one is computed.
// attn_fwd_stream_kernel (N > 64: windows 9 ... 24, Video Swin's (8, 7, 7)
//   of N = 392; and the generic head_dim at any N): one block per (image,
//   window, head, 64 query rows), key tiles (64 keys; 32 at head_dim 64,
//   16 at 128) streamed through two cp.async stages with the online
//   softmax (running max with -inf guards, rescaled sums and outputs, all in
//   registers); the bias is read in the fragment layout from global memory
//   (L2-resident) and the mask from per-row / per-key shift regions.
//
// Swin V2 (kV2): the scores come from the raw q / k rows (rounded once, as
// loaded) and are scaled in float32 by head_scale / (||q|| ||k||): the
// inverse norms are computed per image from the staged rows.
//
// Outputs as the SIMT kernel: O normalised, stored as 16-byte rows of
// (B, [T,] H, W, C) through the warp's (consumed) Q rows in shared memory, and the
// per-row log-sum-exp (natural log) of every row < N.  fp32 / fp64 keep the
// SIMT kernel (fwd_kernel.cuh).
//
// Compile-time layout: every shared-memory offset and stride below is a
// constant of the traits; the block decode and the token tables use the
// host's FastDiv multipliers (no division in the kernels).
//
// ATen-free (see cuda_compat.h).
#pragma once

#include "../../swin_geometry.h"
#include "bias_table_kernels.cuh"
#include "fwd_kernel.cuh"
#include "kernel_traits.h"
#include "mma.h"
#include "params.h"
#include "tile_io.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {

template <typename T_, int kD_, bool kV2_>
struct FwdMmaTraits {
  using T = T_;
  static_assert(sizeof(T) == 2, "bf16 / fp16");
  static constexpr int kD = kD_;      // head_dim, or 0: any head_dim <= kMaxHeadDim at run time
  static constexpr bool kV2 = kV2_;   // Swin V2 cosine attention
  static constexpr int kDPad = kD ? kD : kMaxHeadDim;  // columns of the staged rows (zeros past d)
  static_assert(kDPad % 16 == 0, "tensor-core head_dims are multiples of 16");
  static constexpr int kWarps = 4;                      // launched always; idle rows masked
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = kRowTile * kWarps;       // 64 query rows per block
  static constexpr int kKeys = 64;                      // keys per tile
  static constexpr int kNT = kKeys / 8;                 // 8-key n-tiles of S
  static constexpr int kKS = kDPad / 16;                // k-steps of S = Q K^T
  // The one-tile kernel's bias tile is the initial value of S = q.k: (bias +
  // mask) / scale, the logits S * scale * log2(e) in the softmax's FFMA (36
  // warp-instructions fewer per warp and image at head_dim 32; the launcher
  // requires tile_folds_bias).  Not V2 (cosine logits), nor head_dim 64 /
  // 128: fp16 at head_dim 64 spills (8 B at 128 registers) with it.
  static constexpr bool kFoldBias = !kV2 && kDPad <= 32;
  static constexpr int kDN = kDPad / 8;                 // 8-column n-tiles of O
  static constexpr int kKV = kKeys / 16;                // k-steps of O += P V
  static constexpr int kLd = kDPad + 8;                 // row stride (elements): 16-byte rows, and
                                                        // 8 rows in 8 distinct 16-byte bank groups
  static constexpr int kRowBytes = kLd * 2;
  static constexpr int kTileBytes = 64 * kRowBytes;     // 64 rows (queries or keys)
  static constexpr int kVecs = kDPad / 8;               // 16-byte vectors of a staged row
  static constexpr int kMinBlocks = 4;                  // <= 128 registers: 25% occupancy on sm_90
  // One-tile kernel: O columns per pass (accumulator registers: 4 per 8 columns).
  static constexpr int kOChunk = kDPad > 64 ? 64 : kDPad;

  // ---- attn_fwd_tile_kernel (N <= 64): bytes of dynamic shared memory
  static constexpr int kStages = kDPad <= 64 ? 2 : 1;   // images in flight
  static constexpr int kBiasBytes = kWarps * kNT * 32 * 16;
  static constexpr int kTileTok = 0;                    // int[64]: token of each row, -1: padding / >= N
  static constexpr int kTileReg = kTileTok + 256;       // int[64]: shift region of each row
  static constexpr int kTileBias = kTileReg + 256;      // float4 [warp][n-tile][lane]
  static constexpr int kTileStage = kTileBias + kBiasBytes;  // [stage][q, k, v] tiles
  static constexpr int kStageBytes = 3 * kTileBytes;
  static constexpr int kTileInv = kTileStage + kStages * kStageBytes;  // V2: float 1/||q||[64], 1/||k||[64]
  static constexpr int kTileSmem = kTileInv + (kV2 ? 512 : 0);
  // Gather slots: 16-byte chunks of the q, k, v tiles per thread.
  static constexpr int kTileSlots = 3 * 64 * kVecs / kThreads;
  static constexpr bool kCacheTileSlots = kTileSlots <= 6;  // source offsets held in registers

  // ---- attn_fwd_stream_kernel (N > 64): the running O of the whole head_dim
  // stays in registers, so larger head_dims take smaller key tiles (S: 4
  // registers per 8 keys).  32 keys at head_dim 32 (64 until 2026-12-04):
  // a 64-key tile's scores left no registers for the bias loads issued
  // together; 64 at head_dim 16 (its gather needs 128 chunks a tile).
  static constexpr int kStrKeys = kDPad >= 128 ? 16 : (kDPad >= 32 ? 32 : 64);
  static constexpr int kStrNT = kStrKeys / 8, kStrKV = kStrKeys / 16;
  static constexpr int kKVTileBytes = kStrKeys * kRowBytes;
  static constexpr int kStrTokQ = 0;                    // int[64]: token of each query row
  static constexpr int kStrRegQ = kStrTokQ + 256;       // int[64]: region of each query row
  static constexpr int kStrRegK = kStrRegQ + 256;       // int[2][kStrKeys]: region of each key of a stage
  static constexpr int kStrQ = kStrRegK + 512;          // q tile
  static constexpr int kStrKVOff = kStrQ + kTileBytes;  // [stage][k, v] tiles
  static constexpr int kStrInv = kStrKVOff + 4 * kKVTileBytes;  // V2: 1/||q||[64], 1/||k||[2][kStrKeys]
  static constexpr int kStrSmem = kStrInv + (kV2 ? 768 : 0);
  // After it (AttnParams::win_tabs): every key's token, shift region and
  // relative-position code, int [3][keys] (keys = the window's key tiles x
  // kStrKeys), formed once per block; then (a table bias) the head's column
  // of the relative-position table in log2 units.
  // Not at head_dim 128, whose 64 float32 accumulators of O leave no
  // registers for them, nor at head_dim 16, whose 64-key tiles' table loads
  // do not fit (ptxas spills): their tiles form their own tables.
  static constexpr bool kStrTabs = kDPad < 128 && kDPad > 16;
  static constexpr int str_tabs_bytes(int keys) { return align_up(3 * keys * 4, kSmemAlign); }
  static constexpr int str_table_bytes(int bias_rows) { return align_up(bias_rows * 4, kSmemAlign); }
  static constexpr int kStrSlots = 2 * kStrKeys * kVecs / kThreads;  // k, v chunks per thread and key tile
  static constexpr int kQSlots = 64 * kVecs / kThreads;              // q chunks per thread

  static_assert(kThreads % kVecs == 0 && (kStrKeys * kVecs) % kThreads == 0, "gather slots");
  static_assert(kTileBytes % 128 == 0 && kKVTileBytes % 128 == 0 && kBiasBytes % 128 == 0, "aligned buffers");
};

constexpr uint32_t kNoSlot = 0xffffffffu;

// ------------------------------------------------------------------ gathers

// Row r, part, 16-byte column cv of gather slot s of thread tid: chunk e =
// tid + kThreads s of a [parts][kRows][kVecs] tile set (compile-time shifts).
template <class Tr, int kRows = 64>
struct Slot {
  static constexpr int kPerPart = kRows * Tr::kVecs / Tr::kThreads;  // slots per part
  __device__ __forceinline__ static int part(int s) { return s / kPerPart; }
  __device__ __forceinline__ static int row(int tid, int s) {
    return tid / Tr::kVecs + (s % kPerPart) * (Tr::kThreads / Tr::kVecs);
  }
  __device__ __forceinline__ static int col(int tid) { return tid % Tr::kVecs; }
  // Byte offset of the slot's chunk in its tile set (parts kRows rows apart).
  __device__ __forceinline__ static int dst(int tid, int s) {
    return part(s) * kRows * Tr::kRowBytes + row(tid, s) * Tr::kRowBytes + col(tid) * 16;
  }
};

// Source of a 16-byte chunk of qkv in 16-byte units from the image's base,
// or kNoSlot (padding token, or a column past head_dim): row token tok,
// operand part (0 q, 1 k, 2 v), column vector cv of dv.  C8 = C / 8, hd8 =
// h d / 8 (the vector path has d % 8 == 0).  The glue checks that an image
// of qkv has fewer than 2^32 - 1 16-byte vectors.
__device__ __forceinline__ uint32_t qkv_chunk16(int tok, int part, int cv, int dv, int C8, int hd8) {
  if (tok < 0 || cv >= dv) return kNoSlot;
  return static_cast<uint32_t>(tok) * static_cast<uint32_t>(3 * C8) + static_cast<uint32_t>(part * C8 + hd8 + cv);
}
// The same for a chunk of out (B, H, W, C).
__device__ __forceinline__ uint32_t out_chunk16(int tok, int cv, int dv, int C8, int hd8) {
  if (tok < 0 || cv >= dv) return kNoSlot;
  return static_cast<uint32_t>(tok) * static_cast<uint32_t>(C8) + static_cast<uint32_t>(hd8 + cv);
}

// The elements of `parts` staged tiles (first operand first_part) that no
// per-image gather writes: rows >= n and rows of padding tokens (tok < 0)
// get the pad vector (null: zeros) in columns < d, every row zeros in
// columns [d, dp).  A warp per row, lanes over columns.
template <class Tr, int kRows = 64>
__device__ __forceinline__ void prefill_rows(unsigned char* tiles, const typename Tr::T* pad, const int* tok,
                                             int first_part, int parts, int n, int d, int dp, int C, int hd) {
  using T = typename Tr::T;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const T zero = zero_value<T>();
  for (int pr = warp; pr < parts * kRows; pr += Tr::kWarps) {
    const int part = pr / kRows, r = pr % kRows;
    const bool real = r < n && tok[r] >= 0;
    const T* src = (r < n && pad != nullptr) ? pad + (first_part + part) * C + hd : nullptr;
    T* dst = reinterpret_cast<T*>(tiles + (part * kRows + r) * Tr::kRowBytes);
    for (int c = lane; c < dp; c += 32) {
      if (real && c < d) continue;
      dst[c] = (src != nullptr && c < d) ? src[c] : zero;
    }
  }
}

// Scalar gather (head_dim not a multiple of 8, or storage not 16-byte
// aligned): the real rows (r < n, tok >= 0) of `parts` operands, columns < d,
// element by element.  A warp per row.
template <class Tr, int kRows = 64>
__device__ __forceinline__ void gather_rows_scalar(unsigned char* tiles, const typename Tr::T* img, const int* tok,
                                                   int first_part, int parts, int n, int d, int C, int hd) {
  using T = typename Tr::T;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int pr = warp; pr < parts * kRows; pr += Tr::kWarps) {
    const int part = pr / kRows, r = pr % kRows;
    const int t = r < n ? tok[r] : -1;
    if (t < 0) continue;
    const T* src = img + static_cast<int64_t>(t) * (3 * C) + (first_part + part) * C + hd;
    T* dst = reinterpret_cast<T*>(tiles + (part * kRows + r) * Tr::kRowBytes);
    for (int c = lane; c < d; c += 32) dst[c] = src[c];
  }
}

// 1 / max(||row||, 1e-12) (F.normalize's rule) of a staged row (zeros in
// [d, dp), nothing staged past dp), in float32 from the rounded elements:
// Swin V2's inverse norms.
template <class Tr>
__device__ __forceinline__ float staged_row_inv_norm(const unsigned char* row, int dp) {
  using T = typename Tr::T;
  float ss = 0.f;
#pragma unroll
  for (int cv = 0; cv < Tr::kVecs; ++cv) {
    if (Tr::kD == 0 && cv * 8 >= dp) break;
    const uint4 u = *reinterpret_cast<const uint4*>(row + cv * 16);
    T v[8];
    memcpy(static_cast<void*>(v), &u, 16);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float x = to_acc(v[e]);
      ss = fmaf(x, x, ss);
    }
  }
  const float norm = sqrtf(ss);
  return 1.0f / (norm > 1e-12f ? norm : 1e-12f);
}

// ------------------------------------------------------------------ warp tile math

// S (16 x 64: fragments s[n-tile][4]) = Q_w K^T of one key tile.  Q rows of
// this warp (sQw) and K rows (sK, n-major) in shared memory, row stride
// kLd.  Q by ldmatrix.x4 (matrices: rows 0-7 | 8-15 x columns 0-7 | 8-15 of a
// k-step), K by ldmatrix.x4 (keys nt*8 + 0..7, two k-steps).  Every n-tile is
// computed (keys past N are zero rows, their logits -inf: a branch per
// n-tile would cost more than the two mma it saves); the generic kernel skips
// the k-steps at or past dp (warp-uniform).
// kAccumulate: S is added to s as the caller set it (the tile kernel's
// bias tile), not to zeros.
template <class Tr, int kNT, bool kAccumulate = false>
__device__ __forceinline__ void qk_tile(float (&s)[kNT][4], const unsigned char* sQw, const unsigned char* sK,
                                        int dp, int lane) {
  using T = typename Tr::T;
  if constexpr (!kAccumulate) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) s[nt][r] = 0.f;
  }
  const unsigned char* qa_row = sQw + ((lane & 7) + ((lane >> 3) & 1) * 8) * Tr::kRowBytes + (lane >> 4) * 16;
  const unsigned char* kb_row = sK + (lane & 7) * Tr::kRowBytes + (lane >> 3) * 16;
#pragma unroll
  for (int kk = 0; kk < Tr::kKS; kk += 2) {
    if (Tr::kD == 0 && kk * 16 >= dp) break;  // generic head_dim: columns past dp are never staged
    // Two k-steps per K ldmatrix.x4, or one (head_dim 16, or the generic
    // kernel's last k-step of an odd count).
    const bool pair = Tr::kKS % 2 == 0 && (Tr::kD != 0 || kk * 16 + 16 < dp);
    uint32_t qa0[4], qa1[4];
    ldsm<4>(qa0, qa_row + kk * 32);
    if (pair) ldsm<4>(qa1, qa_row + kk * 32 + 32);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      if (pair) {
        uint32_t kb[4];
        ldsm<4>(kb, kb_row + nt * 8 * Tr::kRowBytes + kk * 32);
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
        mma_16816<T>(s[nt], qa0, b0, s[nt]);
        mma_16816<T>(s[nt], qa1, b1, s[nt]);
      } else {
        uint32_t kb[2];
        ldsm<2>(kb, kb_row + nt * 8 * Tr::kRowBytes + kk * 32);
        mma_16816<T>(s[nt], qa0, kb, s[nt]);
      }
    }
  }
}

// O columns [c0, c0 + 8 kDT) (fragments o[n-tile][4]) += P V of one key
// tile: P as the A fragments pa[key k-step][4], V rows (keys, k-major) by
// ldmatrix.x4.trans (matrices: keys 0-7 | 8-15 of the k-step x columns
// c0 + dn*8 | + 8: the B fragments of two n-tiles).  The generic kernel skips
// the n-tiles at or past dp.
template <class Tr, int kKV, int kDT>
__device__ __forceinline__ void pv_tile(float (&o)[kDT][4], const uint32_t (&pa)[kKV][4], const unsigned char* sV,
                                        int c0, int dp, int lane) {
  using T = typename Tr::T;
  const unsigned char* vb_row =
      sV + ((lane & 7) + ((lane >> 3) & 1) * 8) * Tr::kRowBytes + (lane >> 4) * 16 + c0 * 2;
#pragma unroll
  for (int kv = 0; kv < kKV; ++kv) {
#pragma unroll
    for (int dn = 0; dn < kDT; dn += 2) {
      if (Tr::kD == 0 && c0 + dn * 8 >= dp) break;
      uint32_t vb[4];
      ldsm<4, true>(vb, vb_row + kv * 16 * Tr::kRowBytes + dn * 16);
      const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
      mma_16816<T>(o[dn], pa[kv], b0, o[dn]);
      mma_16816<T>(o[dn + 1], pa[kv], b1, o[dn + 1]);
    }
  }
}

// exp2 by the MUFU.EX2 approximation (2 ulp; flushes denormal results to
// 0, harmless for probabilities <= 1), and log2 likewise: the accurate
// exp2f / log2f add a range reduction around every MUFU.
template <bool kExp2>  // one MUFU op by its PTX name (the harness: libm's)
__device__ __forceinline__ float mufu_approx(float x) {
#if defined(__CUDACC__)
  float y;
  if constexpr (kExp2) {
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  } else {
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  }
  return y;
#else
  return kExp2 ? exp2f(x) : log2f(x);
#endif
}
__device__ __forceinline__ float exp2_fast(float x) { return mufu_approx<true>(x); }
__device__ __forceinline__ float log2_fast(float x) { return mufu_approx<false>(x); }

// Reductions over the 4 lanes of a row (lanes 4g .. 4g + 3).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
// A max that is -inf only for a row with no finite logit: exp2 then uses 0.
__device__ __forceinline__ float finite_or_zero(float m) { return m == neg_inf<float>() ? 0.f : m; }

// Row max of the lane's elements of rows g (r = 0, 1) and g + 8 (r = 2, 3).
template <int kNT>
__device__ __forceinline__ void tile_row_max(const float (&s)[kNT][4], float& mx0, float& mx1) {
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
    mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
  }
}

// p = exp2(x c - m) in place (m already -inf guarded; c = 1: x holds the
// log2-unit logits, else the scale's c = scale log2(e), one FFMA), the lane's
// row sums added to l0 / l1, and P packed into the A fragments of P V: key
// k-step kv is n-tiles 2kv, 2kv+1, so a0 = (g, 2t..), a1 = (g+8, 2t..),
// a2 = (g, 8+2t..), a3 = (g+8, 8+2t..) -- the accumulator layout of S is the
// A layout of P.
template <class Tr, int kNT>
__device__ __forceinline__ void exp_pack(float (&s)[kNT][4], float m0, float m1, float& l0, float& l1,
                                         uint32_t (&pa)[kNT / 2][4], float c = 1.f) {
  using T = typename Tr::T;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    s[nt][0] = exp2_fast(fmaf(s[nt][0], c, -m0));
    s[nt][1] = exp2_fast(fmaf(s[nt][1], c, -m0));
    s[nt][2] = exp2_fast(fmaf(s[nt][2], c, -m1));
    s[nt][3] = exp2_fast(fmaf(s[nt][3], c, -m1));
    l0 += s[nt][0] + s[nt][1];
    l1 += s[nt][2] + s[nt][3];
  }
#pragma unroll
  for (int kv = 0; kv < kNT / 2; ++kv) {
    pa[kv][0] = pack2<T>(s[2 * kv][0], s[2 * kv][1]);
    pa[kv][1] = pack2<T>(s[2 * kv][2], s[2 * kv][3]);
    pa[kv][2] = pack2<T>(s[2 * kv + 1][0], s[2 * kv + 1][1]);
    pa[kv][3] = pack2<T>(s[2 * kv + 1][2], s[2 * kv + 1][3]);
  }
}

// Output chunks (16 bytes) of a warp's 16 rows, per lane.
template <class Tr>
struct OutChunks {
  static constexpr int kTotal = kRowTile * Tr::kVecs;
  static constexpr int kPerLane = (kTotal + 31) / 32;
  static constexpr bool kCache = kPerLane <= 2;  // offsets held in registers
  __device__ __forceinline__ static int row(int lane, int u) { return (lane + 32 * u) / Tr::kVecs; }
  __device__ __forceinline__ static int col(int lane, int u) { return (lane + 32 * u) % Tr::kVecs; }
  __device__ __forceinline__ static bool exists(int lane, int u) { return kTotal % 32 == 0 || lane + 32 * u < kTotal; }
};

// Epilogue of a warp, in three steps.  finish_rows: the row sums over the
// quad (l0 / l1: the lanes' partial sums), the lse of the rows < N (one lane
// per row; m0 / m1: the guarded row maxima) and the factors 1 / l.
__device__ __forceinline__ void finish_rows(const AttnParams& p, float m0, float m1, float l0, float l1, int wrow0,
                                            int64_t lse_row0, int lane, float& i0, float& i1) {
  const int N = p.g.N;
  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  const int g = lane >> 2, t = lane & 3;
  if (t == 0) {
    float* lse = static_cast<float*>(p.lse_out) + lse_row0;
    if (wrow0 + g < N) lse[g] = (m0 + log2_fast(l0)) * static_cast<float>(kLn2);
    if (wrow0 + g + 8 < N) lse[g + 8] = (m1 + log2_fast(l1)) * static_cast<float>(kLn2);
  }
  i0 = __fdividef(1.0f, l0);  // l >= 1: the row max contributes 1
  i1 = __fdividef(1.0f, l1);
}

// stage_o: O columns [c0, c0 + 8 kDT) times 1 / l, packed into the warp's
// (consumed) Q rows of shared memory (the caller has synchronised the warp
// after its last ldmatrix of them) -- rows g and g + 8 of the lane's quad
// only where keep0 / keep1: the one-tile forward keeps the Q rows no image
// gathers (padding tokens: the pad vector's q, prefilled once per block),
// which its next images in the stage read again.
template <class Tr, int kDT>
__device__ __forceinline__ void stage_o(const float (&o)[kDT][4], float i0, float i1, unsigned char* sQw, int c0,
                                        int lane, bool keep0 = true, bool keep1 = true) {
  using T = typename Tr::T;
  const int g = lane >> 2, t = lane & 3;
  unsigned char* r0 = sQw + g * Tr::kRowBytes + c0 * 2 + t * 4;
#pragma unroll
  for (int dn = 0; dn < kDT; ++dn) {
    if (keep0) *reinterpret_cast<uint32_t*>(r0 + dn * 16) = pack2<T>(o[dn][0] * i0, o[dn][1] * i0);
    if (keep1) *reinterpret_cast<uint32_t*>(r0 + 8 * Tr::kRowBytes + dn * 16) = pack2<T>(o[dn][2] * i1, o[dn][3] * i1);
  }
}

// store_staged: the staged rows whose token is real, as 16-byte stores (the
// lane's chunk offsets cached in out_off when kCachedOffsets) -- or element
// stores on the scalar path.
template <class Tr, bool kCachedOffsets>
__device__ __forceinline__ void store_staged(const AttnParams& p, const unsigned char* sQw, const int* tok_w,
                                             typename Tr::T* out_img, const uint32_t* out_off, int d, int hd,
                                             int lane) {
  using T = typename Tr::T;
  using OC = OutChunks<Tr>;
  __syncwarp();
  if (p.vec) {
    uint4* out16 = reinterpret_cast<uint4*>(out_img);
    const int C8 = p.C >> 3, hd8 = hd >> 3, dv = d >> 3;
#pragma unroll
    for (int u = 0; u < OC::kPerLane; ++u) {
      if (!OC::exists(lane, u)) break;
      const int r = OC::row(lane, u), cv = OC::col(lane, u);
      const uint32_t off = kCachedOffsets ? out_off[u] : out_chunk16(tok_w[r], cv, dv, C8, hd8);
      if (off != kNoSlot) swin_stg16(out16 + off, *reinterpret_cast<const uint4*>(sQw + r * Tr::kRowBytes + cv * 16));
    }
  } else {
    // sass-dyn: skip-begin
    for (int r = 0; r < kRowTile; ++r) {
      const int tk = tok_w[r];
      if (tk < 0) continue;
      const T* src = reinterpret_cast<const T*>(sQw + r * Tr::kRowBytes);
      T* dst = out_img + static_cast<int64_t>(tk) * p.C + hd;
      for (int c = lane; c < d; c += 32) dst[c] = src[c];
    }
    // sass-dyn: skip-end
  }
}

// The launch's head_dim, and the staged width (a multiple of 16: the k-steps
// of Q K^T) of the generic kernel; both compile-time for a specialised one.
template <class Tr>
__device__ __forceinline__ int fwd_head_dim(const AttnParams& p) {
  return Tr::kD ? Tr::kD : p.d;
}
template <class Tr>
__device__ __forceinline__ int fwd_staged_dim(int d) {
  return Tr::kD ? Tr::kD : (d + 15) & ~15;
}

// ------------------------------------------------------------------ N <= 64: one key tile, images in flight

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) attn_fwd_tile_kernel(const AttnParams p) {
  using T = typename Tr::T;
  using SL = Slot<Tr>;
  using OC = OutChunks<Tr>;
  constexpr int kNT = Tr::kNT, kKV = Tr::kKV;
  static_assert(Tr::kD != 0, "the generic head_dim streams (attn_fwd_stream_kernel)");
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const Geom& g = p.g;
  const int N = g.N, C = p.C, d = fwd_head_dim<Tr>(p), dp = fwd_staged_dim<Tr>(d);

  // blockIdx.x = (chunk * nW + win) * heads + h
  int cw, h, chunk, win;
  p.div_heads.divmod(blockIdx.x, cw, h);
  p.div_nW.divmod(cw, chunk, win);
  const int hd = h * d;

  int* tok = reinterpret_cast<int*>(smem + Tr::kTileTok);
  int* reg = reinterpret_cast<int*>(smem + Tr::kTileReg);
  float4* sbias = reinterpret_cast<float4*>(smem + Tr::kTileBias);
  unsigned char* stages = smem + Tr::kTileStage;
  const T* qkv = static_cast<const T*>(p.qkv);
  const T* pad = static_cast<const T*>(p.pad);

  // ---- once per block: token table, the tiles' constant elements, bias + mask
  build_token_table(g, win, 0, 64, tok, reg);
  __syncthreads();
  const int C8 = C >> 3, hd8 = hd >> 3, dv = d >> 3;
  // This thread's gather slots (the token table is fixed for the block):
  // source offsets of the real chunks, kNoSlot for the rest.
  uint32_t src_off[Tr::kCacheTileSlots ? Tr::kTileSlots : 1];
  if constexpr (Tr::kCacheTileSlots) {
#pragma unroll
    for (int s = 0; s < Tr::kTileSlots; ++s)
      src_off[s] = qkv_chunk16(tok[SL::row(tid, s)], SL::part(s), SL::col(tid), dv, C8, hd8);
  }
  auto slot_src = [&](int s) {
    if constexpr (Tr::kCacheTileSlots) {
      return src_off[s];
    } else {
      return qkv_chunk16(tok[SL::row(tid, s)], SL::part(s), SL::col(tid), dv, C8, hd8);
    }
  };
  if (p.vec) {
    // The chunks no image writes, in every stage: padding tokens get the pad
    // vector (or zeros), rows past N and columns past head_dim zeros.
    const uint4* pad16 = reinterpret_cast<const uint4*>(pad);
#pragma unroll
    for (int s = 0; s < Tr::kTileSlots; ++s) {
      if (slot_src(s) != kNoSlot) continue;
      const int r = SL::row(tid, s), cv = SL::col(tid);
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (r < N && cv < dv && pad16 != nullptr) v = swin_ldg16(pad16 + SL::part(s) * C8 + hd8 + cv);
#pragma unroll
      for (int st = 0; st < Tr::kStages; ++st)
        *reinterpret_cast<uint4*>(stages + st * Tr::kStageBytes + SL::dst(tid, s)) = v;
    }
  } else {
#pragma unroll
    for (int st = 0; st < Tr::kStages; ++st)
      prefill_rows<Tr>(stages + st * Tr::kStageBytes, pad, tok, 0, 3, N, d, dp, C, hd);  // sass-dyn: skip
  }
  {
    // (bias + mask) * bmul of (row, key) in the accumulator layout, -inf
    // for keys >= N, 0 for rows >= N: entry q = (warp, n-tile, lane) holds
    // rows g, g + 8 x keys 2t, 2t + 1 of that warp's rows and that n-tile.
    // The shift mask only in the last window along a shifted axis (window_mixed).
    // bmul: 1 / scale with kFoldBias (the tile is the initial value of
    // S = q.k), else log2(e) (the tile is added to the log2-unit logits).
    const float* bias = static_cast<const float*>(p.bias) + static_cast<int64_t>(h) * N * N;
    const float l2e = Tr::kFoldBias ? p.inv_scale : static_cast<float>(kLog2e), ninf = neg_inf<float>();
    const bool mixed = window_mixed(g, window_origin(g, win));
    const float mask_value = mixed ? kShiftMaskValue : 0.f;
    // Thread (warp, lane) fills the entries of n-tiles warp + kWarps h for
    // every warp-row block w: rows w*16 + g (+8), keys (warp + 4h)*8 + 2t (+1).
    static_assert(kNT == 2 * Tr::kWarps, "two n-tiles per thread and row block");
    const int gl = AccLayout::row(lane, 0), tl = AccLayout::col(lane, 0);
#pragma unroll
    for (int hn = 0; hn < 2; ++hn) {
      const int nt = warp + Tr::kWarps * hn;
      const int j0 = nt * 8 + tl, j1 = j0 + 1;
      const bool jv0 = j0 < N, jv1 = j1 < N;
      const int rj0 = reg[j0], rj1 = reg[j1];
#pragma unroll
      for (int w = 0; w < Tr::kWarps; ++w) {
        const int i0 = w * kRowTile + gl, i1 = i0 + 8;
        const bool iv0 = i0 < N, iv1 = i1 < N;
        const float* b0 = bias + i0 * N;
        const float* b1 = bias + i1 * N;
        float x00 = (iv0 && jv0) ? b0[j0] : 0.f, x01 = (iv0 && jv1) ? b0[j1] : 0.f;
        float x10 = (iv1 && jv0) ? b1[j0] : 0.f, x11 = (iv1 && jv1) ? b1[j1] : 0.f;
        if (mixed) {  // window-uniform
          const int ri0 = reg[i0], ri1 = reg[i1];
          x00 += ri0 != rj0 ? mask_value : 0.f;
          x01 += ri0 != rj1 ? mask_value : 0.f;
          x10 += ri1 != rj0 ? mask_value : 0.f;
          x11 += ri1 != rj1 ? mask_value : 0.f;
        }
        // AccLayout: r = 0 (g, 2t), 1 (g, 2t+1), 2 (g+8, 2t), 3 (g+8, 2t+1)
        sbias[(w * kNT + nt) * 32 + lane] = make_float4(jv0 ? x00 * l2e : ninf, jv1 ? x01 * l2e : ninf,
                                                        jv0 ? x10 * l2e : ninf, jv1 ? x11 * l2e : ninf);
      }
    }
  }
  const int wrow0 = warp * kRowTile;
  // The lane's rows g and g + 8 that hold a real token take O in the stage:
  // the others keep what the prefill put there for every image of the block.
  const bool real0 = tok[wrow0 + (lane >> 2)] >= 0, real1 = tok[wrow0 + (lane >> 2) + 8] >= 0;
  uint32_t out_off[OC::kCache ? OC::kPerLane : 1];
  if constexpr (OC::kCache) {
#pragma unroll
    for (int u = 0; u < OC::kPerLane; ++u)
      out_off[u] = OC::exists(lane, u) ? out_chunk16(tok[wrow0 + OC::row(lane, u)], OC::col(lane, u), dv, C8, hd8)
                                       : kNoSlot;
  }

  // Issues image b's q, k, v chunks into stage st (one cp.async group).
  auto issue = [&](int b, int st) {
    const uint4* img16 = reinterpret_cast<const uint4*>(qkv + static_cast<int64_t>(b) * p.img_qkv);
    unsigned char* dst = stages + st * Tr::kStageBytes;
#pragma unroll
    for (int s = 0; s < Tr::kTileSlots; ++s) {
      const uint32_t off = slot_src(s);
      if (off != kNoSlot) cp_async16(dst + SL::dst(tid, s), img16 + off);
    }
    cp_async_commit();
  };

  const int b0 = chunk * p.chunk;
  const int nimg = min(p.chunk, p.B - b0);
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  [[maybe_unused]] float* inv = reinterpret_cast<float*>(smem + Tr::kTileInv);  // V2: 1/||q|| [64], 1/||k|| [64]
  [[maybe_unused]] const float sh_log2 =
      Tr::kV2 ? static_cast<const float*>(p.head_scale)[h] * static_cast<float>(kLog2e) : 0.f;
  __syncthreads();  // the prefill is done before any copy lands
  if (p.vec) issue(b0, 0);
  for (int it = 0; it < nimg; ++it) {  // sass-dyn: trips=images
    const int b = b0 + it;
    const int cur = Tr::kStages == 2 ? (it & 1) : 0;
    unsigned char* st = stages + cur * Tr::kStageBytes;
    if (p.vec) {
      if (Tr::kStages == 2 && it + 1 < nimg) {
        issue(b + 1, cur ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      gather_rows_scalar<Tr>(st, qkv + static_cast<int64_t>(b) * p.img_qkv, tok, 0, 3, N, d, C, hd);  // sass-dyn: skip
    }
    __syncthreads();  // image b's tiles are complete
    if constexpr (Tr::kV2) {
      inv[tid] = staged_row_inv_norm<Tr>(st + (tid >> 6) * Tr::kTileBytes + (tid & 63) * Tr::kRowBytes, dp);
      __syncthreads();
    }
    if (wrow0 < N) {  // warp-uniform: warps past the window only stage and wait
      unsigned char* sQw = st + wrow0 * Tr::kRowBytes;
      float s[kNT][4];
      const float4* bw = sbias + warp * kNT * 32 + lane;
      float mx0 = neg_inf<float>(), mx1 = neg_inf<float>();
      if constexpr (Tr::kFoldBias) {  // S = (bias + mask) / scale + q.k
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float4 bm = bw[nt * 32];
          s[nt][0] = bm.x;
          s[nt][1] = bm.y;
          s[nt][2] = bm.z;
          s[nt][3] = bm.w;
        }
      }
      qk_tile<Tr, kNT, Tr::kFoldBias>(s, sQw, st + Tr::kTileBytes, dp, lane);
      if constexpr (Tr::kV2) {  // head_scale q.k / (||q|| ||k||), in float32, plus the bias
        const float rf0 = sh_log2 * inv[wrow0 + (lane >> 2)], rf1 = sh_log2 * inv[wrow0 + (lane >> 2) + 8];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float4 bm = bw[nt * 32];
          const float2 cf = *reinterpret_cast<const float2*>(inv + 64 + nt * 8 + 2 * (lane & 3));
          s[nt][0] = fmaf(s[nt][0] * cf.x, rf0, bm.x);
          s[nt][1] = fmaf(s[nt][1] * cf.y, rf0, bm.y);
          s[nt][2] = fmaf(s[nt][2] * cf.x, rf1, bm.z);
          s[nt][3] = fmaf(s[nt][3] * cf.y, rf1, bm.w);
        }
      } else if constexpr (!Tr::kFoldBias) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float4 bm = bw[nt * 32];
          s[nt][0] = fmaf(s[nt][0], scale_log2, bm.x);
          s[nt][1] = fmaf(s[nt][1], scale_log2, bm.y);
          s[nt][2] = fmaf(s[nt][2], scale_log2, bm.z);
          s[nt][3] = fmaf(s[nt][3], scale_log2, bm.w);
        }
      }
      // kFoldBias: the row maxima of S, then of the logits (scale > 0: the
      // same keys); p = exp2(S scale log2(e) - m), one FFMA.  Else s holds
      // the log2-unit logits (c = 1).
      const float c = Tr::kFoldBias ? scale_log2 : 1.f;
      tile_row_max<kNT>(s, mx0, mx1);
      const float m0 = finite_or_zero(quad_max(mx0) * c), m1 = finite_or_zero(quad_max(mx1) * c);
      float l0 = 0.f, l1 = 0.f;
      uint32_t pa[kKV][4];
      exp_pack<Tr, kNT>(s, m0, m1, l0, l1, pa, c);
      float i0, i1;
      finish_rows(p, m0, m1, l0, l1, wrow0, ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * N + wrow0, lane,
                  i0, i1);
      __syncwarp();  // every lane's ldmatrix of the Q rows is done: they take O
      // O = P V / l, kOChunk columns at a time (head_dim 128: 32 accumulator registers, not 64)
      constexpr int kDT = Tr::kOChunk / 8;
#pragma unroll
      for (int c0 = 0; c0 < Tr::kDPad; c0 += Tr::kOChunk) {
        if (Tr::kD == 0 && c0 >= dp) break;
        float o[kDT][4];
#pragma unroll
        for (int dn = 0; dn < kDT; ++dn)
#pragma unroll
          for (int r = 0; r < 4; ++r) o[dn][r] = 0.f;
        pv_tile<Tr, kKV, kDT>(o, pa, st + 2 * Tr::kTileBytes, c0, dp, lane);
        stage_o<Tr, kDT>(o, i0, i1, sQw, c0, lane, real0, real1);
      }
      store_staged<Tr, OC::kCache>(p, sQw, tok + wrow0, static_cast<T*>(p.out) + static_cast<int64_t>(b) * p.img_out,
                                   out_off, d, hd, lane);
    }
    __syncthreads();  // stage `cur` is consumed before it is refilled
    if (Tr::kStages == 1 && p.vec && it + 1 < nimg) issue(b + 1, 0);
  }
}

// ------------------------------------------------------------------ N > 64: streamed key tiles, online softmax

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) attn_fwd_stream_kernel(const AttnParams p) {
  using T = typename Tr::T;
  constexpr int kKeys = Tr::kStrKeys, kNT = Tr::kStrNT, kKV = Tr::kStrKV, kDN = Tr::kDN;
  using SQ = Slot<Tr, 64>;      // q tile slots
  using SKV = Slot<Tr, kKeys>;  // k, v tile slots
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const Geom& g = p.g;
  const int N = g.N, C = p.C, d = fwd_head_dim<Tr>(p), dp = fwd_staged_dim<Tr>(d);

  // blockIdx.x = ((b * nW + win) * heads + h) * n_row_blocks + rb
  int bwh, rb, bw, h, b, win;
  p.div_rb.divmod(blockIdx.x, bwh, rb);
  p.div_heads.divmod(bwh, bw, h);
  p.div_nW.divmod(bw, b, win);
  const WinOrigin wo = window_origin(g, win);
  const int hd = h * d, row0 = rb * Tr::kRows;

  int* tokq_own = reinterpret_cast<int*>(smem + Tr::kStrTokQ);
  int* regq_own = reinterpret_cast<int*>(smem + Tr::kStrRegQ);
  const int* tokq = tokq_own;  // (win_tabs: the window table's rows)
  const int* regq = regq_own;
  int* regk = reinterpret_cast<int*>(smem + Tr::kStrRegK);  // [stage][kKeys]; the scalar path: tokens first
  unsigned char* sQ = smem + Tr::kStrQ;
  unsigned char* sKV = smem + Tr::kStrKVOff;                // [stage][k, v]
  const T* img = static_cast<const T*>(p.qkv) + static_cast<int64_t>(b) * p.img_qkv;
  const T* pad = static_cast<const T*>(p.pad);
  const uint4* img16 = reinterpret_cast<const uint4*>(img);
  const uint4* pad16 = reinterpret_cast<const uint4*>(pad);
  const int C8 = C >> 3, hd8 = hd >> 3, dv = d >> 3;
  const bool vec = p.vec;

  const int nkt = (N + kKeys - 1) / kKeys;
  // The window's tables and the bias table in shared memory (win_tabs): the
  // tokens of every key decoded once per block (the gathers, the query rows
  // and the key regions read them); else decoded per tile as it is issued.
  // (read from the parameters where used: no register held across the kernel)
  const bool win_tabs = Tr::kStrTabs && p.win_tabs, table = Tr::kStrTabs && p.bias_table;
  const int nkeys = nkt * kKeys;
  // [nkeys] tokens, then regions, then codes | region << kTabCodeBits
  int* wtok = reinterpret_cast<int*>(smem + Tr::kStrSmem);
  float* tbl = reinterpret_cast<float*>(smem + Tr::kStrSmem + Tr::str_tabs_bytes(nkeys));
  if (win_tabs) {
    for (int t = tid; t < nkeys; t += Tr::kThreads) {  // sass-dyn: trips=(keytiles * keys + threads - 1) // threads
      int tk = -1, rg = 0, cd = 0;  // (code 0 past N: such a row still indexes the table in bounds)
      if (t < N) {
        window_token(g, wo, t, tk, rg);
        cd = bias_table_code(g, t);
      }
      wtok[t] = tk;
      wtok[nkeys + t] = rg;
      wtok[2 * nkeys + t] = cd | (rg << kTabCodeBits);
    }
    if (table) {
      const float* col = static_cast<const float*>(p.bias) + h;
      for (int r = tid; r < p.bias_rows; r += Tr::kThreads)  // sass-dyn: trips=(4 * N) // threads + 1
        tbl[r] = col[static_cast<int64_t>(r) * p.heads] * static_cast<float>(kLog2e);
    }
    __syncthreads();
    tokq = wtok + row0;
    regq = wtok + nkeys + row0;
  } else if (tid < 64) {  // sass: skip(pertile)
    int tk = -1, rg = 0;
    if (row0 + tid < N) window_token(g, wo, row0 + tid, tk, rg);
    tokq_own[tid] = tk;
    regq_own[tid] = rg;
  }
  // Every chunk of a tile set by cp.async: real rows from qkv, padding
  // tokens from the pad vector, rows >= N, missing pad vectors and columns
  // past d zero-filled (columns past dp are never read).  Rows t0 + r of the
  // window; SL: the slot map of the tile set, `slots` of them.
  auto issue_rows = [&](auto slot_map, int parts, unsigned char* tiles, int first_part, int t0) {
    using SL = decltype(slot_map);
#pragma unroll
    for (int u = 0; u < SL::kPerPart; ++u) {
      const int r = SL::row(tid, u), cv = SL::col(tid);
      if (Tr::kD == 0 && cv * 8 >= dp) continue;
      int tk = -1, rg = 0;
      const bool in = t0 + r < N;
      if (win_tabs) {  // (the row's token, once for both parts)
        if (in) tk = wtok[t0 + r];
      } else if (in) {  // sass: skip(pertile)
        window_token(g, wo, t0 + r, tk, rg);
      }
#pragma unroll
      for (int part = 0; part < 2; ++part) {
        if (part >= parts) break;
        const int s = part * SL::kPerPart + u;
        const uint4* src = img16;
        int bytes = 0;
        if (in && cv < dv) {
          if (tk >= 0) {
            src = img16 + qkv_chunk16(tk, first_part + part, cv, dv, C8, hd8);
            bytes = 16;
          } else if (pad16 != nullptr) {
            src = pad16 + (first_part + part) * C8 + hd8 + cv;
            bytes = 16;
          }
        }
        cp_async16(tiles + SL::dst(tid, s), src, bytes);
      }
    }
  };
  // Key tile kt into stage st: the region table (the tokens, on the scalar
  // path) of its keys, then (vector path) its k, v chunks as one group.
  auto issue_kv = [&](int kt, int st) {
    const int kt0 = kt * kKeys;
    if (tid < kKeys && !(win_tabs && vec)) {  // sass: skip(pertile) (win_tabs: the window table's regions)
      int tk = -1, rg = 0;
      if (kt0 + tid < N) window_token(g, wo, kt0 + tid, tk, rg);
      regk[st * kKeys + tid] = vec ? rg : tk;
    }
    if (vec) {
      issue_rows(SKV{}, 2, sKV + st * 2 * Tr::kKVTileBytes, 1, kt0);
      cp_async_commit();
    }
  };

  if (vec) issue_rows(SQ{}, 1, sQ, 0, row0);  // the q tile joins key tile 0's group
  issue_kv(0, 0);

  const int wrow0 = warp * kRowTile;  // this warp's first row in the block
  const bool active = row0 + wrow0 < N;
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  const float l2e = static_cast<float>(kLog2e), ninf = neg_inf<float>();
  [[maybe_unused]] float* inv_q = reinterpret_cast<float*>(smem + Tr::kStrInv);  // V2: [64], then 1/||k|| [2][kKeys]
  [[maybe_unused]] const float sh_log2 =
      Tr::kV2 ? static_cast<const float*>(p.head_scale)[h] * static_cast<float>(kLog2e) : 0.f;
  const float* bias_h = static_cast<const float*>(p.bias) + (table ? 0 : static_cast<int64_t>(h) * N * N);
  const int gi = lane >> 2, ti = lane & 3;
  const int i0 = row0 + wrow0 + gi, i1 = i0 + 8;
  const float mask_l2 = kShiftMaskValue * l2e;
  // table: entry (i, j) is row code(i) - code(j) + center (the row of offset
  // 0), read through tblc = the table + center
  const float* tblc = tbl + bias_table_row(BiasTableShape::make(g.wt, g.wh, g.ww), 0, 0, 0, 0, 0, 0);

  float o[kDN][4];
#pragma unroll
  for (int dn = 0; dn < kDN; ++dn)
#pragma unroll
    for (int r = 0; r < 4; ++r) o[dn][r] = 0.f;
  float m0 = ninf, m1 = ninf, l0 = 0.f, l1 = 0.f;  // running max (unguarded) and lane sums

  for (int kt = 0; kt < nkt; ++kt) {  // sass-dyn: trips=keytiles
    const int cur = kt & 1, kt0 = kt * kKeys;
    unsigned char* sK = sKV + cur * 2 * Tr::kKVTileBytes;
    if (vec) {
      if (kt + 1 < nkt) {
        issue_kv(kt + 1, cur ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      // sass-dyn: skip-begin
      __syncthreads();  // the tables of tile kt (and the query rows) are written
      if (kt == 0) {
        prefill_rows<Tr>(sQ, pad, tokq, 0, 1, N - row0, d, dp, C, hd);
        gather_rows_scalar<Tr>(sQ, img, tokq, 0, 1, N - row0, d, C, hd);
      }
      prefill_rows<Tr, kKeys>(sK, pad, regk + cur * kKeys, 1, 2, N - kt0, d, dp, C, hd);
      gather_rows_scalar<Tr, kKeys>(sK, img, regk + cur * kKeys, 1, 2, N - kt0, d, C, hd);
      __syncthreads();  // the tokens are consumed: the table becomes the regions
      if (tid < kKeys) {
        int tk = -1, rg = 0;
        if (kt0 + tid < N) window_token(g, wo, kt0 + tid, tk, rg);
        regk[cur * kKeys + tid] = rg;
      }
      if (kt + 1 < nkt) issue_kv(kt + 1, cur ^ 1);  // the next tile's tokens (other stage)
      // sass-dyn: skip-end
    }
    __syncthreads();  // key tile kt (and the q tile) are complete
    if constexpr (Tr::kV2) {
      if (tid < kKeys) {
        inv_q[64 + cur * kKeys + tid] = staged_row_inv_norm<Tr>(sK + tid * Tr::kRowBytes, dp);
      } else if (kt == 0 && tid >= 64) {
        inv_q[tid - 64] = staged_row_inv_norm<Tr>(sQ + (tid - 64) * Tr::kRowBytes, dp);
      }
      if (kt == 0 && kKeys < 64 && tid < 64 - kKeys) {  // the q rows the k threads leave
        inv_q[tid + kKeys] = staged_row_inv_norm<Tr>(sQ + (tid + kKeys) * Tr::kRowBytes, dp);
      }
      __syncthreads();
    }
    if (active) {
      float s[kNT][4];
      qk_tile<Tr, kNT>(s, sQ + wrow0 * Tr::kRowBytes, sK, dp, lane);
      const int* rk = win_tabs && vec ? wtok + nkeys + kt0 : regk + cur * kKeys;
      const int* ck = wtok + 2 * nkeys + kt0;  // (table: the keys' codes and regions)
      // (read per key tile: not held across the loop)
      const int rc0 = table ? wtok[2 * nkeys + (i0 < N ? i0 : 0)] & kTabCodeMask : 0;
      const int rc1 = table ? wtok[2 * nkeys + (i1 < N ? i1 : 0)] & kTabCodeMask : 0;
      const int rq0 = regq[wrow0 + gi], rq1 = regq[wrow0 + gi + 8];
      [[maybe_unused]] float rf0 = 0.f, rf1 = 0.f;
      if constexpr (Tr::kV2) {
        rf0 = sh_log2 * inv_q[wrow0 + gi];
        rf1 = sh_log2 * inv_q[wrow0 + gi + 8];
      }
      // The scores plus bias and mask, log2 units, -inf past N: straight-line
      // code per entry, the table's choice taken once per key tile, keys past
      // N reading in-bounds table entries (code 0) or none, and selected
      // away, so that ptxas issues the key tile's loads together.  (A branch
      // per entry cost the window-12 forward a third of its time on the H200:
      // each entry's load latency after the last one's; gpu_check 2026-12-04-1835.)
      const auto add_bias = [&](auto tab) {
        constexpr bool kTab = decltype(tab)::value;
        [[maybe_unused]] const float* brow0 = bias_h + static_cast<int64_t>(i0 < N ? i0 : 0) * N;
        [[maybe_unused]] const float* brow1 = bias_h + static_cast<int64_t>(i1 < N ? i1 : 0) * N;
        // Per n-tile (8 keys): an n-tile whose keys are all past N is skipped
        // (a uniform branch), which also bounds the loads ptxas issues ahead
        // to one n-tile's (all of the tile's at once would not fit 128
        // registers).
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          if (kt0 + nt * 8 >= N) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = ninf;
            continue;
          }
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = nt * 8 + 2 * ti + e, j = kt0 + c;
            float b0, b1;  // bias and mask, log2 units
            int rkj;       // the key's shift region
            if constexpr (kTab) {  // the staged table column (rows and keys past N: in-bounds entries)
              const int v = ck[c];
              b0 = tblc[rc0 - (v & kTabCodeMask)];
              b1 = tblc[rc1 - (v & kTabCodeMask)];
              rkj = v >> kTabCodeBits;
            } else {  // sass: skip(gathered) (predicated loads: none past N)
              b0 = i0 < N && j < N ? brow0[j] * l2e : 0.f;  // sass: skip(gathered)
              b1 = i1 < N && j < N ? brow1[j] * l2e : 0.f;  // sass: skip(gathered)
              rkj = p.masked ? rk[c] : 0;  // sass: skip(gathered)
            }
            if (p.masked) {
              if (rq0 != rkj) b0 += mask_l2;
              if (rq1 != rkj) b1 += mask_l2;
            }
            float x0, x1;
            if constexpr (Tr::kV2) {
              const float cf = inv_q[64 + cur * kKeys + c];
              x0 = fmaf(s[nt][e] * cf, rf0, b0);
              x1 = fmaf(s[nt][2 + e] * cf, rf1, b1);
            } else {
              x0 = fmaf(s[nt][e], scale_log2, b0);
              x1 = fmaf(s[nt][2 + e], scale_log2, b1);
            }
            s[nt][e] = j < N ? x0 : ninf;
            s[nt][2 + e] = j < N ? x1 : ninf;
          }
        }
      };
      if (table) {
        add_bias(std::true_type{});
      } else {  // sass: skip(gathered)
        add_bias(std::false_type{});  // sass: skip(gathered)
      }
      float mx0 = m0, mx1 = m1;
      tile_row_max<kNT>(s, mx0, mx1);
      mx0 = quad_max(mx0);
      mx1 = quad_max(mx1);
      const float u0 = finite_or_zero(mx0), u1 = finite_or_zero(mx1);
      const float a0 = exp2_fast(m0 - u0), a1 = exp2_fast(m1 - u1);  // rescale what the previous tiles accumulated
      m0 = mx0;
      m1 = mx1;
      l0 *= a0;
      l1 *= a1;
#pragma unroll
      for (int dn = 0; dn < kDN; ++dn) {
        o[dn][0] *= a0;
        o[dn][1] *= a0;
        o[dn][2] *= a1;
        o[dn][3] *= a1;
      }
      uint32_t pa[kKV][4];
      exp_pack<Tr, kNT>(s, u0, u1, l0, l1, pa);
      pv_tile<Tr, kKV, kDN>(o, pa, sK + Tr::kKVTileBytes, 0, dp, lane);
    }
    __syncthreads();  // stage `cur` is consumed before it is refilled
  }
  if (!active) return;
  float i0f, i1f;
  finish_rows(p, finite_or_zero(m0), finite_or_zero(m1), l0, l1, row0 + wrow0,
              ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * N + row0 + wrow0, lane, i0f, i1f);
  unsigned char* sQw = sQ + wrow0 * Tr::kRowBytes;  // this warp's rows only: no other warp reads them now
  stage_o<Tr, kDN>(o, i0f, i1f, sQw, 0, lane);
  store_staged<Tr, false>(p, sQw, tokq + wrow0, static_cast<T*>(p.out) + static_cast<int64_t>(b) * p.img_out, nullptr,
                          d, hd, lane);
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
