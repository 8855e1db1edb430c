// Division by a run-time constant without a divide instruction: the divisor's
// magic multiplier is computed once on the host (Granlund & Montgomery, "Division
// by invariant integers using multiplication", PLDI 1994, theorem 4.2;
// CUTLASS's FastDivmod is the same idea), the kernel does one 32 x 32 -> 64-bit
// multiply and a shift.  Exact for dividends in [0, 2^31) and divisors in
// [1, 2^31); the kernels' block, token and pixel indices are (the glue
// checks their 32-bit geometry).
//
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>

#include "cuda_compat.h"

namespace swin_ext {
namespace cuda {

struct FastDiv {
  int d = 1;
  uint32_t mul = 0x80000000u;  // ceil(2^(31 + l) / d), l = ceil(log2 d)
  uint32_t shift = 31;         // 31 + l

  // Host: the multiplier of divisor d >= 1.
  static FastDiv make(int divisor) {
    FastDiv f;
    f.d = divisor < 1 ? 1 : divisor;
    int l = 0;
    while ((int64_t(1) << l) < f.d) ++l;
    f.shift = 31u + static_cast<uint32_t>(l);
    const uint64_t p = uint64_t(1) << f.shift;
    f.mul = static_cast<uint32_t>((p + static_cast<uint64_t>(f.d) - 1) / static_cast<uint64_t>(f.d));
    return f;
  }
  // n / d for 0 <= n < 2^31.
  __host__ __device__ __forceinline__ int div(int n) const {
    return static_cast<int>((static_cast<uint64_t>(static_cast<uint32_t>(n)) * mul) >> shift);
  }
  // q = n / d, r = n - q d.
  __host__ __device__ __forceinline__ void divmod(int n, int& q, int& r) const {
    q = div(n);
    r = n - q * d;
  }
};

}  // namespace cuda
}  // namespace swin_ext
