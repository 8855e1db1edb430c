// Warp-level tensor-core primitives of the attention kernels, as inline PTX
// behind small typed wrappers (the shape of CUTLASS's / CuTe's SM80 atoms):
//
//   mma_16816<T>(d, a, b, c)      mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32,
//                                 T = __nv_bfloat16 (bf16) or __half (f16)
//   ldsm<kNum, kTrans>(r, row)    ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16
//   stsm4(row, r)                 stmatrix.sync.aligned.m8n8.x4.shared.b16 (sm_90; store_a_tile:
//                                 the portable store of a 16 x 16 fragment tile)
//   cp_async16(dst, src[, bytes]) cp.async.cg.shared.global, 16 bytes (bytes < 16: zero fill)
//   cp_async_commit(), cp_async_wait<N>()   commit_group / wait_group N
//   pack2<T>(lo, hi)              two floats -> one .b32 register of T (round to nearest)
//
// One code path for bf16 and fp16: only the PTX type suffix differs.  Every
// lane of the warp must execute mma / ldmatrix (.aligned).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with
// floating point type"), g = lane / 4, t = lane % 4; a .b32 register holds two
// 16-bit elements, the lower column (or k) in its low half:
//   A (16 x 16, row):  a[0] = (g, 2t..2t+1)    a[1] = (g+8, 2t..2t+1)
//                      a[2] = (g, 2t+8..2t+9)  a[3] = (g+8, 2t+8..2t+9)
//   B (16 x 8, col):   b[0] = (k 2t..2t+1, n g)  b[1] = (k 2t+8..2t+9, n g)
//   C, D (16 x 8 f32): c[0] = (g, 2t)  c[1] = (g, 2t+1)  c[2] = (g+8, 2t)  c[3] = (g+8, 2t+1)
// ldmatrix: lanes 8m..8m+7 give the addresses of rows 0..7 of matrix m (16
// bytes each, 16-byte aligned, shared memory); lane l receives register m =
// (row l/4, columns 2(l%4), 2(l%4)+1) of matrix m, of its transpose with .trans.
// Hence: ldsm<4> of the 16 x 16 tile whose matrices are (rows 0-7, cols 0-7),
// (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) is
// exactly an A fragment; ldsm<2> (non-trans) of the rows of an n-major
// (8 x 16, k contiguous) tile is a B fragment; ldsm<2, true> of a k-major
// (16 x 8, n contiguous) tile is a B fragment too.  AccLayout says which
// (row, col) each accumulator register holds, for element-wise epilogues
// (bias, mask, softmax) on the fragments.
//
// The CPU execution harness (its swin_harness::ptx; docs/kernels.md) emulates
// each instruction by these layouts, lane by lane.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../cuda_compat.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "swin_ext's attention kernels need sm_80 or newer (mma.sync bf16, ldmatrix, cp.async)"
#endif

// The harness records the call site of each warp-collective operation (its
// error messages name it, and lanes at different call sites do not meet).
#if defined(SWIN_CUDA_HARNESS)
#define SWIN_PTX_SITE_PARAM , SWIN_HARNESS_SITE
#else
#define SWIN_PTX_SITE_PARAM
#endif

