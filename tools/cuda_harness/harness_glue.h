// Shared by the swin_ext_harness glue files: ATen <-> CUDA-type helpers.
// Include after the ATen headers; pulls in the harness via cuda_compat.h.
#pragma once

#include <ATen/ATen.h>

#include <limits>

#ifndef SWIN_CUDA_HARNESS
#error "the swin_ext_harness extension is compiled with -DSWIN_CUDA_HARNESS"
#endif
#include "cuda/cuda_compat.h"
#include "cuda/ops_glue.h"

namespace swin_harness_ops {

using swin_ext::cuda_glue::cuda_t;
using swin_ext::cuda_glue::mut_ptr;
using swin_ext::cuda_glue::ptr;

// Outputs the kernels must write are allocated filled with NaN: an element
// that no kernel writes shows up in the comparison with the reference.
inline at::Tensor poisoned(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), opts);
}

}  // namespace swin_harness_ops
