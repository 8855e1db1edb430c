// What the ATen glue sees of the attention kernels: a plan (launch shape,
// shared memory, workspaces) and a run, per element type.  Defined in
// launch_template.cuh and instantiated once per dtype in
// attention/attention_<dtype>.cu (split translation units, compiled in
// parallel), so the glue does not instantiate any kernel itself.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>

#include "../cuda_compat.h"
#include "params.h"

namespace swin_ext {
namespace cuda {
namespace attn {

struct FwdPlan {
  int nwarps = 0, n_row_blocks = 0, smem = 0;
  int64_t blocks = 0;
  // bf16 / fp16: the one-tile kernel (N <= 64; blocks over chunks of images)
  // or the streaming one; fp32 / fp64: the SIMT kernel.
  bool tile = false;
  bool bias_expanded = false;  // the kernel needs the (heads, N, N) bias: the glue expands a table
  // The streaming kernel: the window's tables (and a table bias) in shared
  // memory, formed once per block (AttnParams::win_tabs), where they fit the
  // smallest device's 99 KB; else each tile's are formed as it is issued.
  bool win_tabs = false, table_smem = false;
  int chunk = 1, n_chunks = 1;
};

// Forced choice of the backward kernels (tests; SWIN_EXT_ATTN_BWD).  kTile4:
// the tile kernel's four-blocks-per-SM form where it exists (V1, head_dim 32,
// bf16 / fp16; bwd::BwdMmaLeanTraits), else as kAuto.  kPerTile: the
// key-tiled kernel without the window's tables in shared memory (each tile's
// table formed as it is issued, a bias table expanded by the glue), the path
// of a window whose tables do not fit; else as kAuto.
enum class BwdChoice : int { kAuto = 0, kFused = 1, kStreaming = 2, kTile4 = 3, kPerTile = 4 };

// p: geometry, sizes and flags filled (pointers may be null).  chunk > 0
// forces the images per block of the one-tile kernel (tests), else a rule of
// the shape and, when sms > 0, the device's SM count (fwd_chunk; the outputs
// do not depend on it).
template <typename T>
FwdPlan attention_fwd_plan(const AttnParams& p, int chunk = 0, bool per_tile = false, int sms = 0);
template <typename T>
cudaError_t attention_fwd_run(AttnParams p, const FwdPlan& plan, cudaStream_t stream);

// smem_optin: the device's opt-in shared memory per block.  The fused
// kernel is chosen when the window fits one tile and its shared memory fits
// the device (unless `choice` forces a path; a forced fused path that does
// not fit falls back to the streaming one and says so in plan.path).
// chunk > 0 forces the images per block (tests), else a rule of the shape.
template <typename T>
BwdPlan attention_bwd_plan(const AttnParams& p, int smem_optin, BwdChoice choice, int chunk = 0);
template <typename T>
cudaError_t attention_bwd_run(AttnParams p, const BwdPlan& plan, cudaStream_t stream);

// The relative-position table form of the bias (bias_table_kernels.cuh), A =
// float or double (the accumulation type): the table (bias_rows, heads) ->
// the (heads, N, N) bias the kernels without a table read take, and their
// (heads, N, N) bias gradient -> the table's (bias_rows, heads), binned in a
// fixed order.  p: geometry (divisors set), heads and bias_rows.
template <typename A>
cudaError_t bias_table_expand(const AttnParams& p, const void* table, void* full, cudaStream_t stream);
template <typename A>
cudaError_t bias_table_bin(const AttnParams& p, const void* dfull, void* dtable, cudaStream_t stream);

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
