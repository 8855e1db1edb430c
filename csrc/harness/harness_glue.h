// Shared by the swin_ext_harness glue files: ATen <-> CUDA-type helpers.
// Include after the ATen headers; pulls in the harness via cuda_compat.h.
#pragma once

#include <ATen/ATen.h>

#include <limits>

#ifndef SWIN_CUDA_HARNESS
#error "the swin_ext_harness extension is compiled with -DSWIN_CUDA_HARNESS"
#endif
#include "../cuda/cuda_compat.h"

namespace swin_harness_ops {

// at::Half / at::BFloat16 -> the CUDA types the kernels use (same layout).
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

// Outputs the kernels must write are allocated filled with NaN: an element
// that no kernel writes shows up in the comparison with the reference.
inline at::Tensor poisoned(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), opts);
}

template <typename T>
inline const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}
template <typename T>
inline T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

}  // namespace swin_harness_ops
