// Backward of the fused shifted-window attention on tensor cores (bf16 /
// fp16), register-resident in the manner of FlashAttention-2's backward.
//
// Every warp owns 16 query rows of a 64-key tile.  S = Q K^T and dP = dO V^T
// are mma.sync m16n8k16 accumulator fragments and never leave the registers:
// the logits (scale, bias, shift mask, in log2 units), P = exp2(x - lse),
// the row sums D and dS = P o (dP - D) are formed in the fragment layout,
// dQ += dS K takes the packed dS registers directly as its A operand (the
// accumulator layout of S is the A layout of dS), and the bias gradient is
// accumulated from the float32 dS.  P and dS go to shared memory once, as
// bf16 / fp16, only as the transposed A operands of dV = P^T dO and dK =
// dS^T Q (ldmatrix.trans of the staged [query][key] tiles); Q / K / V / dO
// fragments come from shared memory by ldmatrix (.trans for the k-major
// operands), the tiles arrive by 16-byte cp.async.
//
// attn_bwd_tile_kernel (N <= 64, every 224-px Swin and V2 window 8): one
//   block per (window, head, chunk of images), 4 warps over the window's (up
//   to) 64 rows and keys, one key tile.  Once per block: the token table and
//   the head's bias with the window's shift mask, -inf past N, in fragment
//   order (a float4 per lane and 8-key tile): in log2 units, or divided by
//   scale as S's initial accumulators (kFoldBias), so a logit costs one
//   FFMA.  Then the images of the chunk one after another, the next
//   image's q, k, v, dO in flight (two stages where the layout fits three
//   blocks per SM) while the current one is computed.  D = rowsum(P o dP)
//   comes from the register fragments (the whole row is in one key tile: two
//   quad shuffles, no extra read of the forward's output).  The bias
//   gradient is accumulated over the chunk in shared memory, one fixed owner
//   lane per (i, j), and written once per block: as the N x N partial, or,
//   with the table form of the bias (AttnParams::bias_table, read through
//   the token coordinates), binned into the table's rows in the kernel (a
//   partial of rows floats, N^2 / rows times smaller: 14x at window 7).
// attn_bwd_window_kernel (any N): the key-tiled fused backward.  One block
//   per (window, head, chunk of images).  Per image two passes over the
//   (query tile, key tile) pairs of 64 x 64, the tiles through two cp.async
//   stages (a step issues only the tiles that change):
//   * the D pass (query tile outer): S and dP in registers, D = rowsum(P o
//     dP) as in the tile kernel, to a block-private scratch in lse's layout.
//     (The op keeps no output, and D from the bf16 / fp16 output would be off
//     by dO . (O - round(O)) in every row.)
//   * the main pass (key tile outer): S and dP once more, dS, each warp
//     accumulating dK and dV of its 16 keys over the query tiles; dQ of the
//     whole window accumulates in float32 in fragment order, in shared memory
//     (kResident, where it fits the device) or in a float32 workspace owned by
//     the block (any window; bounded shared memory).
//   Once per block, where they fit after the layout (AttnParams::win_tabs):
//   every row's token, shift region and relative-position code, and the
//   head's column of a bias table in log2 units (an entry is one shared load
//   at code(i) - code(j) + the row of offset 0); else each tile's table is
//   formed as it is issued and the glue expands a table.  The bias
//   gradient's N x N sums over the chunk's images are read-modify-written in
//   global memory (L2-resident) by each (i, j)'s owner lane, in a fixed
//   order: the partial itself, or, for a table, the block's workspace, binned
//   into the table's rows at the block's end (bias_bin_sum's order).
//
// Swin V2 (kV2): the scores are the raw q . k scaled in float32 by head_scale
// / (||q|| ||k||) (the forward's formula); d head_scale = sum dS o cos from
// the float32 dS; dQ and dK are formed against the raw rows with dS scaled
// per column by 1 / ||k|| (dQ) or per row by head_scale / ||q|| (dK), then
// taken through the normalisation in the fragment layout.
//
// Bitwise deterministic: every sum has a fixed order and owner (no float
// atomics); the partials are reduced by the glue over fixed shapes.
//
// Compile-time layout: warp count, tiles, strides and shared-memory offsets
// are constants of the traits; the block decode and the token tables use the
// host's FastDiv multipliers (no division in the kernels).  fp32 / fp64 keep
// the SIMT kernels of bwd_kernel.cuh.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include "bias_table_kernels.cuh"
#include "fwd_kernel.cuh"
#include "kernel_traits.h"
#include "mma.h"
#include "params.h"
#include "tile_io.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {
namespace bwd {

// Shared memory a block may take for three resident blocks per SM on sm_90
// (228 KB, 1 KB reserved per block).
constexpr int kSmemThreeBlocks = 76800;

template <typename T_, int kD_, bool kV2_>
struct BwdMmaTraits {
  using T = T_;
  static_assert(sizeof(T) == 2, "bf16 / fp16");
  static constexpr int kD = kD_;      // head_dim, or 0: any head_dim <= kMaxHeadDim at run time
  static constexpr bool kV2 = kV2_;   // Swin V2 cosine attention
  static constexpr int kDPad = kD ? kD : kMaxHeadDim;  // columns of the staged rows (zeros past d)
  static_assert(kDPad % 16 == 0, "tensor-core head_dims are multiples of 16");
  static constexpr int kWarps = 4;                      // launched always; idle rows masked
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTile = kRowTile * kWarps;       // 64 rows (queries) or keys of a tile
  static constexpr int kNT = kTile / 8;                 // 8-key n-tiles of S, dP
  static constexpr int kKS = kDPad / 16;                // k-steps over head_dim (S, dP)
  static constexpr int kDN = kDPad / 8;                 // 8-column n-tiles over head_dim (dQ, dK, dV)
  static constexpr int kK16 = kTile / 16;               // 16-wide k-steps over a tile's keys / queries
  static constexpr int kLd = kDPad + 8;                 // operand row stride (elements): 8 rows in 8
  static constexpr int kRowBytes = 2 * kLd;             //   distinct 16-byte bank groups (ldmatrix)
  static constexpr int kTileBytes = kTile * kRowBytes;
  static constexpr int kVecs = kDPad / 8;               // 16-byte vectors of a staged row
  static constexpr int kPRowBytes = 2 * (kTile + 8);    // staged P / dS rows: [query][key], 144 B
  static constexpr int kPBytes = kTile * kPRowBytes;
  // The outputs go through shared memory as 16-byte rows (head_dim <= 32,
  // the Swin path: a quarter of the store transactions of fragment stores),
  // or are stored from the fragments as soon as each is formed (wider heads:
  // their float32 accumulators are not held).
  static constexpr bool kStagedOut = kDPad <= 32;
  // P, dS and the staged outputs are written to shared memory by stmatrix on
  // sm_90 (store_a_tile: a quarter of the store instructions), except where
  // the tile kernel spills holding its row address at 168 registers: V2 (36
  // B) and head_dim 64 (8 B).
  static constexpr bool kStMatrix = !kV2 && kDPad <= 32;
  // Every warp runs the image loop's math, also a warp whose 16 rows are all
  // past N (windows of N <= 48): its rows of q, k, v and dO are the gathers'
  // zeros and its lse +inf (lse2_of), so its P, dP and dS are exact zeros --
  // what the skipped warp left in P and dS (stage_zero) -- and its outputs
  // go to no token.  Without the `if (active)` branches (their convergence
  // barriers and re-formed addresses) the image loop is 96 warp-
  // instructions shorter at head_dim 32 (968 -> 872) and at 159 registers.
  // Not V2, nor the lean form (40 B of spill), nor head_dim 64.
  static constexpr bool kAllWarps = !kV2 && kDPad <= 32;
  // The tile kernel's bias tile is the initial value of S = q.k, (bias +
  // mask) / scale, and P = exp2(S * scale * log2(e) - lse): one FFMA an
  // element in place of an FFMA and an FADD (the forward's kFoldBias; the
  // launcher requires tile_folds_bias).  Not V2, nor head_dim 64 (8 B of
  // spill).
  static constexpr bool kFoldBias = !kV2 && kDPad <= 32;
  // dS is formed times scale, P (dP - D) scale = P FFMA(dP, scale, -D scale),
  // so that dQ = dS K and dK = dS^T Q need no FMUL an element (32 fewer
  // warp-instructions per warp and image); the bias gradient's sums are
  // multiplied by 1 / scale once per block.  Under kFoldBias's condition
  // (tile_folds_bias: 2^-32 <= scale <= 2^32) and in bf16 only: dS scale is
  // packed to T, and bf16 has float32's exponent range, where fp16's would
  // overflow at |dS| > 65504 / scale and lose bits below 2^-14 / scale.
  static constexpr bool kScaledDS = kFoldBias && std::is_same_v<T, __nv_bfloat16>;
  static constexpr int kOutChunks = kRowTile * kVecs / 32;  // 16-byte output chunks per lane and operand
  // Accumulators over head_dim are formed kDNH n-tiles (<= 64 columns) at a time.
  static constexpr int kDNH = kDN < 8 ? kDN : 8;
  static constexpr int kHalves = kDN / kDNH;

  // ---- attn_bwd_tile_kernel (N <= 64): bytes of dynamic shared memory
  static constexpr int kBiasBytes = kWarps * kNT * 32 * 16;
  static constexpr int kTBias = 0;                        // float4 [warp][n-tile][lane]: bias + mask (x bmul)
  static constexpr int kTTok = kTBias + kBiasBytes;       // int[64]: token of each row (-1: padding / >= N)
  static constexpr int kTReg = kTTok + 256;               // int[64]: shift region of each row
  static constexpr int kTDpad = kTReg + 256;              // float [warp][k, v][kDPad]: padding-key gradients
  static constexpr int kTDbias = kTDpad + kWarps * 2 * kDPad * 4;  // float4 [warp][n-tile][lane]: bias gradient
  static constexpr int kTInv = kTDbias + kBiasBytes;    // V2: 1/||q||[64], 1/||k||[64], d head_scale[warp]
  static constexpr int kTStage = align_up(kTInv + (kV2 ? 128 * 4 + kWarps * 4 : 0), kSmemAlign);
  static constexpr int kStageBytes = 4 * kTileBytes;      // q, k, v, dO
  // P and dS are staged over the tiles that are dead by then: k and v (V1;
  // V2 still reads the raw k rows in the dK epilogue: v only), else in
  // buffers of their own.
  static constexpr int kAliasOff = kV2 ? 2 * kTileBytes : kTileBytes;  // in the stage
  static constexpr int kAliasBytes = kV2 ? kTileBytes : 2 * kTileBytes;
  // Where only one of them fits, P goes to a buffer of its own -- or, when
  // that keeps two images in flight at three blocks per SM (V1, head_dim 32:
  // the Swin path), P and then dS take the dead region one after the other
  // (kSeqPdS: two more barriers per image).
  static constexpr bool kDSAlias = kPBytes <= kAliasBytes;
  static constexpr bool kPAlias2 = 2 * kPBytes <= kAliasBytes;
  static constexpr int tile_smem_of(int stages, int sep) { return kTStage + stages * kStageBytes + sep; }
  static constexpr int kSepPar = (kDSAlias ? 0 : kPBytes) + (kPAlias2 ? 0 : kPBytes);
  static constexpr bool kSeqPdS = kDSAlias && !kPAlias2 && tile_smem_of(2, kSepPar) > kSmemThreeBlocks &&
                                  tile_smem_of(2, 0) <= kSmemThreeBlocks;
  static constexpr bool kPAlias = kPAlias2 || kSeqPdS;  // P in the dead region (at kPOff)
  static constexpr int kPOff = kSeqPdS ? kAliasOff : kAliasOff + kPBytes;
  static constexpr int kSepBytes = kSeqPdS ? 0 : kSepPar;
  static constexpr int tile_smem(int stages) { return tile_smem_of(stages, kSepBytes); }
  static constexpr int kStages = tile_smem(2) <= kSmemThreeBlocks ? 2 : 1;  // images in flight
  static constexpr int kTSep = kTStage + kStages * kStageBytes;
  static constexpr int kTileSmem = tile_smem(kStages);
  // Resident blocks per SM the registers are bounded for: as many as shared
  // memory allows, at most 3 (<= 168 registers: 19% occupancy on sm_90).
  static constexpr int blocks_by_smem(int smem) { return 233472 / (smem + 1024) < 3 ? 233472 / (smem + 1024) : 3; }
  // ... as a launch bound (at least 1)
  static constexpr int min_blocks_by_smem(int smem) { return blocks_by_smem(smem) > 0 ? blocks_by_smem(smem) : 1; }
  static constexpr int kTileMinBlocks = min_blocks_by_smem(kTileSmem);
  static constexpr int kTSlots = 4 * kTile * kVecs / kThreads;  // 16-byte chunks per thread and image
  // The tile kernel's lean form (BwdMmaLeanTraits): outputs stored as soon as
  // each is formed, dP one k-step at a time (<= 128 registers).
  static constexpr bool kLean = false;
  // The tile kernel's products over the tile's keys or queries (dQ = dS K,
  // dV = P^T dO, dK = dS^T Q) and the staging of P and dS take all kK16
  // k-steps, a compile-time count, not those below N: a run-time
  // k-step count put a branch after every k-step's four mma, each a
  // scheduling barrier that ptxas pads with a NOP (~23 cycles of a warp's
  // fixed-latency stalls a k-step: attn_bwd_stalls_sm90_2026-12-05.md).
  // Rows and keys past N hold zeros there: the gathers zero-fill q, k, v and
  // dO, P and dS are 0 past N (lse +inf, bias -inf), and warps past the
  // window form zeros as their rows of P and dS (kAllWarps: the image loop
  // of a warp without real rows meets zero q and dO rows) or stage zeros
  // (stage_zero: V2 and the lean form); V2's inverse
  // norms of those zero rows are finite (1e12) and meet zeros.  Head_dim 64
  // keeps the count: it spills 20 B at 168 registers with it.
  static constexpr bool kTileAllKSteps = kDPad <= 32;
  // The tile kernel's gather of the next image forms each row's source once
  // for its four chunks, by selects (row_src), where that spills nothing:
  // head_dim <= 32, the lean form too; head_dim 64 (8 B by rows, 12 B with
  // selects per chunk) a chunk at a time with branches (chunk_src).
  static constexpr bool kTileRowGather = kDPad <= 32;

