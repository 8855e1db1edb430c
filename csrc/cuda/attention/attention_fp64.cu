// Window-attention kernels for double: every head_dim specialisation of the
// forward and backward, instantiated in a translation unit of its own so the
// four dtypes compile in parallel.  ATen-free: the CPU harness compiles this
// file too (the CPU execution harness; docs/kernels.md).
#include "launch_template.cuh"

namespace swin_ext {
namespace cuda {
namespace attn {
SWIN_ATTN_INSTANTIATE(double)
}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