namespace swin_ext {
namespace cuda {
namespace attn {

// Which (row, col) of the 16 x 8 tile accumulator register r (0..3) of a lane
// holds; rows r / 2 * 8 apart, columns r % 2 apart.
struct AccLayout {
  __host__ __device__ static constexpr int row(int lane, int r) { return (lane >> 2) + ((r & 2) << 2); }
  __host__ __device__ static constexpr int col(int lane, int r) { return ((lane & 3) << 1) + (r & 1); }
};
// The (row, col) of the first (low-half) element of A register r (0..3) of a
// lane (the second element is at col + 1).
struct ALayout {
  __host__ __device__ static constexpr int row(int lane, int r) { return (lane >> 2) + ((r & 1) << 3); }
  __host__ __device__ static constexpr int col(int lane, int r) { return ((lane & 3) << 1) + ((r & 2) << 2); }
};
// The (k, n) of the first element of B register r (0..1) of a lane (the second at k + 1).
struct BLayout {
  __host__ __device__ static constexpr int k(int lane, int r) { return ((lane & 3) << 1) + (r << 3); }
  __host__ __device__ static constexpr int n(int lane, int /*r*/) { return lane >> 2; }
};

template <typename T>
struct MmaType;
template <>
struct MmaType<__nv_bfloat16> {
#if !defined(__CUDACC__)
  static constexpr ::swin_harness::ptx::MmaIn kIn = ::swin_harness::ptx::MmaIn::kBF16;
#endif
};
template <>
struct MmaType<__half> {
#if !defined(__CUDACC__)
  static constexpr ::swin_harness::ptx::MmaIn kIn = ::swin_harness::ptx::MmaIn::kF16;
#endif
};

// d = a b + c (d may be c).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                          const float (&c)[4] SWIN_PTX_SITE_PARAM) {
#if defined(__CUDACC__)
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    static_assert(std::is_same<T, __half>::value, "mma_16816: bf16 or fp16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#else
  ::swin_harness::ptx::mma_m16n8k16(MmaType<T>::kIn, d, a, b, c, swin_file, swin_line);
#endif
}

#if defined(__CUDACC__)
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// ldmatrix of kNum 8 x 8 matrices of 16-bit elements; `row` is this lane's
// row address (lanes >= 8 kNum: ignored, any value).
template <int kNum, bool kTrans = false>
__device__ __forceinline__ void ldsm(uint32_t (&r)[kNum], const void* row SWIN_PTX_SITE_PARAM) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix: x1, x2 or x4");
#if defined(__CUDACC__)
  const uint32_t a = smem_u32(row);
  if constexpr (kNum == 4 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  } else if constexpr (kNum == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  } else if constexpr (kNum == 2 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else if constexpr (kNum == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else if constexpr (!kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  }
#else
  ::swin_harness::ptx::ldmatrix(kNum, kTrans, r, row, swin_file, swin_line);
#endif
}

// The inverse of ldsm<4>: lanes 8m..8m+7 give the row addresses of matrix m
// (16 bytes each, 16-byte aligned, shared memory); lane l's register m is
// stored as (row l/4, columns 2(l%4), 2(l%4)+1) of matrix m.  stmatrix is
// sm_90's (PTX ISA 7.8); store_a_tile below is the portable form.
__device__ __forceinline__ void stsm4(void* row, const uint32_t (&r)[4] SWIN_PTX_SITE_PARAM) {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32(row)), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
#else
  __trap();  // (store_a_tile never calls it below sm_90)
#endif
#else
  ::swin_harness::ptx::stmatrix(4, r, row, swin_file, swin_line);
#endif
}

// Whether stsm4 exists on the device this code runs on (sm_90 and newer; in
// the harness, the emulated device of the launch: SWIN_HARNESS_ARCH).
__device__ __forceinline__ bool has_stmatrix() {
#if defined(__CUDACC__)
#if __CUDA_ARCH__ >= 900
  return true;
#else
  return false;
#endif
#else
  return ::swin_harness::ptx::device_arch() >= 90;
#endif
}

// Stores a 16 x 16 tile of 16-bit elements held as an A fragment (a[0..3] as
// above: rows g / g + 8, columns 2t / 2t + 8) to rows [0, 16) of `tile` (row
// stride kStride bytes, a multiple of 16; `tile` 16-byte aligned): one
// stmatrix.x4 on sm_90 in place of four 32-bit stores.  Two accumulator
// n-tiles packed (pack2 of c[0], c[1] and of c[2], c[3]) are the A fragment of
// their 16 columns: {lo(n), hi(n), lo(n + 1), hi(n + 1)}.  A warp-collective
// on sm_90 (every lane).  kStsm = false: the 32-bit stores everywhere (a
// kernel whose registers have no room for stmatrix's row address).
template <int kStride, bool kStsm = true>
__device__ __forceinline__ void store_a_tile(unsigned char* tile, const uint32_t (&a)[4], int lane
                                             SWIN_PTX_SITE_PARAM) {
  static_assert(kStride % 16 == 0, "stmatrix rows are 16-byte aligned");
  if (kStsm && has_stmatrix()) {
    // lane l: row l % 8 of matrix l / 8, i.e. row (l & 7) + (l & 8), byte column 16 (l >> 4)
    stsm4(tile + ((lane & 7) + (lane & 8)) * kStride + ((lane >> 4) << 4), a
#if defined(SWIN_CUDA_HARNESS)
          , swin_file, swin_line
#endif
    );
  } else {
    unsigned char* r0 = tile + (lane >> 2) * kStride + (lane & 3) * 4;
    *reinterpret_cast<uint32_t*>(r0) = a[0];
    *reinterpret_cast<uint32_t*>(r0 + 8 * kStride) = a[1];
    *reinterpret_cast<uint32_t*>(r0 + 16) = a[2];
    *reinterpret_cast<uint32_t*>(r0 + 8 * kStride + 16) = a[3];
  }
}

// 16 bytes global -> shared, asynchronous; src_bytes < 16 reads that many
// bytes and zero-fills the rest (0: src is not read).  Both addresses 16-byte
// aligned.  Visible after cp_async_wait retires its group (and, to other
// threads, a barrier after that).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes = 16
                                           SWIN_PTX_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
               "r"(src_bytes));
#else
  ::swin_harness::ptx::cp_async(smem_dst, gmem_src, 16, src_bytes, swin_file, swin_line);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::);
#else
  ::swin_harness::ptx::cp_async_commit();
#endif
}
// Waits until at most kPending of this thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#else
  ::swin_harness::ptx::cp_async_wait(kPending);
#endif
}

// Two floats -> one register of two T (lo in the low half), round to nearest even.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &v, 4);
  } else {
    static_assert(std::is_same<T, __half>::value, "pack2: bf16 or fp16");
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&u, &v, 4);
  }
  return u;
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