  // ---- attn_bwd_window_kernel (key-tiled): bytes of dynamic shared memory.
  // dK and dV of the warp's 16 keys accumulate over the query tiles in
  // float32, fragment order, in shared memory (head_dim <= 32) or in the
  // block's float32 workspace (wider heads: the streamed form fits 99 KB);
  // dQ in a block-local buffer at the end (kDqSmem, N16 rows of kDPad floats
  // in fragment order) or in the workspace.
  static constexpr bool kKVSmem = kDPad <= 32;
  static constexpr int kWKStages = kDPad <= 64 ? 2 : 1;   // key tiles (k, v) in flight
  static constexpr int kWQStages = kDPad <= 64 ? 2 : 1;   // query tiles (q, dO) in flight
  static constexpr int kWTabInts = 3 * 64;       // a tile's part of the window tables: int [tok, reg, code][64]
  static constexpr int kWStageTabInts = 2 * 64;  // a staged tile's table (no win_tabs): int [tok, reg][64]
  static constexpr int kWTabK = 0;                                        // [stage] tables of the key tiles
  static constexpr int kWTabQ = kWTabK + kWKStages * kWStageTabInts * 4;  // [stage] tables of the query tiles
  static constexpr int kWDpad = kWTabQ + kWQStages * kWStageTabInts * 4;  // float [warp][k, v][kDPad]
  static constexpr int kWInv = kWDpad + kWarps * 2 * kDPad * 4;  // V2: 1/||k|| [kstage][64], 1/||q|| [qstage][64], ds[warp]
  static constexpr int kWKV = align_up(kWInv + (kV2 ? (kWKStages + kWQStages) * 256 + kWarps * 4 : 0), kSmemAlign);
  static constexpr int kWQD = kWKV + kWKStages * 2 * kTileBytes;  // [stage][q, dO]
  static constexpr int kWP = kWQD + kWQStages * 2 * kTileBytes;
  static constexpr int kWdS = kWP + kPBytes;
  static constexpr int kWKVAcc = kWdS + kPBytes;                  // kKVSmem: float4 [v, k][row tile][dn][lane]
  static constexpr int kWDq = kWKVAcc + (kKVSmem ? 2 * kTile * kDPad * 4 : 0);  // kDqSmem: float4 [row tile][dn][lane]
  static constexpr int window_smem(int n16, bool dq_smem) { return kWDq + (dq_smem ? n16 * kDPad * 4 : 0); }
  // After the layout above (AttnParams::win_tabs): the tables of the window's
  // nkt tiles (token, shift region and relative-position code of every row,
  // formed once per block), then (bias_table) the head's column of the
  // relative-position table in log2 units.
  // Not at head_dim 16, whose V1 kernel does not fit them in 168 registers
  // without local memory (the tile issue holds more chunks per thread): its
  // tiles form their own tables, and the glue expands a table.
  static constexpr bool kWinTabs = kDPad > 16;
  static constexpr int window_tabs_bytes(int nkt) { return nkt * kWTabInts * 4; }
  static constexpr int window_table_bytes(int bias_rows) { return align_up(bias_rows * 4, kSmemAlign); }
  // float32 workspace per block: dQ (unless in shared memory), dK and dV (unless in shared memory).
  static constexpr int64_t window_ws(int n16, bool dq_smem) {
    return (dq_smem ? 0 : int64_t(n16) * kDPad) + (kKVSmem ? 0 : 2 * int64_t(kTile) * kDPad);
  }
  static constexpr int kWSlotsKV = 2 * kTile * kVecs / kThreads;  // 16-byte chunks per thread and tile pair
  // The key / query tile tables written by the gather's lanes (no second
  // token lookup) rather than by tile_table: fewer instructions for V2 and
  // more for V1 under the register bound below (ptxas's rematerialisation;
  // sass_report --dyn, window 12 and N = 392).
  static constexpr bool kWTabFromChunks = kV2;

