// swin_ext_harness::<every swin_ext op>: the project's CUDA kernels *and
// their ATen glue* (csrc/cuda/ops_glue.h, the
// same code ops_cuda.cu registers for CUDA tensors) run by the CPU harness on
// CPU tensors, with the schemas and semantics of swin_ext::*.
//
// One difference on purpose: every output and workspace the kernels must
// write is allocated filled with NaN, so an element that no kernel writes
// shows up in the comparison with the reference (on a GPU it would hold
// whatever was in memory).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "harness_glue.h"

namespace swin_harness_ops {
namespace {

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

}  // namespace
}  // namespace swin_harness_ops

TORCH_LIBRARY_IMPL(swin_ext_harness, CPU, m) {
  swin_ext::cuda_glue::register_kernels<swin_harness_ops::HarnessBackend>(m);
}
