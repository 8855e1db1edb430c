// The tensor-core window-attention backward for __half, the generic head_dim (0: any other):
// its launches and kernels (V1 and V2), in a translation unit of its own so
// the backward compiles in parallel (launch_template.cuh,
// SWIN_ATTN_BWD_INSTANTIATE).  ATen-free: the CPU harness compiles this file
// too (docs/kernels.md).
#include "launch_template.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {
SWIN_ATTN_BWD_INSTANTIATE(__half, 0)
}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