  static_assert(kThreads % kVecs == 0 && (kTile * kVecs) % kThreads == 0, "gather slots");
  static_assert(kTileBytes % 128 == 0 && kPBytes % 128 == 0 && kBiasBytes % 128 == 0, "128-byte buffers");
  static_assert(kDPad > 64 || kTileSmem <= kSmallestOptinSmem, "the tile backward fits every device");
  // The window kernel's register bound: as many blocks per SM as its
  // smallest shared memory (the streamed form's, without tables) allows, at
  // most 3.  Head_dim 16 (54 KB): 3 (<= 168 registers); every wider head: 2
  // (78 KB streamed at head_dim 32; <= 255 registers), since no sm_90 SM
  // holds three of those blocks.  (Head_dim 32 was bounded for three, which
  // it never had: it spent registers it could use.)
  static constexpr int kWindowMinBlocks = min_blocks_by_smem(window_smem(0, false));
  // S and dP of a 32-key half over all four n-tiles, no branch per n-tile
  // (see rows_x_rowsT; the staged key rows past N are zeros), where the
  // registers hold it without local memory: head_dim 32 and 64 at two blocks
  // per SM.  Head_dim 16 (<= 168 registers) and 128 spill with it.
  static constexpr bool kWindowAllNTiles = kWindowMinBlocks <= 2 && kDPad <= 64;
  static_assert(window_smem(0, false) <= kSmallestOptinSmem, "the streamed window backward fits every device");
};

// ------------------------------------------------------------------ small pieces

// exp2 of a float32 in log2 units: one MUFU.EX2 on the device (ex2.approx,
// ~2 ulp, flushing denormal results to 0: a probability below 2^-126 is 0
// to every product it enters); the harness uses exp2f.
__device__ __forceinline__ float bexp2(float x) {
#if defined(__CUDACC__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

// The base of image b of a tensor (image = img elements), formed where it is
// used: the offset is opaque to the compiler, which would otherwise keep the
// 64-bit bases of every image it can see in registers across the loops.  (The
// offset, not the pointer: a pointer from the kernel's parameters plus an
// offset is still known to be global, so its accesses are LDG / STG, not
// generic LD / ST.)
template <typename T>
__device__ __forceinline__ const T* image_base(const T* base, int b, int64_t img) {
  int64_t off = static_cast<int64_t>(b) * img;
#if defined(__CUDACC__)
  asm volatile("" : "+l"(off));
#endif
  return base + off;
}
template <typename T>
__device__ __forceinline__ T* image_base(T* base, int b, int64_t img) {
  return const_cast<T*>(image_base(static_cast<const T*>(base), b, img));
}

// Sums over the 4 lanes of a row (lanes 4g .. 4g + 3).
__device__ __forceinline__ float quad_sum4(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <class Tr>
__device__ __forceinline__ void zero_frags(float (&x)[Tr::kDN][4]) {
#pragma unroll
  for (int n = 0; n < Tr::kDN; ++n)
#pragma unroll
    for (int r = 0; r < 4; ++r) x[n][r] = 0.f;
}

// The tile kernel at four blocks per SM, for Swin's path (V1, head_dim 32,
// bf16 / fp16): one image in flight (54,784 B of shared memory instead of two
// in 75,264 B) and at most 128 registers (kLean: dV and dK stored through the
// warp's own dO rows as soon as each is formed, one barrier less per image;
// dP one k-step at a time), so 16 warps per SM instead of 12.  The same
// arithmetic in the same order as BwdMmaTraits: bit-identical results.  Which
// one is faster (prefetch against occupancy) is for a GPU to say: it runs
// with SWIN_EXT_ATTN_BWD=tile4 (benchmarks/gpu_check.sh times both).
template <typename T_>
struct BwdMmaLeanTraits : BwdMmaTraits<T_, 32, false> {
  using Base = BwdMmaTraits<T_, 32, false>;
  static_assert(Base::kSeqPdS && Base::kStagedOut, "the lean form stages P then dS over the dead k, v tiles");
  static constexpr bool kLean = true;
  static constexpr bool kTileAllKSteps = false;  // at 128 registers it spills (12 B) with them
  static constexpr bool kAllWarps = false;       // 40 B of spill
  static constexpr int kStages = 1;
  static constexpr int kTSep = Base::kTStage + kStages * Base::kStageBytes;
  static constexpr int kTileSmem = Base::tile_smem(kStages);
  static constexpr int kTileMinBlocks = 4;
  static_assert(4 * (kTileSmem + 1024) <= 233472, "four blocks per SM on sm_90");
};

// S (16 x 64: fragments s[n-tile][4]) = A_w B^T: the warp's 16 rows of A
// (aw) and the 64 rows of B (n-major: row = key), both [row][head_dim] in
// shared memory with stride kRowBytes.  A by ldmatrix.x4 (rows 0-7 | 8-15 x
// columns 0-7 | 8-15 of a k-step), B by ldmatrix.x4 (8 keys, two k-steps).
// n-tiles at or past n_keys and (generic head_dim) k-steps at or past dp are
// skipped (warp-uniform; their accumulators stay 0).
// (kCols n-tiles from n-tile nt0: keys nt0 * 8 ...)
// kOneStep: the A fragments of one k-step at a time, B of two n-tiles per
// ldmatrix.x4 (4 registers fewer live; each accumulator sums its k-steps in
// the same order).
// n_keys = the tile's 64 (a compile-time constant: no branch) where the B
// rows past the window are zero (the tile kernel's gathers zero-fill them),
// as the forward's qk_tile does.  Why: a branch per n-tile is also a
// scheduling barrier, so ptxas issued each n-tile's two dependent mma only
// after the previous n-tile's (LDSM -> HMMA -> HMMA -> BRA, seven times in a
// row for N = 49); without it the eight n-tiles' loads and mma pairs
// interleave, for two mma more (the last n-tile) at N = 49.  The key-tiled
// kernel's 32-key halves do the same at head_dim 32 and 64
// (kWindowAllNTiles; its staged key rows past N are zero-filled too).
// kInit: each n-tile's accumulators start at init[nt * 32] (the tile
// kernel's bias tile in fragment order, this lane's entry), loaded just
// before the n-tile's first mma; else at zero.
template <class Tr, int kCols = Tr::kNT, bool kOneStep = false, bool kInit = false>
__device__ __forceinline__ void rows_x_rowsT(float (&s)[kCols][4], const unsigned char* aw, const unsigned char* bt,
                                             int n_keys, int dp, int lane, int nt0 = 0,
                                             const float4* init = nullptr) {
  using T = typename Tr::T;
  static_assert(!(kInit && kOneStep), "kInit: the paired k-steps' form");
#pragma unroll
  for (int nt = 0; nt < kCols; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) s[nt][r] = 0.f;
  n_keys -= nt0 * 8;
  const unsigned char* a_row = aw + ((lane & 7) + ((lane >> 3) & 1) * 8) * Tr::kRowBytes + (lane >> 4) * 16;
  if constexpr (kOneStep) {
    static_assert(kCols % 2 == 0, "n-tiles in pairs");
    // lanes 0-15: keys of n-tile nt (columns 0-7 | 8-15 of the k-step), 16-31: of n-tile nt + 1
    const unsigned char* b2 = bt + (nt0 * 8 + (lane >> 4) * 8 + (lane & 7)) * Tr::kRowBytes + ((lane >> 3) & 1) * 16;
#pragma unroll
    for (int kk = 0; kk < Tr::kKS; ++kk) {
      if (Tr::kD == 0 && kk * 16 >= dp) break;
      uint32_t a0[4];
      ldsm<4>(a0, a_row + kk * 32);
#pragma unroll
      for (int nt = 0; nt < kCols; nt += 2) {
        if (nt * 8 >= n_keys) break;
        uint32_t bb[4];
        ldsm<4>(bb, b2 + nt * 8 * Tr::kRowBytes + kk * 32);  // (rows of the tile: n_keys masks the second)
        const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
        mma_16816<T>(s[nt], a0, b0, s[nt]);
        if ((nt + 1) * 8 < n_keys) mma_16816<T>(s[nt + 1], a0, b1, s[nt + 1]);
      }
    }
    return;
  }
  const unsigned char* b_row = bt + (nt0 * 8 + (lane & 7)) * Tr::kRowBytes + (lane >> 3) * 16;
#pragma unroll
  for (int kk = 0; kk < Tr::kKS; kk += 2) {
    if (Tr::kD == 0 && kk * 16 >= dp) break;
    constexpr bool kPair = Tr::kKS % 2 == 0;  // head_dim 16: one k-step
    uint32_t a0[4], a1[4];
    ldsm<4>(a0, a_row + kk * 32);
    if constexpr (kPair) ldsm<4>(a1, a_row + kk * 32 + 32);
#pragma unroll
    for (int nt = 0; nt < kCols; ++nt) {
      if (nt * 8 >= n_keys) break;
      if constexpr (kInit) {
        if (kk == 0) {
          const float4 v = init[nt * 32];
          s[nt][0] = v.x;
          s[nt][1] = v.y;
          s[nt][2] = v.z;
          s[nt][3] = v.w;
        }
      }
      if constexpr (kPair) {
        uint32_t bb[4];
        ldsm<4>(bb, b_row + nt * 8 * Tr::kRowBytes + kk * 32);
        const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
        mma_16816<T>(s[nt], a0, b0, s[nt]);
        mma_16816<T>(s[nt], a1, b1, s[nt]);
      } else {
        uint32_t bb[2];
        ldsm<2>(bb, b_row + nt * 8 * Tr::kRowBytes + kk * 32);
        mma_16816<T>(s[nt], a0, bb, s[nt]);
      }
    }
  }
}

// O (16 x kDPad: fragments o[n-tile][4]) += A B: A (16 x 64) as the A
// fragments a[k-step][4] in registers, B the 64 rows of a [row][head_dim]
// tile (k-major: row = k) by ldmatrix.x4.trans (rows 0-7 | 8-15 of a k-step
// x columns dn*8 | dn*8 + 8: the B fragments of two n-tiles).  k-steps at or
// past n_k and (generic head_dim) n-tiles at or past dp are skipped.
// The accumulator covers kCols n-tiles from n-tile dn0 (columns dn0 * 8 ...).
template <class Tr, int kCols = Tr::kDN>
__device__ __forceinline__ void regs_x_rows(float (&o)[kCols][4], const uint32_t (&a)[Tr::kK16][4],
                                            const unsigned char* b, int n_k, int dp, int lane, int dn0 = 0) {
  using T = typename Tr::T;
  const unsigned char* b_row =
      b + ((lane & 7) + ((lane >> 3) & 1) * 8) * Tr::kRowBytes + (lane >> 4) * 16 + dn0 * 16;
#pragma unroll
  for (int kv = 0; kv < Tr::kK16; ++kv) {
    if (kv * 16 >= n_k) break;
#pragma unroll
    for (int dn = 0; dn < kCols; dn += 2) {
      if (Tr::kD == 0 && (dn0 + dn) * 8 >= dp) break;
      uint32_t bb[4];
      ldsm<4, true>(bb, b_row + kv * 16 * Tr::kRowBytes + dn * 16);
      const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
      mma_16816<T>(o[dn], a[kv], b0, o[dn]);
      mma_16816<T>(o[dn + 1], a[kv], b1, o[dn + 1]);
    }
  }
}

// The A fragments of X^T for 16 keys (columns key0 .. key0 + 15) of a staged
// [query][key] tile (stride kPRowBytes), the queries as k: ldmatrix.x4.trans
// of (queries 0-7 | 8-15 of a k-step) x (keys 0-7 | 8-15).  k-steps at or
// past n_q are left unloaded (regs_x_rows skips them).
template <class Tr>
__device__ __forceinline__ void staged_t_frags(uint32_t (&a)[Tr::kK16][4], const unsigned char* staged, int key0,
                                               int n_q, int lane) {
  const unsigned char* row =
      staged + ((lane & 7) + (lane >> 4) * 8) * Tr::kPRowBytes + (key0 + ((lane >> 3) & 1) * 8) * 2;
#pragma unroll
  for (int kq = 0; kq < Tr::kK16; ++kq) {
    if (kq * 16 >= n_q) break;
    ldsm<4, true>(a[kq], row + kq * 16 * Tr::kPRowBytes);
  }
}

// Packs a 16 x 64 float32 fragment tile (times the per-element factors the
// caller applied) into the A fragments of a 16 x 64 operand: k-step kv is
// n-tiles 2kv, 2kv + 1 (the accumulator layout of S is the A layout).
template <class Tr>
__device__ __forceinline__ void pack_a(uint32_t (&a)[Tr::kK16][4], const float (&x)[Tr::kNT][4]) {
  using T = typename Tr::T;
#pragma unroll
  for (int kv = 0; kv < Tr::kK16; ++kv) {
    a[kv][0] = pack2<T>(x[2 * kv][0], x[2 * kv][1]);
    a[kv][1] = pack2<T>(x[2 * kv][2], x[2 * kv][3]);
    a[kv][2] = pack2<T>(x[2 * kv + 1][0], x[2 * kv + 1][1]);
    a[kv][3] = pack2<T>(x[2 * kv + 1][2], x[2 * kv + 1][3]);
  }
}

// One k-step of A fragments from n-tiles x0 (keys 0-7 of the step), x1 (8-15).
template <class Tr>
__device__ __forceinline__ void pack_kstep(uint32_t (&a)[4], const float (&x0)[4], const float (&x1)[4]) {
  using T = typename Tr::T;
  a[0] = pack2<T>(x0[0], x0[1]);
  a[1] = pack2<T>(x0[2], x0[3]);
  a[2] = pack2<T>(x1[0], x1[1]);
  a[3] = pack2<T>(x1[2], x1[3]);
}
// Writes one k-step of packed A fragments (16 rows x keys kv * 16 ...) into
// rows g, g + 8 of a staged [query][key] tile (see stage_a).
template <class Tr>
__device__ __forceinline__ void stage_kstep(unsigned char* rows, const uint32_t (&a)[4], int kv, int lane) {
  store_a_tile<Tr::kPRowBytes, Tr::kStMatrix>(rows + kv * 32, a, lane);
}

// Writes packed A fragments (16 rows x 64 keys) as rows g, g + 8 of a staged
// [query][key] tile at the warp's rows `rows` (stride kPRowBytes): a
// stmatrix.x4 per k-step on sm_90, else 32-bit stores; conflict-free either
// way (row stride 36 words: a matrix's 8 rows of 4 words cover the 32
// banks).  k-steps at or past n_k (warp-uniform) are skipped (never read).
template <class Tr>
__device__ __forceinline__ void stage_a(unsigned char* rows, const uint32_t (&a)[Tr::kK16][4], int n_k, int lane) {
#pragma unroll
  for (int kv = 0; kv < Tr::kK16; ++kv) {
    if (kv * 16 >= n_k) break;
    store_a_tile<Tr::kPRowBytes, Tr::kStMatrix>(rows + kv * 32, a[kv], lane);
  }
}

// Zeros as the warp's rows of a staged [query][key] tile, every k-step: a
// warp past the window, so that products over all of the tile's k-steps
// (kTileAllKSteps) read zeros there, never the bytes of an earlier image or
// unset shared memory.
template <class Tr>
__device__ __forceinline__ void stage_zero(unsigned char* rows, int lane) {
  const uint32_t z[Tr::kK16][4] = {};
  stage_a<Tr>(rows, z, Tr::kTile, lane);
}

// Two elements (columns c, c + 1) of a staged [row][head_dim] row as floats.
template <class Tr>
__device__ __forceinline__ float2 row_pair(const unsigned char* row, int c) {
  using T = typename Tr::T;
  T v[2];
  memcpy(static_cast<void*>(v), row + c * 2, 4);
  return make_float2(to_acc(v[0]), to_acc(v[1]));
}

// 1 / max(||row||, 1e-12) (F.normalize's rule) of a staged row (zeros past
// d), in float32 from the rounded elements (the forward's inverse norms).
template <class Tr>
__device__ __forceinline__ float staged_inv_norm(const unsigned char* row, int dp) {
  using T = typename Tr::T;
  float ss = 0.f;
#pragma unroll
  for (int cv = 0; cv < Tr::kVecs; ++cv) {
    if (Tr::kD == 0 && cv * 8 >= dp) break;  // generic head_dim: columns past dp are never staged
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

// Swin V2: the gradient w.r.t. the normalised row x^ = x inv (a 16 x d
// fragment tile, rows g and g + 8 of the lane; kCols n-tiles from n-tile
// dn0) becomes the gradient w.r.t. the raw row x, times mul:
// g <- (g - x inv^2 (x . g)) inv mul, with x the raw rows (rows0: row g,
// rows0 + 8 rows: row g + 8, stride kRowBytes) and inv0 / inv1 their inverse
// norms.  In two steps when the tile is formed in column blocks: the row
// dots over every block (row_dots, then quad_sum4), then the update.
template <class Tr, int kCols>
__device__ __forceinline__ void row_dots(const float (&g)[kCols][4], const unsigned char* rows0, int dn0, int dp,
                                         int lane, float& dot0, float& dot1) {
  const unsigned char* x0 = rows0 + (lane >> 2) * Tr::kRowBytes;
  const unsigned char* x1 = x0 + 8 * Tr::kRowBytes;
  const int c0 = 2 * (lane & 3);
#pragma unroll
  for (int dn = 0; dn < kCols; ++dn) {
    if (Tr::kD == 0 && (dn0 + dn) * 8 >= dp) break;
    const float2 a = row_pair<Tr>(x0, (dn0 + dn) * 8 + c0), b = row_pair<Tr>(x1, (dn0 + dn) * 8 + c0);
    dot0 = fmaf(a.x, g[dn][0], fmaf(a.y, g[dn][1], dot0));
    dot1 = fmaf(b.x, g[dn][2], fmaf(b.y, g[dn][3], dot1));
  }
}
// dot0 / dot1: the quad-summed row dots times inv^2; m0 / m1: inv * mul.
template <class Tr, int kCols>
__device__ __forceinline__ void project_rows(float (&g)[kCols][4], const unsigned char* rows0, int dn0, int dp,
                                             int lane, float dot0, float dot1, float m0, float m1) {
  const unsigned char* x0 = rows0 + (lane >> 2) * Tr::kRowBytes;
  const unsigned char* x1 = x0 + 8 * Tr::kRowBytes;
  const int c0 = 2 * (lane & 3);
#pragma unroll
  for (int dn = 0; dn < kCols; ++dn) {
    if (Tr::kD == 0 && (dn0 + dn) * 8 >= dp) break;
    const float2 a = row_pair<Tr>(x0, (dn0 + dn) * 8 + c0), b = row_pair<Tr>(x1, (dn0 + dn) * 8 + c0);
    g[dn][0] = (g[dn][0] - a.x * dot0) * m0;
    g[dn][1] = (g[dn][1] - a.y * dot0) * m0;
    g[dn][2] = (g[dn][2] - b.x * dot1) * m1;
    g[dn][3] = (g[dn][3] - b.y * dot1) * m1;
  }
}
template <class Tr, int kCols>
__device__ __forceinline__ void normalize_backward(float (&g)[kCols][4], const unsigned char* rows0, float inv0,
                                                   float inv1, float mul, int dp, int lane) {
  float dot0 = 0.f, dot1 = 0.f;
  row_dots<Tr, kCols>(g, rows0, 0, dp, lane, dot0, dot1);
  dot0 = quad_sum4(dot0) * inv0 * inv0;
  dot1 = quad_sum4(dot1) * inv1 * inv1;
  project_rows<Tr, kCols>(g, rows0, 0, dp, lane, dot0, dot1, inv0 * mul, inv1 * mul);
}

// Adds the rows of a 16 x d fragment tile whose bit is set in `rows_mask`
// (bit r: row r of the warp's tile is a padding token) into acc[c] (float32,
// shared memory, lanes 0-3 own the columns): the lanes' rows are summed over
// the 8 row groups by shuffles in a fixed order.  Warp-uniform: call only
// when rows_mask != 0.
template <class Tr, int kCols>
__device__ __forceinline__ void add_padding_rows_frag(float* acc, const float (&x)[kCols][4], uint32_t rows_mask,
                                                      int dp, int lane, int dn0 = 0) {
  const int gr = lane >> 2, c0 = 2 * (lane & 3);
  const bool p0 = (rows_mask >> gr) & 1u, p1 = (rows_mask >> (gr + 8)) & 1u;
  acc += dn0 * 8;
#pragma unroll
  for (int dn = 0; dn < kCols; ++dn) {
    if (Tr::kD == 0 && (dn0 + dn) * 8 >= dp) break;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = (p0 ? x[dn][e] : 0.f) + (p1 ? x[dn][2 + e] : 0.f);
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      if (gr == 0) acc[dn * 8 + c0 + e] += v;  // sass: skip(padded) (ptxas keeps no call site here)
    }
  }
}

// ------------------------------------------------------------------ outputs

// Source / destination of a 16-byte chunk in 16-byte units from the image's
// base: the q (0), k (1), v (2) part of qkv (C8 = C / 8, hd8 = h d / 8).
__device__ __forceinline__ uint32_t qkv16(int tok, int part, int cv, int C8, int hd8) {
  return static_cast<uint32_t>(tok) * static_cast<uint32_t>(3 * C8) + static_cast<uint32_t>(part * C8 + hd8 + cv);
}

// Packs a warp's 16 x kDPad fragment tile x (times mul) into its 16 staging
// rows (stride kStride bytes): two n-tiles packed are the A fragment of
// their 16 columns (store_a_tile).
template <class Tr, int kStride>
__device__ __forceinline__ void stage_frags(const float (&x)[Tr::kDN][4], float mul, unsigned char* rows, int lane) {
  using T = typename Tr::T;
  static_assert(kStride >= 2 * Tr::kDPad && Tr::kDN % 2 == 0, "staging rows hold a row of head_dim, 16 columns a tile");
#pragma unroll
  for (int dn = 0; dn < Tr::kDN; dn += 2) {
    const uint32_t a[4] = {pack2<T>(x[dn][0] * mul, x[dn][1] * mul), pack2<T>(x[dn][2] * mul, x[dn][3] * mul),
                           pack2<T>(x[dn + 1][0] * mul, x[dn + 1][1] * mul),
                           pack2<T>(x[dn + 1][2] * mul, x[dn + 1][3] * mul)};
    store_a_tile<kStride, Tr::kStMatrix>(rows + dn * 16, a, lane);
  }
}

// Stores a warp's 16 x d fragment tile x (times mul) of one operand of dqkv
// (part 0 q, 1 k, 2 v) at the tokens tok_w[0..15] of the image (dst = its
// base), skipping rows whose token is -1 (padding, or past the window).
//   kStaged: packed into `stage_rows` (16 rows of the warp, stride kStride
//     bytes, dead by then), then 16-byte stores (vec) or element stores.
//   else: from the fragments, 32-bit pairs (vec) or elements.
template <class Tr, bool kStaged = Tr::kStagedOut, int kStride = Tr::kRowBytes, int kCols = Tr::kDN>
__device__ __forceinline__ void store_out(const AttnParams& p, const float (&x)[kCols][4], float mul, int part,
                                          const int* tok_w, unsigned char* stage_rows, typename Tr::T* dst, int d,
                                          int hd, int lane, int dn0 = 0) {
  using T = typename Tr::T;
  const int C = p.C;
  const int gr = lane >> 2, c0 = 2 * (lane & 3);
  if constexpr (kStaged) {
    static_assert(kCols == Tr::kDN, "a row of head_dim");
    stage_frags<Tr, kStride>(x, mul, stage_rows, lane);
    __syncwarp();
    if (p.vec) {
      uint4* d16 = reinterpret_cast<uint4*>(dst);
      const int C8 = C >> 3, hd8 = hd >> 3, dv = d >> 3;
#pragma unroll
      for (int u = 0; u < Tr::kOutChunks; ++u) {
        const int e = lane + 32 * u, r = e / Tr::kVecs, cv = e % Tr::kVecs;
        const int tk = tok_w[r];
        if (tk >= 0 && cv < dv)
          swin_stg16(d16 + qkv16(tk, part, cv, C8, hd8), *reinterpret_cast<const uint4*>(stage_rows + r * kStride + cv * 16));
      }
    } else {  // sass: skip(scalar)
      for (int r = 0; r < kRowTile; ++r) {
        const int tk = tok_w[r];
        if (tk < 0) continue;
        const T* src = reinterpret_cast<const T*>(stage_rows + r * kStride);
        T* o = dst + static_cast<int64_t>(tk) * (3 * C) + part * C + hd;
        for (int c = lane; c < d; c += 32) o[c] = src[c];
      }
    }
    __syncwarp();  // the staging rows are read before anything overwrites them
  } else {
    const int t0 = tok_w[gr], t1 = tok_w[gr + 8];
    T* o0 = dst + static_cast<int64_t>(t0) * (3 * C) + part * C + hd;
    T* o1 = dst + static_cast<int64_t>(t1) * (3 * C) + part * C + hd;
#pragma unroll
    for (int dn = 0; dn < kCols; ++dn) {
      const int c = (dn0 + dn) * 8 + c0;
      if (c >= d) break;
      if (p.vec) {  // d % 8 == 0, 16-byte aligned rows: the pair is 4-byte aligned
        if (t0 >= 0) *reinterpret_cast<uint32_t*>(o0 + c) = pack2<T>(x[dn][0] * mul, x[dn][1] * mul);
        if (t1 >= 0) *reinterpret_cast<uint32_t*>(o1 + c) = pack2<T>(x[dn][2] * mul, x[dn][3] * mul);
      } else {  // sass: skip(scalar)
        if (t0 >= 0) {
          o0[c] = from_acc<T>(x[dn][0] * mul);
          if (c + 1 < d) o0[c + 1] = from_acc<T>(x[dn][1] * mul);
        }
        if (t1 >= 0) {
          o1[c] = from_acc<T>(x[dn][2] * mul);
          if (c + 1 < d) o1[c + 1] = from_acc<T>(x[dn][3] * mul);
        }
      }
    }
  }
}

// dK and dV of a warp's 16 rows (parts 1 and 2 of dqkv) through their
// staging rows (kStagedOut) in one pass: each row's token and address are
// formed once for both stores.
template <class Tr, int kStride = Tr::kRowBytes>
__device__ __forceinline__ void store_out_kv(const AttnParams& p, const float (&xk)[Tr::kDN][4],
                                             const float (&xv)[Tr::kDN][4], const int* tok_w, unsigned char* rows_k,
                                             unsigned char* rows_v, typename Tr::T* dst, int d, int hd, int lane) {
  using T = typename Tr::T;
  static_assert(Tr::kStagedOut, "the staged outputs' form");
  const int C = p.C;
  stage_frags<Tr, kStride>(xk, 1.f, rows_k, lane);
  stage_frags<Tr, kStride>(xv, 1.f, rows_v, lane);
  __syncwarp();
  if (p.vec) {
    uint4* d16 = reinterpret_cast<uint4*>(dst);
    const int C8 = C >> 3, hd8 = hd >> 3, dv = d >> 3;
#pragma unroll
    for (int u = 0; u < Tr::kOutChunks; ++u) {
      const int e = lane + 32 * u, r = e / Tr::kVecs, cv = e % Tr::kVecs;
      const int tk = tok_w[r];
      if (tk >= 0 && cv < dv) {
        uint4* o = d16 + qkv16(tk, 1, cv, C8, hd8);
        swin_stg16(o, *reinterpret_cast<const uint4*>(rows_k + r * kStride + cv * 16));
        swin_stg16(o + C8, *reinterpret_cast<const uint4*>(rows_v + r * kStride + cv * 16));
      }
    }
  } else {  // sass: skip(scalar)
    for (int r = 0; r < kRowTile; ++r) {
      const int tk = tok_w[r];
      if (tk < 0) continue;
      const T* k = reinterpret_cast<const T*>(rows_k + r * kStride);
      const T* v = reinterpret_cast<const T*>(rows_v + r * kStride);
      T* o = dst + static_cast<int64_t>(tk) * (3 * C) + C + hd;
      for (int c = lane; c < d; c += 32) {
        o[c] = k[c];
        o[C + c] = v[c];
      }
    }
  }
  __syncwarp();  // the staging rows are read before anything overwrites them
}

// ------------------------------------------------------------------ gathers

// Gather slot s of thread tid: chunk tid + kThreads s of a [4][64][kVecs] set
// of tiles (q, k, v, dO), compile-time shifts.
template <class Tr>
struct BSlot {
  static constexpr int kPerPart = Tr::kTile * Tr::kVecs / Tr::kThreads;
  __device__ __forceinline__ static int part(int s) { return s / kPerPart; }
  __device__ __forceinline__ static int row(int tid, int s) {
    return tid / Tr::kVecs + (s % kPerPart) * (Tr::kThreads / Tr::kVecs);
  }
  __device__ __forceinline__ static int col(int tid) { return tid % Tr::kVecs; }
  __device__ __forceinline__ static int dst(int tid, int s) {
    return part(s) * Tr::kTileBytes + row(tid, s) * Tr::kRowBytes + col(tid) * 16;
  }
};

// Where a gathered 16-byte chunk comes from: an offset (16-byte units) from
// the image's qkv (parts 0-2) or grad_out (part 3), from the pad vector, or
// nothing (zero fill: rows past the window, dO of padding tokens, columns
// past d, a padding token without a pad vector).
enum ChunkKind : uint32_t { kChunkImg = 0, kChunkPad = 1, kChunkZero = 2 };
struct ChunkSrc {
  uint32_t off;
  uint32_t kind;
};
// Branches: the key-tiled kernels' gathers and the tile kernel's at head_dim
// 64; the tile kernel's at head_dim <= 32 takes a row at a time (row_src).
__device__ __forceinline__ ChunkSrc chunk_src(int tok, bool in_window, int part, int cv, int dv, int C8, int hd8,
                                              bool has_pad) {
  if (!in_window || cv >= dv) return {0u, kChunkZero};
  if (tok >= 0)
    return {part < 3 ? qkv16(tok, part, cv, C8, hd8)
                     : static_cast<uint32_t>(tok) * static_cast<uint32_t>(C8) + static_cast<uint32_t>(hd8 + cv),
            kChunkImg};
  if (part < 3 && has_pad) return {static_cast<uint32_t>(part * C8 + hd8 + cv), kChunkPad};
  return {0u, kChunkZero};
}

// Where chunk column cv of a gathered row comes from, for its four parts at
// once: q, k, v at (pad ? the pad vector : the image's qkv) + off + part * C8
// (16-byte units; qkv_bytes 0: zero fill), dO at the image's grad_out +
// do_off (do_bytes 0: zero fill; padding tokens have no dO).  The sources of
// chunk_src part by part, but the row's token, tests and offsets are formed
// once for its four chunks (the tile backward's gather of the next image:
// ~22 instructions a chunk formed per chunk, 181 per warp and image at
// head_dim 32, 81 by rows).  Zero-filled chunks point at offset 0 of the
// image, never read.  Selects, no branch: a branch structure per case was a
// scheduling barrier per chunk (BSSY, two BRA, BSYNC, where ptxas waited out
// each tok load and predicate: ~210 of the tile backward's fixed-latency
// stall cycles per warp and image, sass_report --dyn).
struct RowSrc {
  uint32_t off, do_off;
  int qkv_bytes, do_bytes;
  bool pad;
};
__device__ __forceinline__ RowSrc row_src(int tok, bool in_window, int cv, int dv, int C8, int hd8, bool has_pad) {
  const uint32_t col = static_cast<uint32_t>(hd8 + cv), tu = static_cast<uint32_t>(tok), c8 = static_cast<uint32_t>(C8);
  const bool live = in_window && cv < dv;
  const bool img = live && tok >= 0;
  const bool padv = live && tok < 0 && has_pad;
  return {img ? tu * (3u * c8) + col : (padv ? col : 0u), img ? tu * c8 + col : 0u, img || padv ? 16 : 0,
          img ? 16 : 0, padv};
}

__device__ __forceinline__ void issue_chunk(unsigned char* dst, const ChunkSrc& c, const uint4* img16,
                                            const uint4* go16, const uint4* pad16, int part) {
  const uint4* src = c.kind == kChunkPad ? pad16 + c.off : (part < 3 ? img16 : go16) + c.off;
  cp_async16(dst, c.kind == kChunkZero ? static_cast<const void*>(img16) : static_cast<const void*>(src),
             c.kind == kChunkZero ? 0 : 16);
}

// Scalar gather (head_dim not a multiple of 8, or storage not 16-byte
// aligned): every element of `parts` consecutive tiles, operands
// first_part + part_step * k (q 0, k 1, v 2, dO 3), of rows [0, 64): rows of
// the window with tokens tok[r], rows >= n_valid past it.  A warp per row.
template <class Tr>
__device__ __forceinline__ void gather_scalar(unsigned char* tiles, const typename Tr::T* img,
                                              const typename Tr::T* go_img, const typename Tr::T* pad,
                                              const int* tok, int first_part, int part_step, int parts, int n_valid,
                                              int d, int dp, int C, int hd) {
  using T = typename Tr::T;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const T zero = zero_value<T>();
  for (int pr = warp; pr < parts * Tr::kTile; pr += Tr::kWarps) {
    const int pi = pr / Tr::kTile, r = pr - pi * Tr::kTile, part = first_part + part_step * pi;
    const int tk = r < n_valid ? tok[r] : -1;
    const T* src = nullptr;
    if (r < n_valid) {
      if (tk >= 0) {
        src = part < 3 ? img + static_cast<int64_t>(tk) * (3 * C) + part * C + hd : go_img + static_cast<int64_t>(tk) * C + hd;
      } else if (part < 3 && pad != nullptr) {
        src = pad + part * C + hd;
      }
    }
    T* dst = reinterpret_cast<T*>(tiles + pi * Tr::kTileBytes + r * Tr::kRowBytes);
    for (int c = lane; c < dp; c += 32) dst[c] = (src != nullptr && c < d) ? src[c] : zero;
  }
}

// ------------------------------------------------------------------ logits, P, dS

// lse in log2 units of window row i (+inf past the window or for a row
// without a finite logit: P = 0 there).
__device__ __forceinline__ float lse2_of(const float* lse, int i, int N) {
  if (i >= N) return __int_as_float(0x7f800000);
  const float v = lse[i];
  return v == neg_inf<float>() ? __int_as_float(0x7f800000) : v * static_cast<float>(kLog2e);
}

// dS = P o (dP - D) in place of dP (rows g: D0, g + 8: D1).
template <class Tr>
__device__ __forceinline__ void dscores(const float (&pr)[Tr::kNT][4], float (&dpf)[Tr::kNT][4], float D0, float D1) {
#pragma unroll
  for (int nt = 0; nt < Tr::kNT; ++nt) {
    dpf[nt][0] = pr[nt][0] * (dpf[nt][0] - D0);
    dpf[nt][1] = pr[nt][1] * (dpf[nt][1] - D0);
    dpf[nt][2] = pr[nt][2] * (dpf[nt][2] - D1);
    dpf[nt][3] = pr[nt][3] * (dpf[nt][3] - D1);
  }
}
// dS scale = P (dP scale - D scale) (kScaledDS): the same two instructions
// an element, an FFMA in place of the FADD (sD0, sD1: D scale).
template <class Tr>
__device__ __forceinline__ void dscores_scaled(const float (&pr)[Tr::kNT][4], float (&dpf)[Tr::kNT][4], float scale,
                                               float sD0, float sD1) {
#pragma unroll
  for (int nt = 0; nt < Tr::kNT; ++nt) {
    dpf[nt][0] = pr[nt][0] * fmaf(dpf[nt][0], scale, -sD0);
    dpf[nt][1] = pr[nt][1] * fmaf(dpf[nt][1], scale, -sD0);
    dpf[nt][2] = pr[nt][2] * fmaf(dpf[nt][2], scale, -sD1);
    dpf[nt][3] = pr[nt][3] * fmaf(dpf[nt][3], scale, -sD1);
  }
}

// The padding keys (bit r) among 16 rows of a tile table (valid: row < n).
__device__ __forceinline__ uint32_t padding_rows(const int* tok16, int n) {
  uint32_t m = 0;
#pragma unroll
  for (int r = 0; r < kRowTile; ++r)
    if (r < n && tok16[r] < 0) m |= 1u << r;
  return m;
}

// ------------------------------------------------------------------ N <= 64: one tile, images in flight

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kTileMinBlocks) attn_bwd_tile_kernel(const AttnParams p) {
  static_assert(Tr::kDPad <= 64, "head_dim 128 and the generic head_dim run the window kernel");
  using T = typename Tr::T;
  using SL = BSlot<Tr>;
  constexpr int kNT = Tr::kNT, kK16 = Tr::kK16;
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const Geom& g = p.g;
  const int N = g.N;
  // N unsigned in 64-bit offsets (no sign word to keep alive).
  const uint32_t Nu = static_cast<uint32_t>(N);
  const int d = Tr::kD ? Tr::kD : p.d;
  const int dp = Tr::kD ? Tr::kD : (d + 31) & ~31;  // generic: k-steps are taken in pairs
  const int C = p.C;

  // blockIdx.x = (chunk * nW + win) * heads + h
  int cw, h, chunk, win;
  p.div_heads.divmod(blockIdx.x, cw, h);
  p.div_nW.divmod(cw, chunk, win);
  const int hd = h * d;

  float4* sbias = reinterpret_cast<float4*>(smem + Tr::kTBias);
  int* tok = reinterpret_cast<int*>(smem + Tr::kTTok);
  int* reg = reinterpret_cast<int*>(smem + Tr::kTReg);
  float* dpad_w = reinterpret_cast<float*>(smem + Tr::kTDpad) + warp * 2 * Tr::kDPad;  // [k, v][kDPad]
  [[maybe_unused]] float* inv = reinterpret_cast<float*>(smem + Tr::kTInv);  // V2: 1/||q||[64], 1/||k||[64], ds[warp]
  unsigned char* stages = smem + Tr::kTStage;
  const T* qkv = static_cast<const T*>(p.qkv);
  const T* gout = static_cast<const T*>(p.grad_out);
  const T* pad = static_cast<const T*>(p.pad);

  // ---- once per block: token table, bias + mask in fragment order, padding-key accumulators
  build_token_table(g, win, 0, Tr::kTile, tok, reg);
  // Each token's table code (bias_table_code; 0 past N and for the gathered
  // bias), decoded once here rather than per bias entry below: in the stage
  // buffers, which no gather writes before the barrier after the bias tile.
  int* code = reinterpret_cast<int*>(stages);
  static_assert(Tr::kStageBytes >= Tr::kTile * int(sizeof(int)) && Tr::kThreads >= Tr::kTile, "a code per thread");
  if (tid < Tr::kTile) code[tid] = p.bias_table && tid < N ? bias_table_code(g, tid) : 0;
  static_assert(Tr::kWarps * 2 * Tr::kDPad % Tr::kThreads == 0, "whole trips");
#pragma unroll
  for (int k = 0; k < Tr::kWarps * 2 * Tr::kDPad / Tr::kThreads; ++k)  // (unrolled: ptxas's loop of any
    reinterpret_cast<float*>(smem + Tr::kTDpad)[tid + k * Tr::kThreads] = 0.f;  // trip count cost 86 here)
  __syncthreads();
  {
    // (bias + mask) * bmul of (row, key) in the accumulator layout, -inf
    // for keys >= N, 0 for rows >= N: entry (w, nt, lane) holds rows
    // w * 16 + g, + 8 x keys nt * 8 + 2t, + 1 of row block w and n-tile nt.
    // Thread (warp, lane) fills n-tiles warp and warp + kWarps of every row
    // block: its keys' terms once, each row's once per row block.  No branch:
    // rows and keys past N read the entry of token N - 1 (in bounds in both
    // bias forms), and the selects put 0 / -inf in its place.
    // The head's bias: the (heads, N, N) bias or the table (HeadBias).
    static_assert(kNT == 2 * Tr::kWarps && Tr::kWarps * kRowTile == Tr::kTile, "two n-tiles per thread and row block");
    // bmul: 1 / scale with kFoldBias (the tile is the initial value of
    // S = q.k), else log2(e) (the tile is added to the log2-unit logits).
    const HeadBias bias = HeadBias::make(p, h);
    const float l2e = Tr::kFoldBias ? p.inv_scale : static_cast<float>(kLog2e), ninf = neg_inf<float>();
    const float mask_value = p.masked ? kShiftMaskValue : 0.f;
    const int gl = AccLayout::row(lane, 0), tl = AccLayout::col(lane, 0);
#pragma unroll
    for (int hn = 0; hn < 2; ++hn) {
      const int j0 = (warp + Tr::kWarps * hn) * 8 + tl;
      int cj[2], rj[2];
      bool jin[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int j = j0 + c, jc = min(j, N - 1);
        jin[c] = j < N;
        cj[c] = bias.col_term_of(code[jc], jc);
        rj[c] = reg[j];
      }
#pragma unroll 1
      for (int w = 0; w < Tr::kWarps; ++w) {  // sass: trips(kWarps)
        float v[4];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int i = w * kRowTile + gl + 8 * rr, ic = min(i, N - 1);
          const int ri = bias.row_term_of(code[ic], ic), rgi = reg[i];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float x = (bias.at(ri, cj[c]) + (rgi != rj[c] ? mask_value : 0.f)) * l2e;
            v[2 * rr + c] = jin[c] ? (i < N ? x : 0.f) : ninf;
          }
        }
        sbias[(w * kNT + warp + Tr::kWarps * hn) * 32 + lane] = make_float4(v[0], v[1], v[2], v[3]);
      }
    }
  }
  const int C8 = C >> 3, dv = d >> 3;
  const bool has_pad = pad != nullptr;
  const int wrow0 = warp * kRowTile;
  const bool has_rows = wrow0 < N;  // warp-uniform
  // In the image loop: warps past the window only stage and wait, unless kAllWarps.
  const bool active = Tr::kAllWarps || has_rows;
  const int n_kq = Tr::kTileAllKSteps ? Tr::kTile : N;  // keys / queries of the dQ, dV, dK products
  // The image loop's gathers and stores address qkv, grad_out, the pad
  // vector and dqkv from these bases at head offset hd_i: with kHeadBases the
  // bases are the head's columns and hd_i is 0, so that the loop does not
  // re-form h * d (ptxas rematerialised it ~27 times per image at 167
  // registers); the lean form and head_dim 64 spill holding the bases.
  constexpr bool kHeadBases = Tr::kTileRowGather && !Tr::kLean;
  const int hd_i = kHeadBases ? 0 : hd;
  const T* qkv_h = kHeadBases ? qkv + hd : qkv;
  const T* gout_h = kHeadBases ? gout + hd : gout;
  T* dqkv_h = static_cast<T*>(p.dqkv) + (kHeadBases ? hd : 0);
  const uint4* pad16 = reinterpret_cast<const uint4*>(kHeadBases && has_pad ? pad + hd : pad);
  // Issues image b's q, k, v, dO chunks into stage st (one cp.async group):
  // the thread's chunk column cv of its kPerPart rows, each row's source
  // formed once for its four parts (row_src).
  auto issue = [&](int b, int st) {
    const uint4* img16 = reinterpret_cast<const uint4*>(image_base(qkv_h, b, p.img_qkv));
    const uint4* go16 = reinterpret_cast<const uint4*>(image_base(gout_h, b, p.img_out));
    unsigned char* dst = stages + st * Tr::kStageBytes;
    const int cv = SL::col(tid);
    if constexpr (Tr::kTileRowGather) {
      static_assert(Tr::kD != 0, "the generic head_dim skips the columns past dp chunk by chunk");
#pragma unroll
      for (int u = 0; u < SL::kPerPart; ++u) {
        const int r = SL::row(tid, u);
        const RowSrc rs = row_src(tok[r], r < N, cv, dv, C8, hd_i >> 3, has_pad);
        const uint4* src = (rs.pad ? pad16 : img16) + rs.off;
#pragma unroll
        for (int part = 0; part < 3; ++part)
          cp_async16(dst + SL::dst(tid, part * SL::kPerPart + u), src + part * C8, rs.qkv_bytes);
        cp_async16(dst + SL::dst(tid, 3 * SL::kPerPart + u), go16 + rs.do_off, rs.do_bytes);
      }
    } else {  // a chunk at a time, branches (head_dim 64 spills 8 B by rows)
#pragma unroll
      for (int s = 0; s < Tr::kTSlots; ++s) {
        if (Tr::kD == 0 && cv * 8 >= dp) continue;  // never read
        const int r = SL::row(tid, s);
        issue_chunk(dst + SL::dst(tid, s), chunk_src(tok[r], r < N, SL::part(s), cv, dv, C8, hd_i >> 3, has_pad), img16,
                    go16, pad16, SL::part(s));
      }
    }
    cp_async_commit();
  };

  const int b0 = chunk * p.chunk;
  const int nimg = min(p.chunk, p.B - b0);
  const bool vec = p.vec;
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  const float scale = static_cast<float>(p.scale);
  [[maybe_unused]] const float s_h = Tr::kV2 ? static_cast<const float*>(p.head_scale)[h] : 1.f;
  [[maybe_unused]] const float sh_log2 = s_h * static_cast<float>(kLog2e);
  const int gr = lane >> 2, c0 = 2 * (lane & 3);
  const float4* bw = sbias + warp * kNT * 32 + lane;
  const int* tok_w = tok + wrow0;

  // The bias gradient of (row g / g + 8, key nt * 8 + 2t / + 1) over the
  // chunk, this lane's, in shared memory (fragment order, conflict-free).
  float4* dbw = reinterpret_cast<float4*>(smem + Tr::kTDbias) + warp * kNT * 32 + lane;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) dbw[nt * 32] = make_float4(0.f, 0.f, 0.f, 0.f);
  if constexpr (Tr::kV2) {
    if (lane == 0) inv[128 + warp] = 0.f;  // the warp's d head_scale over the chunk
  }

