// Device helpers shared by the swin_ext CUDA kernels: accumulation types,
// conversions, warp reductions.  ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>

#include "../swin_geometry.h"  // ceil_div
#include "cuda_compat.h"

namespace swin_ext {
namespace cuda {

// Host-side launch planning: the number of steps, in [fewest, most], that each
// block of a grid walks one after another, `per_step` items a step, so that
// the grid's blocks (of `resident` the device holds at once) finish soonest.
// The kernel takes about (waves of blocks) x (steps per block) -- each step
// waits on its loads and a reduction -- so the fewest of that product wins,
// the most steps on a tie (each block also writes a partial row).  resident
// <= 0: `most`.  The register backwards of patch merging and add+LN plan
// with it.
inline int64_t fewest_wave_steps(int64_t items, int64_t per_step, int64_t most, int64_t fewest, int64_t resident) {
  if (resident <= 0) return most;
  auto cost = [&](int64_t s) { return ceil_div<int64_t>(ceil_div<int64_t>(items, per_step * s), resident) * s; };
  int64_t best = most;
  for (int64_t s = most - 1; s >= fewest && s >= 1; --s)
    if (cost(s) < cost(best)) best = s;
  return best;
}

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(double v) {
  return static_cast<T>(v);
}

// Accurate exp / log / rsqrt in the accumulation type (softmax in fp32 even
// for half inputs; the official fp16 code overflows here).
__device__ __forceinline__ float acc_exp(float v) { return expf(v); }
__device__ __forceinline__ double acc_exp(double v) { return exp(v); }
__device__ __forceinline__ float acc_log(float v) { return logf(v); }
__device__ __forceinline__ double acc_log(double v) { return log(v); }
__device__ __forceinline__ float acc_rsqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double acc_rsqrt(double v) { return rsqrt(v); }
__device__ __forceinline__ float acc_exp2(float v) { return exp2f(v); }
__device__ __forceinline__ double acc_exp2(double v) { return exp2(v); }
__device__ __forceinline__ float acc_log2(float v) { return log2f(v); }
__device__ __forceinline__ double acc_log2(double v) { return log2(v); }
// 1 / sqrt(v): float as 1 / sqrtf (the CPU kernels' rounding), double as rsqrt.
__device__ __forceinline__ float acc_inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double acc_inv_sqrt(double v) { return rsqrt(v); }
__device__ __forceinline__ float acc_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double acc_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float acc_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double acc_abs(double v) { return fabs(v); }
__device__ __forceinline__ int acc_ilogb(float v) { return ilogbf(v); }
__device__ __forceinline__ int acc_ilogb(double v) { return ilogb(v); }
__device__ __forceinline__ float acc_ldexp(float v, int e) { return ldexpf(v, e); }
__device__ __forceinline__ double acc_ldexp(double v, int e) { return ldexp(v, e); }
__device__ __forceinline__ float acc_erf(float v) { return erff(v); }
__device__ __forceinline__ double acc_erf(double v) { return erf(v); }
__device__ __forceinline__ float acc_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double acc_max(double a, double b) { return fmax(a, b); }

// Zero of any element type (all-zero bits), without the half / bfloat16
// conversion operators that torch builds disable.
template <typename T>
__device__ __forceinline__ T zero_value() {
  T z;
  unsigned char* p = reinterpret_cast<unsigned char*>(&z);
#pragma unroll
  for (unsigned i = 0; i < sizeof(T); ++i) p[i] = 0;
  return z;
}

template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return -__int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000ll);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// fmax: lane-consistent with NaNs (a comparison with NaN is asymmetric).
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = acc_max(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Reductions over aligned groups of `width` lanes (a power of two <= 32).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int width) {
  for (int m = width >> 1; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
template <typename T>
__device__ __forceinline__ T group_max(T v, int width) {
  for (int m = width >> 1; m > 0; m >>= 1) v = acc_max(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

}  // namespace cuda
}  // namespace swin_ext
