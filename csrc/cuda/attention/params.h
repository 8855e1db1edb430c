// Parameters of the window-attention kernels (one struct, as flash.h does),
// filled by the ATen glue and passed by value to every kernel.
//
// All geometry is 32-bit: the glue checks that every size and every token
// index of one image fits (T * H * W < 2^31, windows per image < 2^31, ...).
// Only the per-image base offsets are 64-bit.
#pragma once

#include <cstdint>

#include "../fast_div.h"

namespace swin_ext {
namespace cuda {
namespace attn {

constexpr int kMaxHeadDim = 128;  // the largest head_dim the CUDA kernels take

// Window geometry of one image (a 2-D map or a 3-D clip), as
// swin_geometry.h defines it, in 32 bits.  A 2-D map is the clip of one
// frame with a window of depth 1 (T = Tp = wt = 1, st = 0): one code path.
struct Geom {
  int T, H, W;        // unpadded map
  int Tp, Hp, Wp;     // padded to a window multiple
  int wt, wh, ww, N;  // window per axis, tokens per window (wt * wh * ww)
  int nWh, nWw, nW;   // windows along H and W, windows per image
  int st, sh, sw;     // cyclic shift per axis
  // Divisors of the token tables, precomputed on the host (set_divisors):
  // token t -> (frame, row, column) by wh * ww and ww; window -> (wz, wy, wx)
  // by nWw and nWh; a row of the relative-position bias table (bias_table.h)
  // -> its offsets (dt, dy, dx) by (2wh - 1)(2ww - 1) and 2ww - 1.
  FastDiv div_area, div_ww, div_nWw, div_nWh, div_rel_hw, div_rel_w;
  void set_divisors() {
    div_area = FastDiv::make(wh * ww);
    div_ww = FastDiv::make(ww);
    div_nWw = FastDiv::make(nWw);
    div_nWh = FastDiv::make(nWh);
    div_rel_hw = FastDiv::make((2 * wh - 1) * (2 * ww - 1));
    div_rel_w = FastDiv::make(2 * ww - 1);
  }
  // Tokens per image (frames x rows x columns).
  __host__ __device__ __forceinline__ int tokens() const { return T * H * W; }
};

struct AttnParams {
  // Inputs (device pointers; element types are the kernel's T and acc_t).
  const void* qkv = nullptr;       // (B, [T,] H, W, 3C)
  const void* bias = nullptr;      // (heads, N, N) acc_t, or the table (bias_rows, heads) when bias_table
  const void* pad = nullptr;       // (3C,) or null: zero padding
  const void* lse = nullptr;       // (B, nW, heads, N) acc_t (backward input)
  const void* grad_out = nullptr;  // (B, [T,] H, W, C) (backward)
  // Outputs and workspaces.
  void* out = nullptr;             // (B, [T,] H, W, C) forward output
  void* lse_out = nullptr;         // (B, nW, heads, N) acc_t forward output
  void* dqkv = nullptr;            // (B, [T,] H, W, 3C)
  void* dbias_part = nullptr;      // (n_chunks, nW, heads, N, N) acc_t partials; (n_chunks, nW, heads,
                                   // bias_rows) for a table (BwdPlan::dbias_binned: binned by the kernel)
  void* dbias_ws = nullptr;        // key-tiled tensor-core backward, table form: the (n_chunks, nW, heads,
                                   // N, N) float sums over each block's images, binned at the block's end
  void* dpad_part = nullptr;       // (n_dpad_slots, 2, heads, d) acc_t partials, null when unpadded
  void* Dbuf = nullptr;            // (B, nW, heads, N) acc_t, streaming backward only (SIMT)
  void* Drow = nullptr;            // lse's shape, float: D = rowsum(P o dP) per row (key-tiled tensor-core backward's scratch)
  void* dq_ws = nullptr;           // float32 dQ workspace (streamed key-tiled tensor-core backward)
  // Swin V2 (cosine attention): q and k rows L2-normalised, q times a
  // per-head scale s_h (logits = s_h * q^.k^ + bias + mask; p.scale is 1).
  bool qk_norm = false;
  const void* head_scale = nullptr;  // (heads,) acc_t
  void* dscale_part = nullptr;       // (n_dscale_slots, heads) acc_t partials of d head_scale (backward)