  __syncthreads();  // the tables and the bias tile are complete
  if (vec) issue(b0, 0);
  for (int it = 0; it < nimg; ++it) {  // sass: image-loop
    const int b = b0 + it;
    const int cur = Tr::kStages == 2 ? (it & 1) : 0;
    unsigned char* st = stages + cur * Tr::kStageBytes;
    unsigned char* sQ = st;
    unsigned char* sK = st + Tr::kTileBytes;
    unsigned char* sV = st + 2 * Tr::kTileBytes;
    unsigned char* sdO = st + 3 * Tr::kTileBytes;
    unsigned char* sP = Tr::kPAlias ? st + Tr::kPOff : smem + Tr::kTSep;
    unsigned char* sdS = Tr::kDSAlias ? st + Tr::kAliasOff : smem + Tr::kTSep + (Tr::kPAlias ? 0 : Tr::kPBytes);
    if (vec) {
      cp_async_wait<0>();
    } else {  // sass: skip(scalar)
      gather_scalar<Tr>(st, qkv + static_cast<int64_t>(b) * p.img_qkv, gout + static_cast<int64_t>(b) * p.img_out, pad,
                        tok, 0, 1, 4, N, d, dp, C, hd);
    }
    __syncthreads();  // image b is complete; every warp is done with image b - 1
    if (Tr::kStages == 2 && vec && it + 1 < nimg) issue(b + 1, cur ^ 1);  // in flight while b is computed
    if constexpr (Tr::kV2) {
      inv[tid] = staged_inv_norm<Tr>(st + (tid >> 6) * Tr::kTileBytes + (tid & 63) * Tr::kRowBytes, dp);
      __syncthreads();
    }

    uint32_t pa[kK16][4], dsa[kK16][4];  // P and dS (V2: dS head_scale / ||q||) as A fragments
    float dq[Tr::kDN][4];
    if (active) {
      const float* lse = static_cast<const float*>(p.lse) + ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * Nu;
      const float lse0 = lse2_of(lse, wrow0 + gr, N), lse1 = lse2_of(lse, wrow0 + gr + 8, N);
      float s[kNT][4], dpf[kNT][4];
      // V1: every n-tile (the rows of sK, sV past N are zero: the gathers'
      // zero fill).  V2 keeps the branches: without them its kernel spills at
      // 168 registers.
      const int n_keys = Tr::kV2 ? N : Tr::kTile;
      // kFoldBias: S = (bias + mask) / scale + q.k (the bias tile is the initial accumulator)
      rows_x_rowsT<Tr, kNT, false, Tr::kFoldBias>(s, sQ + wrow0 * Tr::kRowBytes, sK, n_keys, dp, lane, 0, bw);
      [[maybe_unused]] float rq0 = 0.f, rq1 = 0.f;  // V2: 1 / ||q|| of rows g, g + 8
      if constexpr (Tr::kV2) {
        // head_scale q.k / (||q|| ||k||) in float32 plus the bias (the
        // forward's formula: c = q.k / ||k|| is the cosine times ||q||).
        rq0 = inv[wrow0 + gr];
        rq1 = inv[wrow0 + gr + 8];
        const float rf0 = sh_log2 * rq0, rf1 = sh_log2 * rq1;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float4 bm = bw[nt * 32];
          const float2 cf = *reinterpret_cast<const float2*>(inv + 64 + nt * 8 + c0);
          s[nt][0] = bexp2(fmaf(s[nt][0] * cf.x, rf0, bm.x) - lse0);
          s[nt][1] = bexp2(fmaf(s[nt][1] * cf.y, rf0, bm.y) - lse0);
          s[nt][2] = bexp2(fmaf(s[nt][2] * cf.x, rf1, bm.z) - lse1);
          s[nt][3] = bexp2(fmaf(s[nt][3] * cf.y, rf1, bm.w) - lse1);
        }
      } else if constexpr (Tr::kFoldBias) {  // P = exp2(S scale log2(e) - lse): one FFMA
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          s[nt][0] = bexp2(fmaf(s[nt][0], scale_log2, -lse0));
          s[nt][1] = bexp2(fmaf(s[nt][1], scale_log2, -lse0));
          s[nt][2] = bexp2(fmaf(s[nt][2], scale_log2, -lse1));
          s[nt][3] = bexp2(fmaf(s[nt][3], scale_log2, -lse1));
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float4 bm = bw[nt * 32];
          s[nt][0] = bexp2(fmaf(s[nt][0], scale_log2, bm.x) - lse0);
          s[nt][1] = bexp2(fmaf(s[nt][1], scale_log2, bm.y) - lse0);
          s[nt][2] = bexp2(fmaf(s[nt][2], scale_log2, bm.z) - lse1);
          s[nt][3] = bexp2(fmaf(s[nt][3], scale_log2, bm.w) - lse1);
        }
      }
      rows_x_rowsT<Tr, kNT, Tr::kLean>(dpf, sdO + wrow0 * Tr::kRowBytes, sV, n_keys, dp, lane);  // after P: fewer live registers
      // D = rowsum(P o dP): the whole row is in this tile.
      float D0 = 0.f, D1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        D0 = fmaf(s[nt][0], dpf[nt][0], fmaf(s[nt][1], dpf[nt][1], D0));
        D1 = fmaf(s[nt][2], dpf[nt][2], fmaf(s[nt][3], dpf[nt][3], D1));
      }
      D0 = quad_sum4(D0);
      D1 = quad_sum4(D1);
      if constexpr (Tr::kScaledDS) {
        dscores_scaled<Tr>(s, dpf, scale, D0 * scale, D1 * scale);
      } else {
        dscores<Tr>(s, dpf, D0, D1);
      }
      // The n-tiles of S (V1 all of them: no branch between the
      // read-modify-writes; the sums of keys past N are never read).
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        if (nt * 8 >= n_keys) break;
        float4 v = dbw[nt * 32];
        v.x += dpf[nt][0];
        v.y += dpf[nt][1];
        v.z += dpf[nt][2];
        v.w += dpf[nt][3];
        dbw[nt * 32] = v;
      }
      pack_a<Tr>(pa, s);
      if constexpr (Tr::kV2) {
        // d head_scale = sum dS cos, from the float32 dS and the raw scores
        // (formed again, 16 keys at a time: fewer live registers than
        // keeping them).  This image's share of the warp is added by lane 0
        // to the warp's float in shared memory.
        float ca0 = 0.f, ca1 = 0.f;
#pragma unroll
        for (int kh = 0; kh < 4; ++kh) {
          if (kh * 16 >= N) break;
          float s2[2][4];
          rows_x_rowsT<Tr, 2>(s2, sQ + wrow0 * Tr::kRowBytes, sK, N, dp, lane, kh * 2);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const float2 cf = *reinterpret_cast<const float2*>(inv + 64 + (kh * 2 + nt) * 8 + c0);
            const float(&x)[4] = dpf[kh * 2 + nt];
            ca0 = fmaf(x[0] * cf.x, s2[nt][0], fmaf(x[1] * cf.y, s2[nt][1], ca0));
            ca1 = fmaf(x[2] * cf.x, s2[nt][2], fmaf(x[3] * cf.y, s2[nt][3], ca1));
          }
        }
        const float dsw = warp_sum(rq0 * ca0 + rq1 * ca1);
        if (lane == 0) inv[128 + warp] += dsw;
        // dQ against the raw k rows: dS / ||k|| per column; dK against the
        // raw q rows: dS head_scale / ||q|| per row (staged).  Both packed
        // before the products, so that dS dies first.
        uint32_t dsq[kK16][4];
        const float m0 = s_h * rq0, m1 = s_h * rq1;
