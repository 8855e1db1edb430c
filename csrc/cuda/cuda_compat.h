// Included first by every CUDA kernel header (csrc/cuda/*.cuh).
//
// The kernel headers are compiled twice, from the same source:
//   * by nvcc (__CUDACC__) for the GPU, into swin_ext._C;
//   * by the host C++ compiler with -DSWIN_CUDA_HARNESS, where
//     the CPU execution harness runs every CUDA thread of a block as a
//     fiber on the CPU (the test-only swin_ext_harness extension, outside
//     csrc/ because it does not ship; see docs/kernels.md).
//
// Kernel headers stay ATen-free: raw pointers, sizes, a cudaStream_t.  Use
//   SWIN_LAUNCH_KERNEL(kernel, grid, block, smem_bytes, stream, args...)
//       instead of kernel<<<grid, block, smem_bytes, stream>>>(args...);
//       wrap a template instantiation in parentheses:
//       SWIN_LAUNCH_KERNEL((attn_fwd_kernel<float, 32>), grid, block, smem, stream, ...)
//   SWIN_DYNAMIC_SHARED(type, name);
//       instead of extern __shared__ type name[];  (a `type*` named `name`)
//   swin_ldg16(p) / swin_stg16(p, v)
//       one 128-bit global load (read-only path) / store of a uint4.
#pragma once

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#define SWIN_LAUNCH_KERNEL(kernel, grid, block, smem_bytes, stream, ...) \
  kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__)

// One untyped extern array (templates instantiated with different types would
// otherwise declare conflicting `extern __shared__ T name[]`).
#define SWIN_DYNAMIC_SHARED(type, name)                                   \
  extern __shared__ __align__(128) unsigned char swin_dyn_smem[];         \
  type* name = reinterpret_cast<type*>(swin_dyn_smem)

// 16-byte global accesses as single 128-bit instructions (the compiler may
// otherwise split a vector store assembled from packed halves).  p must be
// 16-byte aligned; loads go through the read-only (non-coherent) path, so
// only for data no kernel of the same launch writes.
__device__ __forceinline__ uint4 swin_ldg16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ void swin_stg16(void* p, const uint4& v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

#elif defined(SWIN_CUDA_HARNESS)

// Only the test-only harness build defines SWIN_CUDA_HARNESS: the same kernel
// source then needs the harness's CUDA runtime, which the harness build puts
// on the include path (it is a test tool and does not ship).
#include "cuda_harness.h"  // on the harness build's include path; not shipped

#define SWIN_LAUNCH_KERNEL(kernel, grid, block, smem_bytes, stream, ...) \
  ::swin_harness::launch(#kernel, kernel, (grid), (block), (smem_bytes), (stream), ##__VA_ARGS__)

#define SWIN_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::swin_harness::dynamic_shared_memory())

// 16-byte accesses (see the nvcc branch); alignment is checked here, as a
// misaligned vector access faults on a GPU.
inline uint4 swin_ldg16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ::swin_harness::detail::kernel_fail("swin_ldg16: address not 16-byte aligned");
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline void swin_stg16(void* p, const uint4& v) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ::swin_harness::detail::kernel_fail("swin_stg16: address not 16-byte aligned");
  std::memcpy(p, &v, 16);
}

#else
#error "csrc/cuda/cuda_compat.h: compile with nvcc, or with -DSWIN_CUDA_HARNESS for the CPU harness"
#endif
