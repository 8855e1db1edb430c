// Registration of the CUDA kernels: the shared ATen glue (ops_glue.h)
// instantiated for CUDA tensors, on the current stream under a device guard.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops_glue.h"

namespace swin_ext {
namespace {

struct CudaBackend {
  using Guard = c10::cuda::CUDAGuard;
  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), "swin_ext: CUDA kernel called with ", name, " on ", t.device());
  }
  static cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }
  static at::Tensor output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    return at::empty(sizes, opts);
  }
  static void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
};

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CUDA, m) { cuda_glue::register_kernels<CudaBackend>(m); }

}  // namespace swin_ext
