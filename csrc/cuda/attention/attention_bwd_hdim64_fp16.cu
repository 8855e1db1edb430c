// The tensor-core window-attention backward for __half, head_dim 64:
// its launches and kernels (V1 and V2), in a translation unit of its own so
// the backward compiles in parallel (launch_template.cuh,
// SWIN_ATTN_BWD_INSTANTIATE).  ATen-free: the CPU harness compiles this file
// too (docs/kernels.md).
#include "launch_template.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {
SWIN_ATTN_BWD_INSTANTIATE(__half, 64)
}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