  // The relative-position table form of the bias (bias_table.h): `bias` is
  // (bias_rows, heads), entry (i, j) of head h at table[row(i, j) * heads + h]
  // with the standard index implied by the window.  The tensor-core kernels
  // read it (the tile backward; the key-tiled backward and the streaming
  // forward from a shared-memory copy where it fits); the glue expands it for
  // every other kernel.
  bool bias_table = false;
  int bias_rows = 0;
  // The key-tiled tensor-core kernels (the backward, the streaming forward):
  // the window's tile tables (and a bias table) in shared memory after their
  // layout (set by the launcher from its plan).
  bool win_tabs = false;

  Geom g{};
  int B = 0, heads = 0, d = 0, C = 0;
  int64_t img_qkv = 0;  // T * H * W * 3C: elements per image (clip) of qkv / dqkv
  int64_t img_out = 0;  // T * H * W * C: elements per image (clip) of out / grad_out
  double scale = 1.0;
  bool masked = false;  // shift active (st, sh or sw > 0)
  bool padded = false;  // the map has padding tokens (T, H or W not a window multiple)
  bool vec = false;     // every row slice is 16-byte aligned: vector loads / stores

  // Divisors of the block decode, precomputed on the host (the launcher).
  FastDiv div_heads, div_nW, div_rb;

  // Launch shape (set by the launcher's plan).
  int nwarps = 0;       // warps per block actually launched
  int n_row_blocks = 0; // query-row (or key) blocks per window
  int chunk = 1;        // images per block (backward: bias partials per chunk)
  int n_chunks = 1;

  // (float) (1 / scale): the V1 one-tile kernels' bias tile is (bias + mask)
  // * inv_scale (tile_folds_bias), and the tile backward's bias-gradient sums
  // of dS scale (bf16) are multiplied by it.  Last, so that the fields above
  // keep their offsets: placed after `scale`, it moved them and the tile
  // backward came out at 166 registers and its lean form spilled.
  float inv_scale = 1.f;
};

// Which backward kernels run, and the workspaces they need (elements of acc_t).
//   kFused:     one block per (window, head, chunk) holding the whole window:
//               the SIMT fused kernel (fp32 / fp64, N <= 64) or the
//               tensor-core tile kernel (bf16 / fp16, N <= 64);
//   kWindow:    bf16 / fp16, the key-tiled fused kernel with q, dO and dQ of
//               the window resident in shared memory;
//   kStreaming: the SIMT dq + dk/dv pair (fp32 / fp64), or (bf16 / fp16) the
//               key-tiled fused kernel with q, dO streamed per query tile
//               and dQ in a float32 workspace.
enum class BwdPath : int { kFused = 0, kStreaming = 1, kWindow = 2 };

struct BwdPlan {
  BwdPath path = BwdPath::kFused;
  int chunk = 1, n_chunks = 1;
  int nwarps = 0, nwarps_dkv = 0;
  int n_row_blocks = 0, n_key_blocks = 0;
  int64_t dbias_part_elems = 0;  // n_chunks * nW * heads * N * N, or * bias_rows when dbias_binned
  bool dbias_binned = false;     // the kernel bins dbias into table rows (bias_table, tensor-core kernels)
  int64_t dbias_ws_elems = 0;    // n_chunks * nW * heads * N * N: the key-tiled kernel's sums to bin
  bool tile4 = false;            // the tile kernel's four-blocks-per-SM form (BwdChoice::kTile4)
  bool bias_expanded = false;    // the kernels need the (heads, N, N) bias: the glue expands a table
  bool win_tabs = false;         // the key-tiled kernel keeps the window's tile tables in shared memory
  bool table_smem = false;       // ... and reads the bias table from there (bias_table; needs win_tabs)
  int64_t dpad_slots = 0;        // rows of the (slots, 2, heads, d) dpad partials (0: unpadded)
  int64_t dbuf_elems = 0;        // B * nW * heads * N (streaming only)
  int64_t dscale_slots = 0;      // rows of the (slots, heads) d head_scale partials (qk_norm only)
  int64_t drow_elems = 0;        // B * nW * heads * N (lse's elements): the key-tiled kernel's D scratch
  int64_t dq_ws_elems = 0;       // float32 dQ workspace of the streamed key-tiled kernel
  int smem = 0, smem_dkv = 0;    // dynamic shared memory of the launches
};

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
