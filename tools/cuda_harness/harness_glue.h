// Shared by the swin_ext_harness glue files: the harness's Backend for the
// shipped CUDA glue (csrc/cuda/cuda_glue.h: CPU tensors, the swin_ext_harness
// library) and the ATen <-> CUDA-type helpers.  Include after the ATen
// headers; pulls in the harness via cuda_compat.h.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#ifndef SWIN_CUDA_HARNESS
#error "the swin_ext_harness extension is compiled with -DSWIN_CUDA_HARNESS"
#endif
#include "cuda/cuda_compat.h"

namespace swin_harness_ops {

// Outputs the kernels must write are allocated filled with NaN: an element
// that no kernel writes shows up in the comparison with the reference.
inline at::Tensor poisoned(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), opts);
}

// The Backend the shipped glue is compiled with here (see cuda_glue.h).
struct HarnessBackend {
  struct Guard {
    explicit Guard(const c10::Device&) {}
  };
  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), "swin_ext_harness runs on CPU tensors, got ", name, " on ",
                t.device());
  }
  static cudaStream_t stream() { return nullptr; }
  static at::Tensor output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    return poisoned(sizes, opts);
  }
  static void check_launch() {}  // the harness throws from the launch itself
};

}  // namespace swin_harness_ops

#define SWIN_CUDA_GLUE_BACKEND ::swin_harness_ops::HarnessBackend
#define SWIN_CUDA_GLUE_IMPL(m) TORCH_LIBRARY_IMPL(swin_ext_harness, CPU, m)
#include "cuda/cuda_glue.h"

namespace swin_harness_ops {

using swin_ext::cuda_glue::cuda_t;
using swin_ext::cuda_glue::mut_ptr;
using swin_ext::cuda_glue::ptr;

}  // namespace swin_harness_ops