#pragma unroll
        for (int kv = 0; kv < kK16; ++kv) {
          const float2 c0f = *reinterpret_cast<const float2*>(inv + 64 + kv * 16 + c0);
          const float2 c1f = *reinterpret_cast<const float2*>(inv + 64 + kv * 16 + 8 + c0);
          const float(&x0)[4] = dpf[2 * kv];
          const float(&x1)[4] = dpf[2 * kv + 1];
          dsq[kv][0] = pack2<T>(x0[0] * c0f.x, x0[1] * c0f.y);
          dsq[kv][1] = pack2<T>(x0[2] * c0f.x, x0[3] * c0f.y);
          dsq[kv][2] = pack2<T>(x1[0] * c1f.x, x1[1] * c1f.y);
          dsq[kv][3] = pack2<T>(x1[2] * c1f.x, x1[3] * c1f.y);
          dsa[kv][0] = pack2<T>(x0[0] * m0, x0[1] * m0);
          dsa[kv][1] = pack2<T>(x0[2] * m1, x0[3] * m1);
          dsa[kv][2] = pack2<T>(x1[0] * m0, x1[1] * m0);
          dsa[kv][3] = pack2<T>(x1[2] * m1, x1[3] * m1);
        }
        zero_frags<Tr>(dq);
        regs_x_rows<Tr>(dq, dsq, sK, n_kq, dp, lane);  // the gradient of q^ / head_scale
        normalize_backward<Tr>(dq, sQ + wrow0 * Tr::kRowBytes, rq0, rq1, s_h, dp, lane);
      } else {
        pack_a<Tr>(dsa, dpf);
        zero_frags<Tr>(dq);
        regs_x_rows<Tr>(dq, dsa, sK, n_kq, dp, lane);  // dQ = dS K (kScaledDS: dS holds the scale; else at the store)
      }
    }
    if constexpr (Tr::kDSAlias) __syncthreads();  // every warp is done with K and V: P / dS may overwrite them
    if (active) {
      // dQ now (not held through dK, dV): through the warp's own rows of P
      // (written right after), or from the fragments.
      T* dimg = image_base(dqkv_h, b, p.img_qkv);
      if constexpr (Tr::kStagedOut) {
        store_out<Tr, true, Tr::kPRowBytes>(p, dq, Tr::kScaledDS ? 1.f : scale, 0, tok_w, sP + wrow0 * Tr::kPRowBytes,
                                            dimg, d, hd_i, lane);
      } else {
        store_out<Tr, false>(p, dq, Tr::kScaledDS ? 1.f : scale, 0, tok_w, nullptr, dimg, d, hd_i, lane);
      }
      stage_a<Tr>(sP + wrow0 * Tr::kPRowBytes, pa, n_kq, lane);
      if constexpr (!Tr::kSeqPdS) stage_a<Tr>(sdS + wrow0 * Tr::kPRowBytes, dsa, n_kq, lane);
    } else if constexpr (Tr::kTileAllKSteps) {  // (kSeqPdS: dS is staged over P, whose rows here stay zero)
      stage_zero<Tr>(sP + wrow0 * Tr::kPRowBytes, lane);
      if constexpr (!Tr::kSeqPdS) stage_zero<Tr>(sdS + wrow0 * Tr::kPRowBytes, lane);
    }
    __syncthreads();  // P (and dS) of every row are staged
    // The warp's 16 keys (the same positions as its rows): dV = P^T dO and
    // dK = dS^T Q (V2: the gradient of k^, then through the normalisation).
    // The padding keys among them (bit r), for the pad vector's gradient
    // (read from the table when needed: no register held over the images).
    const uint32_t pad_rows = p.padded ? padding_rows(tok_w, N - wrow0) : 0u;  // sass: skip(padded)
    float dk[Tr::kDN][4], dva[Tr::kDN][4];
    const auto grad_v = [&] {
      uint32_t at[kK16][4];
      staged_t_frags<Tr>(at, sP, wrow0, n_kq, lane);
      zero_frags<Tr>(dva);
      regs_x_rows<Tr>(dva, at, sdO, n_kq, dp, lane);
      if (pad_rows) add_padding_rows_frag<Tr>(dpad_w + Tr::kDPad, dva, pad_rows, dp, lane);  // sass: skip(padded)
      if constexpr (!Tr::kStagedOut) {
        store_out<Tr>(p, dva, 1.f, 2, tok_w, nullptr, image_base(dqkv_h, b, p.img_qkv), d, hd_i, lane);
      }
    };
    const auto grad_k = [&] {
      uint32_t at[kK16][4];
      staged_t_frags<Tr>(at, sdS, wrow0, n_kq, lane);
      zero_frags<Tr>(dk);
      regs_x_rows<Tr>(dk, at, sQ, n_kq, dp, lane);
      if constexpr (Tr::kV2) {
        normalize_backward<Tr>(dk, sK + wrow0 * Tr::kRowBytes, inv[64 + wrow0 + gr], inv[64 + wrow0 + gr + 8], 1.f, dp,
                               lane);
      } else if constexpr (!Tr::kScaledDS) {
#pragma unroll
        for (int dn = 0; dn < Tr::kDN; ++dn)
#pragma unroll
          for (int r = 0; r < 4; ++r) dk[dn][r] *= scale;
      }
      if (pad_rows) add_padding_rows_frag<Tr>(dpad_w, dk, pad_rows, dp, lane);  // sass: skip(padded)
      if constexpr (!Tr::kStagedOut) {
        store_out<Tr>(p, dk, 1.f, 1, tok_w, nullptr, image_base(dqkv_h, b, p.img_qkv), d, hd_i, lane);
      }
    };
    if constexpr (Tr::kSeqPdS) {  // P's product first, then dS over P once every warp has read it
      if (active) grad_v();
      __syncthreads();
      if constexpr (Tr::kLean) {
        // dO is consumed (every warp is past dV): dV, then dK, through the
        // warp's own dO rows as soon as each is formed (store_out ends with a
        // __syncwarp: the rows are free again).
        if (active) {
          store_out<Tr>(p, dva, 1.f, 2, tok_w, sdO + wrow0 * Tr::kRowBytes, image_base(dqkv_h, b, p.img_qkv), d,
                        hd_i, lane);
        }
      }
      if (active) stage_a<Tr>(sdS + wrow0 * Tr::kPRowBytes, dsa, n_kq, lane);
      __syncthreads();
      if (active) grad_k();
      if constexpr (Tr::kLean) {
        if (active) {
          store_out<Tr>(p, dk, 1.f, 1, tok_w, sdO + wrow0 * Tr::kRowBytes, image_base(dqkv_h, b, p.img_qkv), d,
                        hd_i, lane);
        }
      }
    } else {  // dK first: its normalisation (V2) runs with fewer live registers
      if (active) {
        grad_k();
        grad_v();
      }
    }
    if constexpr (Tr::kStagedOut && !Tr::kLean) {
      __syncthreads();  // P, dS, Q and dO are consumed: the warp's rows of the stage take its outputs
      if (active) {
        store_out_kv<Tr>(p, dk, dva, tok_w, sK + wrow0 * Tr::kRowBytes, sV + wrow0 * Tr::kRowBytes,
                         image_base(dqkv_h, b, p.img_qkv), d, hd_i, lane);
      }
    }
    if (Tr::kStages == 1) {
      __syncthreads();  // the stage is consumed before it is refilled
      if (vec && it + 1 < nimg) issue(b + 1, 0);
    }
  }

  // ---- once per block: the bias-gradient partial, the padding-key and V2 partials
  if (p.bias_table) {
    // The table's gradient: each row (bin) the sum of the chunk's dS over
    // its token pairs, one thread per row, in bias_bin_sum's fixed order; a
    // partial of bias_rows floats per (chunk, window, head).  First every
    // warp copies its fragment-order sums to its 16 rows of a plain [row][key]
    // array over its own quarter of the bias tile (dead now; only this warp
    // ever read it), so that a pair costs one shared load; then the block
    // barrier: every row is complete.
    static_assert(Tr::kBiasBytes == Tr::kTile * Tr::kTile * 4, "a float per (row, key) of the tile");
    float* sdb = reinterpret_cast<float*>(smem + Tr::kTBias);
    float* own = sdb + (wrow0 + gr) * Tr::kTile + c0;
    const float unscale = Tr::kScaledDS ? p.inv_scale : 1.f;  // the sums are of dS scale
    __syncwarp();
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const float4 v = dbw[nt * 32];
      *reinterpret_cast<float2*>(own + nt * 8) = make_float2(v.x * unscale, v.y * unscale);
      *reinterpret_cast<float2*>(own + 8 * Tr::kTile + nt * 8) = make_float2(v.z * unscale, v.w * unscale);
    }
    __syncthreads();
    float* dst = static_cast<float*>(p.dbias_part) +
                 ((static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h) * static_cast<uint32_t>(p.bias_rows);
    const BiasTableShape shape = BiasTableShape::make(g.wt, g.wh, g.ww);
    const auto dbias_at = [&](int i, int j) { return sdb[i * Tr::kTile + j]; };
    // (trips: the rows per thread; the bin's loops over the window's rows
    // and frames, innermost first, at most wh, wt trips: a row's pairs are
    // not a loop where the window is at most 8 wide.)
    for (int row = tid; row < p.bias_rows; row += Tr::kThreads) {  // sass: trips(bias_rows // kThreads + 1)
      int dt, dy, dx;
      bias_table_offsets(g, row, dt, dy, dx);
      if (shape.ww <= 8) {
        dst[row] = bias_bin_sum_narrow<float>(shape, dt, dy, dx, dbias_at);  // sass: trips(wh; wt)
      } else {  // sass: skip(wide)
        dst[row] = bias_bin_sum<float>(shape, dt, dy, dx, dbias_at);
      }
    }
  } else if (has_rows) {  // sass: skip(gathered)
    float* dst = static_cast<float*>(p.dbias_part) +
                 ((static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h) * (static_cast<uint64_t>(Nu) * Nu);
    const int i0 = wrow0 + gr, i1 = i0 + 8;
    const float unscale = Tr::kScaledDS ? p.inv_scale : 1.f;  // the sums are of dS scale
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int j = nt * 8 + c0;
      if (j >= N) break;
      float4 v = dbw[nt * 32];
      v.x *= unscale;
      v.y *= unscale;
      v.z *= unscale;
      v.w *= unscale;
      if (i0 < N) {
        dst[i0 * N + j] = v.x;
        if (j + 1 < N) dst[i0 * N + j + 1] = v.y;
      }
      if (i1 < N) {
        dst[i1 * N + j] = v.z;
        if (j + 1 < N) dst[i1 * N + j + 1] = v.w;
      }
    }
  }
  if (p.padded) {  // sass: skip(padded)
    __syncthreads();  // (the warps' own accumulators; a barrier keeps the slot writes simple)
    float* slot = static_cast<float*>(p.dpad_part) +
                  ((static_cast<int64_t>(chunk) * g.nW + win) * Tr::kWarps + warp) * 2 * p.heads * d;
    for (int c = lane; c < d; c += 32) {
      slot[static_cast<int64_t>(h) * d + c] = dpad_w[c];
      slot[(static_cast<int64_t>(p.heads) + h) * d + c] = dpad_w[Tr::kDPad + c];
    }
  }
  if constexpr (Tr::kV2) {  // d head_scale of this (chunk, window, head): the warps' sums in warp order
    const float* ds_w = inv + 128;
    __syncthreads();
    if (tid == 0) {
      float t = 0.f;
      for (int w2 = 0; w2 < Tr::kWarps; ++w2) t += ds_w[w2];
      static_cast<float*>(p.dscale_part)[(static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h] = t;
    }
  }
}


