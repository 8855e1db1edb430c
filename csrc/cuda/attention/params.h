// Parameters of the window-attention kernels (one struct, as flash.h does),
// filled by the ATen glue and passed by value to every kernel.
//
// All geometry is 32-bit: the glue checks that every size and every token
// index of one image fits (H * W < 2^31, windows per image < 2^31, ...).
// Only the per-image base offsets are 64-bit.
#pragma once

#include <cstdint>

#include "fast_div.h"

namespace swin_ext {
namespace cuda {
namespace attn {

constexpr int kMaxHeadDim = 128;  // the largest head_dim the CUDA kernels take

// Window geometry of one image, as swin_geometry.h defines it, in 32 bits.
struct Geom {
  int H, W;      // unpadded map
  int Hp, Wp;    // padded to a window multiple
  int ws, N;     // window side, tokens per window
  int nWw, nW;   // windows along W, windows per image
  int sh, sw;    // cyclic shift
  // Divisors of the token tables, precomputed on the host (set_divisors).
  FastDiv div_ws, div_nWw;
  void set_divisors() {
    div_ws = FastDiv::make(ws);
    div_nWw = FastDiv::make(nWw);
  }
};

struct AttnParams {
  // Inputs (device pointers; element types are the kernel's T and acc_t).
  const void* qkv = nullptr;       // (B, H, W, 3C)
  const void* bias = nullptr;      // (heads, N, N) acc_t
  const void* pad = nullptr;       // (3C,) or null: zero padding
  const void* lse = nullptr;       // (B, nW, heads, N) acc_t (backward input)
  const void* grad_out = nullptr;  // (B, H, W, C) (backward)
  // Outputs and workspaces.
  void* out = nullptr;             // (B, H, W, C) forward output
  void* lse_out = nullptr;         // (B, nW, heads, N) acc_t forward output
  void* dqkv = nullptr;            // (B, H, W, 3C)
  void* dbias_part = nullptr;      // (n_chunks, nW, heads, N, N) acc_t partials
  void* dpad_part = nullptr;       // (n_dpad_slots, 2, heads, d) acc_t partials, null when unpadded
  void* Dbuf = nullptr;            // (B, nW, heads, N) acc_t, streaming backward only (SIMT)
  const void* out_fwd = nullptr;   // (B, H, W, C) float32: the forward's output recomputed (key-tiled tensor-core backward)
  void* Drow = nullptr;            // (B, H, W, heads) float: rowsum(dO o O) per token and head (the same)
  void* dq_ws = nullptr;           // float32 dQ workspace (streamed key-tiled tensor-core backward)
  // Swin V2 (cosine attention): q and k rows L2-normalised, q times a
  // per-head scale s_h (logits = s_h * q^.k^ + bias + mask; p.scale is 1).
  bool qk_norm = false;
  const void* head_scale = nullptr;  // (heads,) acc_t
  void* dscale_part = nullptr;       // (n_dscale_slots, heads) acc_t partials of d head_scale (backward)

  Geom g{};
  int B = 0, heads = 0, d = 0, C = 0;
  int64_t img_qkv = 0;  // H * W * 3C: elements per image of qkv / dqkv
  int64_t img_out = 0;  // H * W * C: elements per image of out / grad_out
  double scale = 1.0;
  bool masked = false;  // shift active (sh or sw > 0)
  bool padded = false;  // the map has padding tokens (H or W not a window multiple)
  bool vec = false;     // every row slice is 16-byte aligned: vector loads / stores

  // Divisors of the block decode, precomputed on the host (the launcher).
  FastDiv div_heads, div_nW, div_rb;

  // Launch shape (set by the launcher's plan).
  int nwarps = 0;       // warps per block actually launched
  int n_row_blocks = 0; // query-row (or key) blocks per window
  int chunk = 1;        // images per block (backward: bias partials per chunk)
  int n_chunks = 1;
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
  int64_t dbias_part_elems = 0;  // n_chunks * nW * heads * N * N
  int64_t dpad_slots = 0;        // rows of the (slots, 2, heads, d) dpad partials (0: unpadded)
  int64_t dbuf_elems = 0;        // B * nW * heads * N (streaming only)
  int64_t dscale_slots = 0;      // rows of the (slots, heads) d head_scale partials (qk_norm only)
  int64_t drow_elems = 0;        // B * H * W * heads: D = rowsum(dO o O) per (token, head) (key-tiled kernels)
  int64_t dq_ws_elems = 0;       // float32 dQ workspace of the streamed key-tiled kernel
  int smem = 0, smem_dkv = 0;    // dynamic shared memory of the launches
};

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
