// The patch-merging kernels of every dtype combination the glue dispatches
// to, in a translation unit of their own (compiled in parallel with the
// others).  ATen-free: the CPU harness compiles this file too.
#define SWIN_MERGE_INSTANTIATING
#include "patch_merging.cuh"

namespace swin_ext {
namespace cuda {
#define SWIN_MERGE_INSTANTIATE(TX, TB, TY) SWIN_MERGE_LAUNCHERS(, TX, TB, TY)
SWIN_MERGE_TYPES(SWIN_MERGE_INSTANTIATE)
}  // namespace cuda
}  // namespace swin_ext
