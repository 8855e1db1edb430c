// Window-attention kernels for __nv_bfloat16: every head_dim specialisation of the
// forward, and the entry points of both directions, instantiated in a
// translation unit of its own so the four dtypes compile in parallel; the
// backward's launches are one unit per head_dim (attention_bwd_hdim*_bf16.cu).
// ATen-free: the CPU harness compiles this file too (the CPU execution
// harness; docs/kernels.md).
#include "launch_template.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {
SWIN_ATTN_BWD_EXTERN(__nv_bfloat16)  // (attention_bwd_hdim*_bf16.cu)
SWIN_ATTN_INSTANTIATE(__nv_bfloat16)
}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
