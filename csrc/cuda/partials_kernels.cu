// The partial-row reduction (partials.cuh) for float and double, in a
// translation unit of its own.  ATen-free: the CPU harness compiles this file too.
#define SWIN_PARTIALS_INSTANTIATING
#include "partials.cuh"

namespace swin_ext {
namespace cuda {
SWIN_PARTIALS_LAUNCHER(, float)
SWIN_PARTIALS_LAUNCHER(, double)
}  // namespace cuda
}  // namespace swin_ext
