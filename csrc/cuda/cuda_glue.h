// The CUDA glue's shared part: what every op's ATen glue
// (csrc/cuda/<op>_cuda.cu) uses -- the Backend it is compiled for, the
// ATen -> CUDA type map, raw pointers, the 32-bit indexing bound, and the
// dtype mixes of the fused LayerNorm kernels (add_layernorm, patch_merging).
//
// Each op's glue (argument checks, dtype dispatch, allocation of outputs and
// workspaces, the launch, the deterministic reduction of the partials) is
// written once, templated on a Backend, and compiled twice:
//   * by nvcc into swin_ext._C: Backend = CudaBackend (below), registered for
//     CUDA tensors (swin_ext::*);
//   * by the CPU execution harness, which includes the glue files with its
//     own Backend, for CPU tensors (swin_ext_harness::*), so the tests
//     exercise this very glue, not a copy of it.
// The build names the two with macros (nvcc: defined here; the harness
// defines them before it includes this header):
//   SWIN_CUDA_GLUE_BACKEND   the Backend type;
//   SWIN_CUDA_GLUE_IMPL(m)   opens an op file's registration block
//                            (TORCH_LIBRARY_IMPL of the library and key).
//
// A Backend provides:
//   using Guard = ...;                    constructed from the tensors' device
//   static void check_device(const at::Tensor&, const char* name);
//   static cudaStream_t stream();
//   static at::Tensor output(at::IntArrayRef, const at::TensorOptions&);
//                                         storage the kernels must fully write
//   static void check_launch();
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../checks.h"
#include "common.cuh"
#include "layernorm_stats.cuh"  // SWIN_LN_DTYPE_MIXES
#include "partials.cuh"

#if defined(__CUDACC__)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace swin_ext {
namespace cuda_glue {

// CUDA tensors, on the current stream under a device guard.
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

}  // namespace cuda_glue
}  // namespace swin_ext

#define SWIN_CUDA_GLUE_BACKEND ::swin_ext::cuda_glue::CudaBackend
#define SWIN_CUDA_GLUE_IMPL(m) TORCH_LIBRARY_IMPL(swin_ext, CUDA, m)
#elif !defined(SWIN_CUDA_GLUE_BACKEND) || !defined(SWIN_CUDA_GLUE_IMPL)
#error "csrc/cuda/cuda_glue.h: compile with nvcc, or define SWIN_CUDA_GLUE_BACKEND and SWIN_CUDA_GLUE_IMPL first"
#endif

namespace swin_ext {
namespace cuda_glue {

// The Backend of this build (see the top of the file).
using GlueBackend = SWIN_CUDA_GLUE_BACKEND;

// The current device's SM count, for the launch plans that size their grids
// in waves of resident blocks (0 when unreadable: the plans then ignore
// waves).  Not cached: the runtime answers from its device table, and the CPU
// harness reads its emulated device from the environment at every call.
inline int64_t device_sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

// at::Half / at::BFloat16 -> the CUDA types the kernels are written for
// (same layout).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using cuda_t = typename CudaType<T>::type;

// ... and back: the ScalarType of a type the kernels are written for.
template <typename T>
constexpr at::ScalarType scalar_type_of() {
  if constexpr (std::is_same_v<T, __half>) return at::kHalf;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return at::kBFloat16;
  else return c10::CppTypeToScalarType<T>::value;  // float, double
}

template <typename T>
inline const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}
template <typename T>
inline T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

// The largest index the kernels' 32-bit indexing holds.
constexpr int64_t kMaxInt32 = (int64_t(1) << 31) - 1;

// ------------------------------------------------------------------ partial rows

// A backward kernel's dweight and dbias partial rows, (rows, n) each, in one
// workspace (2, rows, n): [0] for dweight, [1] for dbias; every element is
// written by the kernel.
template <typename Backend>
at::Tensor partial_pair_workspace(int64_t rows, int64_t n, const at::TensorOptions& opts) {
  return Backend::output({2, rows, n}, opts);
}

// Their column sums, in one launch of the fixed-order reduction
// (partials.cuh): bitwise reproducible run to run.
template <typename Backend>
std::pair<at::Tensor, at::Tensor> sum_partial_pair(const at::Tensor& part, cudaStream_t stream) {
  const int64_t rows = part.size(1), n = part.size(2);
  at::Tensor a = Backend::output({n}, part.options()), b = Backend::output({n}, part.options());
  AT_DISPATCH_FLOATING_TYPES(part.scalar_type(), "swin_ext sum_partials", [&] {
    cuda::launch_sum_partials<scalar_t>(part.const_data_ptr<scalar_t>(), a.mutable_data_ptr<scalar_t>(),
                                        b.mutable_data_ptr<scalar_t>(), rows, n, stream);
  });
  Backend::check_launch();
  return {a, b};
}

// ------------------------------------------------------------------ LayerNorm dtype mixes

// Whether (x / h, branch, y) is one of the fused combinations
// (SWIN_LN_DTYPE_MIXES: one dtype throughout, or the autocast mixes of a
// float32 residual stream with a bf16 / fp16 branch and output); every other
// mix runs promoted (see add_layernorm_fwd, add_layernorm_cuda.cu).
inline bool add_layernorm_fused_dtypes(at::ScalarType tx, at::ScalarType tb, at::ScalarType ty) {
#define SWIN_GLUE_LN_FUSED(TX, TB, TY) \
  if (tx == scalar_type_of<TX>() && tb == scalar_type_of<TB>() && ty == scalar_type_of<TY>()) return true;
  SWIN_LN_DTYPE_MIXES(SWIN_GLUE_LN_FUSED)
#undef SWIN_GLUE_LN_FUSED
  return false;
}

// Calls f.template operator()<TX, TB, TY>() with the CUDA types of a fused
// combination (add_layernorm_fused_dtypes); refuses any other.
template <class F>
void dispatch_add_layernorm(at::ScalarType tx, at::ScalarType tb, at::ScalarType ty, const char* what, F&& f) {
#define SWIN_GLUE_LN_CASE(TX, TB, TY)                                                            \
  if (tx == scalar_type_of<TX>() && tb == scalar_type_of<TB>() && ty == scalar_type_of<TY>()) \
    return f.template operator()<TX, TB, TY>();
  SWIN_LN_DTYPE_MIXES(SWIN_GLUE_LN_CASE)
#undef SWIN_GLUE_LN_CASE
  TORCH_CHECK(false, "swin_ext.add_layernorm (CUDA): ", what, " dtypes (", tx, ", ", tb, ", ", ty,
              ") are not supported: one dtype throughout, or a float32 residual stream with a float16 / "
              "bfloat16 branch or output");
}

// The dtype every other combination runs in: float64 if any is float64, else float32.
inline at::ScalarType add_layernorm_promoted(at::ScalarType tx, at::ScalarType tb, at::ScalarType ty) {
  return (tx == at::kDouble || tb == at::kDouble || ty == at::kDouble) ? at::kDouble : at::kFloat;
}

}  // namespace cuda_glue
}  // namespace swin_ext