// ------------------------------------------------------------------ any N: key tiles, the window's dQ in one place

// Tokens (tab[0..63]) and shift regions (tab[64..127]) of rows [t0, t0 + 64)
// of the window, one per thread tid < 64; -1 / 0 past N.  (The tile tables of
// a window too large for its tables in shared memory: see win_tabs.)
__device__ __forceinline__ void tile_table(const Geom& g, const WinOrigin& wo, int t0, int* tab) {
  const int t = threadIdx.x;
  if (t < 64) {
    int tk = -1, rg = 0;
    if (t0 + t < g.N) window_token(g, wo, t0 + t, tk, rg);
    tab[t] = tk;
    tab[64 + t] = rg;
  }
}

// A lane's two query rows of a key-tiled step (rows g and g + 8 of its
// warp's 16).
struct RowPair {
  int i0, i1;                // rows of the window (>= N: past it)
  int rq0, rq1;              // their shift regions
  float lse0, lse1;          // lse in log2 units (+inf: P = 0)
  const float* brow0;        // the head's bias rows ((heads, N, N) form)
  const float* brow1;
  int rc0, rc1;              // table form: the rows' codes (entry (i, j): tblc[rc - code(j)])
  float iq0, iq1;            // V2: 1 / ||q||
};

// Fragment-order float32 storage of a 16 x kDPad tile: float4 [dn][lane]
// (f points at n-tile dn0 of this lane); kCols n-tiles at a time.
template <class Tr, int kCols>
__device__ __forceinline__ void frag_add(float (&x)[kCols][4], const float4* f, int dp, int dn0) {
#pragma unroll
  for (int dn = 0; dn < kCols; ++dn) {
    if (Tr::kD == 0 && (dn0 + dn) * 8 >= dp) break;
    const float4 v = f[dn * 32];
    x[dn][0] = v.x + x[dn][0];
    x[dn][1] = v.y + x[dn][1];
    x[dn][2] = v.z + x[dn][2];
    x[dn][3] = v.w + x[dn][3];
  }
}
// x = the stored tile (n-tiles past dp, generic head_dim: 0): no adds to a
// zeroed accumulator.
template <class Tr, int kCols>
__device__ __forceinline__ void frag_load(float (&x)[kCols][4], const float4* f, int dp, int dn0) {
#pragma unroll
  for (int dn = 0; dn < kCols; ++dn) {
    const float4 v = Tr::kD == 0 && (dn0 + dn) * 8 >= dp ? make_float4(0.f, 0.f, 0.f, 0.f) : f[dn * 32];
    x[dn][0] = v.x;
    x[dn][1] = v.y;
    x[dn][2] = v.z;
    x[dn][3] = v.w;
  }
}
template <class Tr, int kCols>
__device__ __forceinline__ void frag_store(float4* f, const float (&x)[kCols][4], int dp, int dn0) {
#pragma unroll
  for (int dn = 0; dn < kCols; ++dn) {
    if (Tr::kD == 0 && (dn0 + dn) * 8 >= dp) break;
    f[dn * 32] = make_float4(x[dn][0], x[dn][1], x[dn][2], x[dn][3]);
  }
}

// The end of a 16 x d output tile formed in fragment-order float32 storage
// f (kDN n-tiles): V2's normalisation against the raw rows `norm_rows`
// (null: none; inverse norms inv0 / inv1), times mul, the padding rows
// (bits of pad_mask) into dpad_acc, and the stores from the fragments,
// kDNH n-tiles at a time.
// kStagedOut (one column block): the stores go through `stage_rows` (the
// warp's 16 rows, dead by then; may be norm_rows: read first) as 16-byte rows.
template <class Tr>
__device__ __forceinline__ void finish_frags(const AttnParams& p, const float4* f, const unsigned char* norm_rows,
                                             float inv0, float inv1, float mul, int part, const int* tok_w,
                                             float* dpad_acc, uint32_t pad_mask, typename Tr::T* dimg, int d, int dp,
                                             int hd, int lane, unsigned char* stage_rows = nullptr) {
  constexpr int kC = Tr::kDNH;
  if constexpr (Tr::kStagedOut) {
    static_assert(Tr::kHalves == 1, "staged stores: one column block");
    float x[kC][4];
    frag_load<Tr, kC>(x, f, dp, 0);
    if (norm_rows != nullptr) {
      normalize_backward<Tr>(x, norm_rows, inv0, inv1, mul, dp, lane);
    } else {
#pragma unroll
      for (int n = 0; n < kC; ++n)
#pragma unroll
        for (int r = 0; r < 4; ++r) x[n][r] *= mul;
    }
    if (pad_mask) add_padding_rows_frag<Tr, kC>(dpad_acc, x, pad_mask, dp, lane);
    __syncwarp();  // the raw rows are read before the staging overwrites them
    store_out<Tr>(p, x, 1.f, part, tok_w, stage_rows, dimg, d, hd, lane);
    return;
  }
  float dot0 = 0.f, dot1 = 0.f;
  if (norm_rows != nullptr) {
#pragma unroll
    for (int hf = 0; hf < Tr::kHalves; ++hf) {
      float x[kC][4];
      frag_load<Tr, kC>(x, f + hf * kC * 32, dp, hf * kC);
      row_dots<Tr, kC>(x, norm_rows, hf * kC, dp, lane, dot0, dot1);
    }
    dot0 = quad_sum4(dot0) * inv0 * inv0;
    dot1 = quad_sum4(dot1) * inv1 * inv1;
  }
#pragma unroll
  for (int hf = 0; hf < Tr::kHalves; ++hf) {
    float x[kC][4];
    frag_load<Tr, kC>(x, f + hf * kC * 32, dp, hf * kC);
    if (norm_rows != nullptr) {
      project_rows<Tr, kC>(x, norm_rows, hf * kC, dp, lane, dot0, dot1, inv0 * mul, inv1 * mul);
    } else {
#pragma unroll
      for (int n = 0; n < kC; ++n)
#pragma unroll
        for (int r = 0; r < 4; ++r) x[n][r] *= mul;
    }
    if (pad_mask) add_padding_rows_frag<Tr, kC>(dpad_acc, x, pad_mask, dp, lane, hf * kC);
    store_out<Tr, false, Tr::kRowBytes, kC>(p, x, 1.f, part, tok_w, nullptr, dimg, d, hd, lane, hf * kC);
  }
}

