// The bias + GELU kernels of every dtype, in a translation unit of their own
// (compiled in parallel with the others).  ATen-free: the CPU harness
// compiles this file too.
#define SWIN_BIAS_GELU_INSTANTIATING
#include "bias_gelu.cuh"

namespace swin_ext {
namespace cuda {
#define SWIN_BIAS_GELU_INSTANTIATE(T) SWIN_BIAS_GELU_LAUNCHERS(, T)
SWIN_BIAS_GELU_TYPES(SWIN_BIAS_GELU_INSTANTIATE)
}  // namespace cuda
}  // namespace swin_ext
