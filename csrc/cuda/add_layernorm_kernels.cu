// The add + LayerNorm kernels of every dtype combination the glue dispatches
// to, in a translation unit of their own (compiled in parallel with the
// others).  ATen-free: the CPU harness compiles this file too.
#define SWIN_ADD_LN_INSTANTIATING
#include "add_layernorm.cuh"

namespace swin_ext {
namespace cuda {
#define SWIN_ADD_LN_INSTANTIATE(TX, TB, TY) SWIN_ADD_LN_LAUNCHERS(, TX, TB, TY)
SWIN_LN_DTYPE_MIXES(SWIN_ADD_LN_INSTANTIATE)
}  // namespace cuda
}  // namespace swin_ext