template <class Tr, bool kDqSmem>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kWindowMinBlocks) attn_bwd_window_kernel(const AttnParams p) {
  using T = typename Tr::T;
  constexpr int kK16 = Tr::kK16, kDN = Tr::kDN, kTile = Tr::kTile;
  constexpr int kStages = Tr::kWKStages;
  static_assert(Tr::kWKStages == Tr::kWQStages, "one prefetch depth");
  constexpr int kPerPart = kTile * Tr::kVecs / Tr::kThreads;  // rows per thread and operand of a tile pair
  SWIN_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const Geom& g = p.g;
  const int N = g.N;
  // N unsigned in 64-bit offsets (no sign word to keep alive).
  const uint32_t Nu = static_cast<uint32_t>(N);
  const int d = Tr::kD ? Tr::kD : p.d;
  const int dp = Tr::kD ? Tr::kD : (d + 31) & ~31;  // generic: k-steps are taken in pairs
  const int C = p.C;

  // blockIdx.x = (chunk * nW + win) * heads + h
  int cw, h, chunk, win;
  p.div_heads.divmod(blockIdx.x, cw, h);
  p.div_nW.divmod(cw, chunk, win);
  const WinOrigin wo = window_origin(g, win);
  const int hd = h * d;

  int* tabk = reinterpret_cast<int*>(smem + Tr::kWTabK);  // [stage][tok, reg][64] (no win_tabs)
  int* tabq = reinterpret_cast<int*>(smem + Tr::kWTabQ);
  // The window's tile tables (win_tabs) and the bias table after the layout.
  const bool win_tabs = Tr::kWinTabs && p.win_tabs;
  int* wtab = reinterpret_cast<int*>(smem + Tr::window_smem((N + 15) & ~15, kDqSmem));
  float* dpad_w = reinterpret_cast<float*>(smem + Tr::kWDpad) + warp * 2 * Tr::kDPad;
  [[maybe_unused]] float* invk = reinterpret_cast<float*>(smem + Tr::kWInv);  // V2: [kstage][64]
  [[maybe_unused]] float* invq = invk + kStages * 64;                         // V2: [qstage][64]
  unsigned char* sKV = smem + Tr::kWKV;
  unsigned char* sQD = smem + Tr::kWQD;
  unsigned char* sP = smem + Tr::kWP;
  unsigned char* sdS = smem + Tr::kWdS;
  const int nkt = (N + kTile - 1) / kTile;  // key tiles (= query tiles): N / 64, a shift
  const int n16 = (N + 15) & ~15;
  // The block's float32 workspace (what is not in shared memory): formed at
  // each use, no global pointer held across the kernel.
  const auto ws_block = [&] {
    return static_cast<float*>(p.dq_ws) + static_cast<int64_t>(blockIdx.x) * Tr::window_ws(n16, kDqSmem);
  };
  const auto dqbuf = [&] {
    return kDqSmem ? reinterpret_cast<float4*>(smem + Tr::kWDq) : reinterpret_cast<float4*>(ws_block());
  };
  const auto kvacc = [&] {
    return Tr::kKVSmem ? reinterpret_cast<float4*>(smem + Tr::kWKVAcc)
                       : reinterpret_cast<float4*>(ws_block() + (kDqSmem ? 0 : int64_t(n16) * Tr::kDPad));
  };

  const T* qkv = static_cast<const T*>(p.qkv);
  const T* gout = static_cast<const T*>(p.grad_out);
  const int C8 = C >> 3, hd8 = hd >> 3, dv = d >> 3;
  // (the pad vector read from the parameters where used: no register held
  // across the image loop)
  const bool vec = p.vec;

  for (int e = tid; e < Tr::kWarps * 2 * Tr::kDPad; e += Tr::kThreads)  // sass: trips(kWarps * 2 * kDPad / kThreads)
    reinterpret_cast<float*>(smem + Tr::kWDpad)[e] = 0.f;

  // Issues rows [t0, t0 + 64) of two operands (kKV: k, v; else q, dO) of
  // image b into `tiles` (one tile after the other), with their table: by
  // tile_table, or (kWTabFromChunks) by the lanes of column chunk 0 from the
  // tokens they look up for their rows anyway.
  // With win_tabs, `tab` is the tile's part of the window tables (read only).
  auto issue_pair = [&](int b, bool kKV, int t0, unsigned char* tiles, int* tab) {
    if (!Tr::kWTabFromChunks && !win_tabs) tile_table(g, wo, t0, tab);  // sass: skip(pertile)
    const uint4* img16 = reinterpret_cast<const uint4*>(image_base(qkv, b, p.img_qkv));
    const uint4* go16 = reinterpret_cast<const uint4*>(image_base(gout, b, p.img_out));
    const int cv = tid % Tr::kVecs;
    static_assert(kPerPart * (Tr::kThreads / Tr::kVecs) == kTile, "the chunk-0 lanes cover the tile's rows");
#pragma unroll
    for (int u = 0; u < kPerPart; ++u) {
      const int row = tid / Tr::kVecs + u * (Tr::kThreads / Tr::kVecs), t = t0 + row;
      int tk = -1, rg = 0;
      if (win_tabs) {
        tk = tab[row];
      } else {  // sass: skip(pertile)
        if (t < N) window_token(g, wo, t, tk, rg);
        if (Tr::kWTabFromChunks && cv == 0) {
          tab[row] = tk;
          tab[64 + row] = rg;
        }
      }
      if (Tr::kD == 0 && cv * 8 >= dp) continue;  // never read
#pragma unroll
      for (int pi = 0; pi < 2; ++pi) {
        const int part = kKV ? 1 + pi : 3 * pi;
        issue_chunk(tiles + pi * Tr::kTileBytes + row * Tr::kRowBytes + cv * 16,
                    chunk_src(tk, t < N, part, cv, dv, C8, hd8, p.pad != nullptr), img16, go16,
                    static_cast<const uint4*>(p.pad), part);
      }
    }
  };

  const int b0 = chunk * p.chunk;
  const int nimg = min(p.chunk, p.B - b0);
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  const float scale = static_cast<float>(p.scale);
  const float l2e = static_cast<float>(kLog2e), ninf = neg_inf<float>();
  [[maybe_unused]] const float s_h = Tr::kV2 ? static_cast<const float*>(p.head_scale)[h] : 1.f;
  [[maybe_unused]] const float sh_log2 = s_h * l2e;
  const int gr = lane >> 2, c0 = 2 * (lane & 3);
  const int wrow0 = warp * kRowTile;
  // The head's (N, N) bias (the (heads, N, N) form), formed at each use: no
  // pointer held across the kernel.
  const auto bias_head = [&] {
    return static_cast<const float*>(p.bias) + static_cast<int64_t>(h) * (static_cast<uint64_t>(Nu) * Nu);
  };
  // The bias gradient's N x N sums over the chunk's images, read-modify-written
  // by each (i, j)'s owner lane: the partial itself, or (a table's gradient)
  // the block's workspace, binned into the table's rows at the end.
  const bool bin_dbias = p.dbias_ws != nullptr;
  const int64_t cwh = (static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h;
  float* dbias = static_cast<float*>(bin_dbias ? p.dbias_ws : p.dbias_part) + cwh * (static_cast<uint64_t>(Nu) * Nu);
  [[maybe_unused]] float ds_acc = 0.f;

  // The bias: the head's column of the relative-position table staged once in
  // log2 units (read through the tokens' codes: one shared load per entry), or
  // the (heads, N, N) form read from global memory.
  const bool table = Tr::kWinTabs && p.bias_table;  // (only with win_tabs: see run_bwd_mma)
  const float mask_l2 = kShiftMaskValue * l2e;
  float* tbl = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(wtab) + Tr::window_tabs_bytes(nkt));
  // entry (i, j) is row code(i) - code(j) + center (the row of offset 0): read through tblc = tbl + center
  const float* tblc = tbl + bias_table_row(BiasTableShape::make(g.wt, g.wh, g.ww), 0, 0, 0, 0, 0, 0);
  if (win_tabs) {  // every row's token, region and code | region << kTabCodeBits, once per block
    for (int t = tid; t < nkt * kTile; t += Tr::kThreads) {  // sass: trips(keytiles * 64 / kThreads)
      int tk = -1, rg = 0, cd = 0;  // (code 0 past N: such a row still indexes the table in bounds)
      if (t < N) {
        window_token(g, wo, t, tk, rg);
        cd = bias_table_code(g, t);
      }
      int* e = wtab + (t >> 6) * Tr::kWTabInts + (t & 63);
      e[0] = tk;
      e[64] = rg;
      e[128] = cd | (rg << kTabCodeBits);
    }
  }
  if (table) {
    const float* col = static_cast<const float*>(p.bias) + h;
    for (int r = tid; r < p.bias_rows; r += Tr::kThreads)  // sass: trips(bias_rows // kThreads + 1)
      tbl[r] = col[static_cast<int64_t>(r) * p.heads] * l2e;
  }
  // The tables of key tile kt (in stage s) and query tile st (in stage s).
  const auto tab_k = [&](int s, int kt) { return win_tabs ? wtab + kt * Tr::kWTabInts : tabk + s * Tr::kWStageTabInts; };
  const auto tab_q = [&](int s, int st) { return win_tabs ? wtab + st * Tr::kWTabInts : tabq + s * Tr::kWStageTabInts; };
  int kc = -1, sc = -1;  // key / query tiles taken so far (their stage parities)
  int cur_b = -1, cur_kt = -1, cur_st = -1;  // the image and tiles of the step being computed
  __syncthreads();
  if (vec) {
    issue_pair(b0, true, 0, sKV, tab_k(0, 0));
    issue_pair(b0, false, 0, sQD, tab_q(0, 0));
    cp_async_commit();
  }
  // Per image, two passes over the (key tile, query tile) steps: the D pass
  // (query tile outer: D = rowsum(P o dP) of the tile's rows, summed over the
  // key tiles in order, into the block's rows of the D scratch) and the main
  // pass (key tile outer: dS, dQ, dK, dV).  A step's k, v and q, dO are
  // issued only where they differ from the step before (the D pass reloads
  // k, v every step, the main pass q, dO).
  // The step after (b, pass, o, i) (pass 0: o the query tile, i the key tile;
  // pass 1: the other way round): its image and tiles, false past the chunk.
  const auto next_step = [&](int b, int pass, int o, int i, int& nb, int& nk, int& ns) {
    int np = pass, no = o, ni = i + 1;
    nb = b;
    if (ni == nkt) {
      ni = 0;
      if (++no == nkt) {
        no = 0;
        if (++np == 2) {
          np = 0;
          ++nb;
        }
      }
    }
    nk = np ? no : ni;
    ns = np ? ni : no;
    return nb < b0 + nimg;
  };
  const auto stage_of = [](int n) { return kStages == 2 ? (n & 1) : 0; };
  // The next step's new tiles, in flight while this step is computed.
  const auto issue_next = [&](int pass, int o, int i) {
    int nb, nk, ns;
    if (!next_step(cur_b, pass, o, i, nb, nk, ns)) return;
    if (nb != cur_b || nk != cur_kt) {
      const int s = stage_of(kc + 1);
      issue_pair(nb, true, nk * kTile, sKV + s * 2 * Tr::kTileBytes, tab_k(s, nk));
    }
    if (nb != cur_b || ns != cur_st) {
      const int s = stage_of(sc + 1);
      issue_pair(nb, false, ns * kTile, sQD + s * 2 * Tr::kTileBytes, tab_q(s, ns));
    }
    cp_async_commit();
  };
  // Takes the tiles of step (b, kt, st): their stages (ks, qs), the wait for
  // them (the scalar path: the gather), the block barrier, the next step's
  // issue (two stages) and V2's inverse norms of the new tiles.
  const auto begin_step = [&](int b, int pass, int o, int i, int kt, int st, int& ks, int& qs) {
    const bool knew = b != cur_b || kt != cur_kt, qnew = b != cur_b || st != cur_st;
    kc += knew;
    sc += qnew;
    cur_b = b;
    cur_kt = kt;
    cur_st = st;
    ks = stage_of(kc);
    qs = stage_of(sc);
    unsigned char* sK = sKV + ks * 2 * Tr::kTileBytes;
    unsigned char* sQ = sQD + qs * 2 * Tr::kTileBytes;
    if (vec) {
      cp_async_wait<0>();
    } else {  // sass: skip(scalar)
      const int kt0 = kt * kTile, q0 = st * kTile;
      if (knew && !win_tabs) tile_table(g, wo, kt0, tab_k(ks, kt));
      if (qnew && !win_tabs) tile_table(g, wo, q0, tab_q(qs, st));
      __syncthreads();
      const T* img = image_base(qkv, b, p.img_qkv);
      const T* go = image_base(gout, b, p.img_out);
      const T* pad = static_cast<const T*>(p.pad);
      if (knew) gather_scalar<Tr>(sK, img, go, pad, tab_k(ks, kt), 1, 1, 2, min(kTile, N - kt0), d, dp, C, hd);
      if (qnew) gather_scalar<Tr>(sQ, img, go, pad, tab_q(qs, st), 0, 3, 2, min(kTile, N - q0), d, dp, C, hd);
    }
    __syncthreads();  // this step's tiles and tables are complete; the previous step is consumed
    if (kStages == 2 && vec) issue_next(pass, o, i);
    if constexpr (Tr::kV2) {
      if (knew || qnew) {  // (block-uniform)
        if (tid < 64) {
          if (knew) invk[ks * 64 + tid] = staged_inv_norm<Tr>(sK + tid * Tr::kRowBytes, dp);
        } else if (qnew) {
          invq[qs * 64 + tid - 64] = staged_inv_norm<Tr>(sQ + (tid - 64) * Tr::kRowBytes, dp);
        }
        __syncthreads();
      }
    }
  };
  const auto end_step = [&](int pass, int o, int i) {
    if (kStages == 1) {
      __syncthreads();  // the step's tiles are consumed before they are refilled
      if (vec) issue_next(pass, o, i);
    }
  };
  // A lane's two query rows (g, g + 8 of the warp's 16) of query tile q0.
  const auto rows_of = [&](const float* lse, int q0, const int* tq, int qs) {
    RowPair r;
    r.i0 = q0 + wrow0 + gr;
    r.i1 = r.i0 + 8;
    r.lse0 = lse2_of(lse, r.i0, N);
    r.lse1 = lse2_of(lse, r.i1, N);
    r.rq0 = tq[64 + wrow0 + gr];
    r.rq1 = tq[64 + wrow0 + gr + 8];
    r.brow0 = bias_head() + static_cast<int64_t>(r.i0 < N ? r.i0 : 0) * Nu;  // (unread with a table)
    r.brow1 = bias_head() + static_cast<int64_t>(r.i1 < N ? r.i1 : 0) * Nu;
    r.rc0 = table ? tq[128 + wrow0 + gr] & kTabCodeMask : 0;
    r.rc1 = table ? tq[128 + wrow0 + gr + 8] & kTabCodeMask : 0;
    r.iq0 = Tr::kV2 ? invq[qs * 64 + wrow0 + gr] : 0.f;
    r.iq1 = Tr::kV2 ? invq[qs * 64 + wrow0 + gr + 8] : 0.f;
    return r;
  };
  // The log2-unit logits (x0, x1) of the lane's rows at column c of the key
  // tile (key j = kt0 + c; -inf past N) from the raw products s0, s1; V2 also
  // the cosines times ||q|| (cs0, cs1).
  const auto logits = [&](auto tab, const RowPair& r, const int* tk, int ks, int c, int j, float s0, float s1,
                          float& x0, float& x1, float& cs0, float& cs1) {
    // Straight-line (the table's choice a template argument, keys past N
    // selected away at the end): no branch per entry, so that ptxas issues an
    // n-tile's loads together (see the streaming forward's add_bias).
    float bb0, bb1;  // bias and mask, log2 units
    int rk;          // the key's shift region
    if constexpr (decltype(tab)::value) {  // the staged table column (rows, keys past N: in-bounds entries)
      const int v = tk[128 + c];  // code | region << kTabCodeBits
      bb0 = tblc[r.rc0 - (v & kTabCodeMask)];
      bb1 = tblc[r.rc1 - (v & kTabCodeMask)];
      rk = v >> kTabCodeBits;
    } else {  // sass: skip(gathered) (predicated loads: none past N)
      bb0 = r.i0 < N && j < N ? r.brow0[j] * l2e : 0.f;  // sass: skip(gathered)
      bb1 = r.i1 < N && j < N ? r.brow1[j] * l2e : 0.f;  // sass: skip(gathered)
      rk = p.masked ? tk[64 + c] : 0;  // sass: skip(gathered)
    }
    if (p.masked) {
      if (r.rq0 != rk) bb0 += mask_l2;
      if (r.rq1 != rk) bb1 += mask_l2;
    }
    if constexpr (Tr::kV2) {
      const float cf = invk[ks * 64 + c];
      cs0 = s0 * cf;
      cs1 = s1 * cf;
      x0 = fmaf(cs0, sh_log2 * r.iq0, bb0);
      x1 = fmaf(cs1, sh_log2 * r.iq1, bb1);
    } else {
      cs0 = cs1 = 0.f;
      x0 = fmaf(s0, scale_log2, bb0);
      x1 = fmaf(s1, scale_log2, bb1);
    }
    const bool in = j < N;
    x0 = in ? x0 : ninf;
    x1 = in ? x1 : ninf;
    cs0 = in ? cs0 : 0.f;
    cs1 = in ? cs1 : 0.f;
  };

  for (int it = 0; it < nimg; ++it) {  // sass: image-loop
    const int b = b0 + it;
    // lse's and D's rows of the image (one layout; D: this block's own rows,
    // written by the D pass, read back by the same warp after block
    // barriers), formed at each use: no pointer held across the passes.
    const auto rows_off = [&] { return ((static_cast<int64_t>(b) * g.nW + win) * p.heads + h) * Nu; };
    const auto lse_at = [&] { return static_cast<const float*>(p.lse) + rows_off(); };
    const auto Dw_at = [&] { return static_cast<float*>(p.Drow) + rows_off(); };
    // dqkv's image base, formed at each use (see image_base)
    const auto dimg_at = [&] { return image_base(static_cast<T*>(p.dqkv), b, p.img_qkv); };

    // ---- the D pass: D = rowsum(P o dP) (the tile kernel's D: no read of the
    // forward's output, which the op does not keep), S and dP in registers
    for (int st = 0; st < nkt; ++st) {  // sass: trips(keytiles)
      float dsum0 = 0.f, dsum1 = 0.f;  // the lane's part of its two rows' D, key tiles in order
      for (int kt = 0; kt < nkt; ++kt) {  // sass: trips(keytiles)
        int ks, qs;
        begin_step(b, 0, st, kt, kt, st, ks, qs);
        const int kt0 = kt * kTile, n_keys = min(kTile, N - kt0), q0 = st * kTile;
        const int n_tile_keys = Tr::kWindowAllNTiles ? kTile : n_keys;  // S, dP: see kWindowAllNTiles
        const int* tk = tab_k(ks, kt);
        const unsigned char* sK = sKV + ks * 2 * Tr::kTileBytes;
        const unsigned char* sV = sK + Tr::kTileBytes;
        const unsigned char* sQ = sQD + qs * 2 * Tr::kTileBytes;
        const unsigned char* sdO = sQ + Tr::kTileBytes;
        if (q0 + wrow0 < N) {
          const RowPair r = rows_of(lse_at(), q0, tab_q(qs, st), qs);
#pragma unroll
          for (int kh = 0; kh < 2; ++kh) {
            if (kh * 32 >= n_keys) break;
            float s[4][4], dpf[4][4];
            rows_x_rowsT<Tr, 4>(s, sQ + wrow0 * Tr::kRowBytes, sK, n_tile_keys, dp, lane, kh * 4);
            rows_x_rowsT<Tr, 4>(dpf, sdO + wrow0 * Tr::kRowBytes, sV, n_tile_keys, dp, lane, kh * 4);
            const auto dsum_half = [&](auto tab) {
#pragma unroll
              for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int c = (kh * 4 + nt) * 8 + c0 + e;
                  float x0, x1, cs0, cs1;
                  logits(tab, r, tk, ks, c, kt0 + c, s[nt][e], s[nt][2 + e], x0, x1, cs0, cs1);
                  dsum0 = fmaf(bexp2(x0 - r.lse0), dpf[nt][e], dsum0);
                  dsum1 = fmaf(bexp2(x1 - r.lse1), dpf[nt][2 + e], dsum1);
                }
              }
            };
            if (table) {
              dsum_half(std::true_type{});
            } else {  // sass: skip(gathered)
              dsum_half(std::false_type{});  // sass: skip(gathered)
            }
          }
          if (kt == nkt - 1) {  // the rows' D: the quad's parts (padding rows: dO = 0, D = 0)
            const float D0 = quad_sum4(dsum0), D1 = quad_sum4(dsum1);
            if ((lane & 3) == 0) {
              if (r.i0 < N) Dw_at()[r.i0] = D0;
              if (r.i1 < N) Dw_at()[r.i1] = D1;
            }
          }
        }
        end_step(0, st, kt);
      }
    }

    // ---- the main pass
    for (int kt = 0; kt < nkt; ++kt) {  // sass: trips(keytiles)
      const int kt0 = kt * kTile, n_keys = min(kTile, N - kt0);
      const int n_tile_keys = Tr::kWindowAllNTiles ? kTile : n_keys;  // S, dP: see kWindowAllNTiles
      const bool active_k = kt0 + wrow0 < N;
      for (int st = 0; st < nkt; ++st) {  // sass: trips(keytiles)
        int ks, qs;
        begin_step(b, 1, kt, st, kt, st, ks, qs);
        const int* tk = tab_k(ks, kt);
        unsigned char* sK = sKV + ks * 2 * Tr::kTileBytes;
        unsigned char* sV = sK + Tr::kTileBytes;
        const int q0 = st * kTile, n_q = min(kTile, N - q0);
        const int* tq = tab_q(qs, st);
        unsigned char* sQ = sQD + qs * 2 * Tr::kTileBytes;
        unsigned char* sdO = sQ + Tr::kTileBytes;
        const bool last_kt = kt == nkt - 1, last_st = st == nkt - 1;

        // ---- rows of this warp: S, dP, P, dS in registers; dQ += dS K; P, dS staged
        if (q0 + wrow0 < N) {
          const RowPair r = rows_of(lse_at(), q0, tq, qs);
          const int i0 = r.i0, i1 = r.i1;
          // D of the rows, from the D pass (rows past N: P = 0, D unused)
          const float D0 = i0 < N ? Dw_at()[i0] : 0.f, D1 = i1 < N ? Dw_at()[i1] : 0.f;
          [[maybe_unused]] const float iq0 = r.iq0, iq1 = r.iq1;
          // dS (V2: dS / ||k||) as the A fragments of dQ += dS K.  Zeroed: the
          // k-steps past n_keys are never formed, and an array defined on some
          // paths only stays live around the loops (a register per element).
          uint32_t dsa[kK16][4] = {};
          // 32-key halves of the key tile (D is known: half the fragments live at a time).
#pragma unroll
          for (int kh = 0; kh < 2; ++kh) {
            if (kh * 32 >= n_keys) break;
            float s[4][4], dpf[4][4];
            if constexpr (Tr::kV2)
              rows_x_rowsT<Tr, 4>(dpf, sdO + wrow0 * Tr::kRowBytes, sV, n_tile_keys, dp, lane, kh * 4);
            rows_x_rowsT<Tr, 4>(s, sQ + wrow0 * Tr::kRowBytes, sK, n_tile_keys, dp, lane, kh * 4);
            [[maybe_unused]] float ca0 = 0.f, ca1 = 0.f, cb0 = 0.f, cb1 = 0.f;
            const auto p_half = [&](auto tab) {
#pragma unroll
              for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int c = (kh * 4 + nt) * 8 + c0 + e;
                  float x0, x1;
                  [[maybe_unused]] float cs0, cs1;  // V2: q.k / ||k|| (the cosine times ||q||)
                  logits(tab, r, tk, ks, c, kt0 + c, s[nt][e], s[nt][2 + e], x0, x1, cs0, cs1);
                  const float p0 = bexp2(x0 - r.lse0), p1 = bexp2(x1 - r.lse1);
                  if constexpr (Tr::kV2) {  // d head_scale: sum_j dS cos = sum_j P dP c - D sum_j P c, over ||q||
                    cb0 = fmaf(p0, cs0, cb0);
                    cb1 = fmaf(p1, cs1, cb1);
                    ca0 = fmaf(p0 * dpf[nt][e], cs0, ca0);
                    ca1 = fmaf(p1 * dpf[nt][2 + e], cs1, ca1);
                  }
                  s[nt][e] = p0;
                  s[nt][2 + e] = p1;
                }
              }
            };
            if (table) {
              p_half(std::true_type{});
            } else {  // sass: skip(gathered)
              p_half(std::false_type{});  // sass: skip(gathered)
            }
            if constexpr (!Tr::kV2)
              rows_x_rowsT<Tr, 4>(dpf, sdO + wrow0 * Tr::kRowBytes, sV, n_tile_keys, dp, lane, kh * 4);
            if constexpr (Tr::kV2) ds_acc += iq0 * (ca0 - D0 * cb0) + iq1 * (ca1 - D1 * cb1);
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {  // dS = P o (dP - D)
              dpf[nt][0] = s[nt][0] * (dpf[nt][0] - D0);
              dpf[nt][1] = s[nt][1] * (dpf[nt][1] - D0);
              dpf[nt][2] = s[nt][2] * (dpf[nt][2] - D1);
              dpf[nt][3] = s[nt][3] * (dpf[nt][3] - D1);
            }
            {
              // The chunk's bias gradient, by its owner lane, into the block's N x N
              // sums, kRmwNT n-tiles at a time: their entries' old sums loaded
              // before any is stored (predicated, no branch per entry), so that
              // the half's 16 read-modify-writes wait for about one load latency,
              // not for 16 in a row (they did before: a branch per entry).
              float* drow0 = dbias + static_cast<int64_t>(i0 < N ? i0 : 0) * Nu;
              float* drow1 = dbias + static_cast<int64_t>(i1 < N ? i1 : 0) * Nu;
              constexpr int kRmwNT = 4;  // (the whole half; 2 or 1 spilled in ptxas's V1 schedules)
#pragma unroll
              for (int n2 = 0; n2 < 4; n2 += kRmwNT) {
                float old[kRmwNT][4];
#pragma unroll
                for (int n = 0; n < kRmwNT; ++n) {
#pragma unroll
                  for (int e = 0; e < 2; ++e) {
                    const int j = kt0 + (kh * 4 + n2 + n) * 8 + c0 + e;
                    old[n][e] = it != 0 && i0 < N && j < N ? drow0[j] : 0.f;
                    old[n][2 + e] = it != 0 && i1 < N && j < N ? drow1[j] : 0.f;
                  }
                }
#pragma unroll
                for (int n = 0; n < kRmwNT; ++n) {
#pragma unroll
                  for (int e = 0; e < 2; ++e) {
                    const int j = kt0 + (kh * 4 + n2 + n) * 8 + c0 + e;
                    const float* d = dpf[n2 + n];
                    if (i0 < N && j < N) drow0[j] = it == 0 ? d[e] : old[n][e] + d[e];
                    if (i1 < N && j < N) drow1[j] = it == 0 ? d[2 + e] : old[n][2 + e] + d[2 + e];
                  }
                }
              }
            }
#pragma unroll
            for (int k2 = 0; k2 < 2; ++k2) {  // the half's two k-steps: P and dS staged, dS kept for dQ
              const int kv = kh * 2 + k2;
              if (kv * 16 >= n_keys) break;
              uint32_t a[4];
              pack_kstep<Tr>(a, s[2 * k2], s[2 * k2 + 1]);
              stage_kstep<Tr>(sP + wrow0 * Tr::kPRowBytes, a, kv, lane);
              if constexpr (Tr::kV2) {  // dQ against the raw k rows: dS / ||k||; dK against the raw q rows: dS head_scale / ||q||
                const float2 f0 = *reinterpret_cast<const float2*>(invk + ks * 64 + kv * 16 + c0);
                const float2 f1 = *reinterpret_cast<const float2*>(invk + ks * 64 + kv * 16 + 8 + c0);
                const float(&x0)[4] = dpf[2 * k2];
                const float(&x1)[4] = dpf[2 * k2 + 1];
                const float t0[4] = {x0[0] * f0.x, x0[1] * f0.y, x0[2] * f0.x, x0[3] * f0.y};
                const float t1[4] = {x1[0] * f1.x, x1[1] * f1.y, x1[2] * f1.x, x1[3] * f1.y};
                pack_kstep<Tr>(dsa[kv], t0, t1);
                const float m0 = s_h * iq0, m1 = s_h * iq1;
                const float u0[4] = {x0[0] * m0, x0[1] * m0, x0[2] * m1, x0[3] * m1};
                const float u1[4] = {x1[0] * m0, x1[1] * m0, x1[2] * m1, x1[3] * m1};
                pack_kstep<Tr>(a, u0, u1);
                stage_kstep<Tr>(sdS + wrow0 * Tr::kPRowBytes, a, kv, lane);
              } else {
                pack_kstep<Tr>(dsa[kv], dpf[2 * k2], dpf[2 * k2 + 1]);
                stage_kstep<Tr>(sdS + wrow0 * Tr::kPRowBytes, dsa[kv], kv, lane);
              }
            }
          }
          // dQ of the window: this key tile's part added in a fixed order
          // (key tile 0 first), kDNH n-tiles at a time.
          float4* fq = dqbuf() + ((q0 + wrow0) / 16 * kDN) * 32 + lane;
#pragma unroll
          for (int hf = 0; hf < Tr::kHalves; ++hf) {
            float acc[Tr::kDNH][4];
#pragma unroll
            for (int n = 0; n < Tr::kDNH; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
            regs_x_rows<Tr, Tr::kDNH>(acc, dsa, sK, n_keys, dp, lane, hf * Tr::kDNH);
            if (kt > 0) frag_add<Tr, Tr::kDNH>(acc, fq + hf * Tr::kDNH * 32, dp, hf * Tr::kDNH);
            if (last_kt && Tr::kHalves == 1 && !Tr::kStagedOut) {  // complete: stored from the fragments
              if constexpr (Tr::kV2) normalize_backward<Tr>(acc, sQ + wrow0 * Tr::kRowBytes, iq0, iq1, s_h, dp, lane);
              store_out<Tr>(p, acc, scale, 0, tq + wrow0, nullptr, dimg_at(), d, hd, lane);
            } else {
              frag_store<Tr, Tr::kDNH>(fq + hf * Tr::kDNH * 32, acc, dp, hf * Tr::kDNH);
            }
          }
          if (last_kt && !Tr::kStagedOut) {  // the window's dQ rows of this warp are complete
            if constexpr (Tr::kHalves > 1) {
              finish_frags<Tr>(p, fq, Tr::kV2 ? sQ + wrow0 * Tr::kRowBytes : nullptr, iq0, iq1, Tr::kV2 ? s_h : scale, 0,
                               tq + wrow0, nullptr, 0, dimg_at(), d, dp, hd, lane);
            }
          }
        }
        __syncthreads();  // P and dS of the query tile are staged

        // ---- keys of this warp: dV += P^T dO, dK += dS^T Q over the query tile
        if (active_k) {
          uint32_t at[kK16][4];
          // The padding keys among the warp's (bit r), for the pad vector's gradient at the last step.
          const uint32_t pm = p.padded && last_st ? padding_rows(tk + wrow0, n_keys - wrow0) : 0u;
#pragma unroll
          for (int pass = 0; pass < 2; ++pass) {  // 0: dV, 1: dK
            // Every k-step loaded (past n_q: rows never read by the product; an
            // array loaded on some paths only would stay live around the loops).
            staged_t_frags<Tr>(at, pass ? sdS : sP, wrow0, kTile, lane);
            float* dpad_acc = dpad_w + (pass ? 0 : Tr::kDPad);
            const float kmul = pass ? scale : 1.f;
            {  // float32 accumulators (shared memory or the workspace), kDNH n-tiles at a time
              float4* fkv = kvacc() + ((pass * kTile + wrow0) / 16 * kDN) * 32 + lane;
#pragma unroll
              for (int hf = 0; hf < Tr::kHalves; ++hf) {
                float acc[Tr::kDNH][4];
#pragma unroll
                for (int n = 0; n < Tr::kDNH; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
                if (st > 0) frag_add<Tr, Tr::kDNH>(acc, fkv + hf * Tr::kDNH * 32, dp, hf * Tr::kDNH);
                regs_x_rows<Tr, Tr::kDNH>(acc, at, pass ? sQ : sdO, n_q, dp, lane, hf * Tr::kDNH);
                frag_store<Tr, Tr::kDNH>(fkv + hf * Tr::kDNH * 32, acc, dp, hf * Tr::kDNH);
              }
              if (last_st) {
                const bool norm = Tr::kV2 && pass;
                finish_frags<Tr>(p, fkv, norm ? sK + wrow0 * Tr::kRowBytes : nullptr,
                                 norm ? invk[ks * 64 + wrow0 + gr] : 0.f, norm ? invk[ks * 64 + wrow0 + gr + 8] : 0.f,
                                 kmul, pass ? 1 : 2, tk + wrow0, pm ? dpad_acc : nullptr, pm, dimg_at(), d, dp, hd, lane,
                                 (pass ? sK : sV) + wrow0 * Tr::kRowBytes);
              }
            }
          }
        }
        if (Tr::kStagedOut && last_kt) {
          __syncthreads();  // q and dO of the tile are consumed: the warp's q rows take its dQ
          if (q0 + wrow0 < N) {  // from the buffer (not held in registers through dK, dV)
            unsigned char* q_rows = sQ + wrow0 * Tr::kRowBytes;
            [[maybe_unused]] const float* iq = invq + qs * 64 + wrow0 + gr;
            finish_frags<Tr>(p, dqbuf() + ((q0 + wrow0) / 16 * kDN) * 32 + lane, Tr::kV2 ? q_rows : nullptr,
                             Tr::kV2 ? iq[0] : 0.f, Tr::kV2 ? iq[8] : 0.f, Tr::kV2 ? s_h : scale, 0, tq + wrow0, nullptr,
                             0, dimg_at(), d, dp, hd, lane, q_rows);
          }
        }
        end_step(1, kt, st);
      }
    }
  }

  // ---- once per block: the table's gradient, the padding-key and V2 partials
  if (bin_dbias) {  // each table row the sum of its token pairs, one thread per row, in bias_bin_sum's order
    __syncthreads();  // every (i, j) sum of the chunk is in the workspace (and visible to the block)
    float* dst = static_cast<float*>(p.dbias_part) + cwh * static_cast<uint32_t>(p.bias_rows);
    const BiasTableShape shape = BiasTableShape::make(g.wt, g.wh, g.ww);
    const auto dbias_at = [&](int i, int j) { return dbias[static_cast<int64_t>(i) * Nu + j]; };
    // (trips: the rows per thread; the bin's loops over frames, rows and
    // columns of the window, innermost first, at most ww, wh, wt trips.)
    for (int row = tid; row < p.bias_rows; row += Tr::kThreads) {  // sass: trips(bias_rows // kThreads + 1)
      int dt, dy, dx;
      bias_table_offsets(g, row, dt, dy, dx);
      dst[row] = bias_bin_sum<float>(shape, dt, dy, dx, dbias_at);  // sass: trips(ww; wh; wt)
    }
  }
  if (p.padded) {  // sass: skip(padded)
    __syncthreads();
    float* slot = static_cast<float*>(p.dpad_part) +
                  ((static_cast<int64_t>(chunk) * g.nW + win) * Tr::kWarps + warp) * 2 * p.heads * d;
    for (int c = lane; c < d; c += 32) {
      slot[static_cast<int64_t>(h) * d + c] = dpad_w[c];
      slot[(static_cast<int64_t>(p.heads) + h) * d + c] = dpad_w[Tr::kDPad + c];
    }
  }
  if constexpr (Tr::kV2) {
    const float w = warp_sum(ds_acc);
    float* ds_w = invq + kStages * 64;
    __syncthreads();
    if (lane == 0) ds_w[warp] = w;
    __syncthreads();
    if (tid == 0) {
      float t = 0.f;
      for (int w2 = 0; w2 < Tr::kWarps; ++w2) t += ds_w[w2];
      static_cast<float*>(p.dscale_part)[(static_cast<int64_t>(chunk) * g.nW + win) * p.heads + h] = t;
    }
  }
}

}  // namespace bwd
}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
