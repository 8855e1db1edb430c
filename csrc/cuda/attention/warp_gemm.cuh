// Warp-level GEMM on shared-memory tiles: C (16 x n) (+)= A (16 x k) * B (k x n).
//
//   * bf16 / fp16 operands: tensor cores through WMMA m16n16k16 with fp32
//     accumulation (HMMA on sm_80+); n and k are multiples of 16.
//   * fp32 / fp64 operands: SIMT, a 4 x (n/8) register tile per lane, in the
//     accumulation type; n and k any.
//
// Layouts, with k split into 16-wide steps whose start is `a_step` /
// `b_step` elements apart (so a tile may be spread over several per-warp
// buffers, e.g. the probabilities of the fused backward):
//   A row-major (kARow): element (m, k) at a[(k/16)*a_step + m*lda + k%16]
//   A col-major        : element (m, k) at a[(k/16)*a_step + (k%16)*lda + m]
//   B row-major (kBRow): element (k, n) at b[(k/16)*b_step + (k%16)*ldb + n]
//   B col-major        : element (k, n) at b[(k/16)*b_step + n*ldb + k%16]
// (a plain matrix has a_step = 16 or 16*lda, b_step = 16*ldb or 16).
// C is row-major, ldc; `accumulate` adds to the C in shared memory.
// Every lane of the warp must call it (warp-collective); the caller orders
// the shared-memory accesses around it with __syncwarp / __syncthreads.
//
// ATen-free (see cuda_compat.h).
#pragma once

#include "../common.cuh"
#include "kernel_traits.h"

namespace swin_ext {
namespace cuda {
namespace attn {

template <bool kRow>
using wmma_layout = typename std::conditional<kRow, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;

template <typename T, bool kARow, bool kBRow>
__device__ __forceinline__ void warp_gemm_tc(float* c, int ldc, const T* a, int lda, int a_step,
                                             const T* b, int ldb, int b_step, int n, int k,
                                             bool accumulate) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma_layout<kARow>> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma_layout<kBRow>> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  const int ksteps = k >> 4;
  for (int n0 = 0; n0 < n; n0 += 16) {
    if (accumulate) {
      wmma::load_matrix_sync(fc, c + n0, ldc, wmma::mem_row_major);
    } else {
      wmma::fill_fragment(fc, 0.0f);
    }
    // B's n offset: a column block of a row-major B, a row block of a col-major one.
    const T* bn = b + (kBRow ? n0 : n0 * ldb);
    for (int s = 0; s < ksteps; ++s) {
      wmma::load_matrix_sync(fa, a + s * a_step, lda);
      wmma::load_matrix_sync(fb, bn + s * b_step, ldb);
      wmma::mma_sync(fc, fa, fb, fc);
    }
    wmma::store_matrix_sync(c + n0, fc, ldc, wmma::mem_row_major);
  }
}

// SIMT: lane = 8 * rg + cg owns rows {rg, rg+4, rg+8, rg+12} and columns
// {n0 + cg + 8j} of each 64-column block.
template <typename T, typename A, bool kARow, bool kBRow>
__device__ __forceinline__ void warp_gemm_simt(A* c, int ldc, const T* a, int lda, int a_step,
                                               const T* b, int ldb, int b_step, int n, int k,
                                               bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int rg = lane >> 3, cg = lane & 7;
  for (int n0 = 0; n0 < n; n0 += 64) {
    const int nb = n - n0 < 64 ? n - n0 : 64;  // columns in this block
    const int nj = (nb - cg + 7) >> 3;         // of them, this lane's (cg, cg + 8, ...)
    A acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = A(0);
    for (int kk = 0; kk < k; ++kk) {
      const int ks = (kk >> 4) , ko = kk & 15;
      const T* ak = a + ks * a_step + (kARow ? ko : ko * lda);
      const T* bk = b + ks * b_step + (kBRow ? ko * ldb : ko);
      A av[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = to_acc(ak[(rg + 4 * i) * (kARow ? lda : 1)]);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j < nj) {
          const int col = n0 + cg + 8 * j;
          const A bv = to_acc(bk[kBRow ? col : col * ldb]);
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[i][j] += av[i] * bv;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j < nj) {
          A* dst = c + (rg + 4 * i) * ldc + n0 + cg + 8 * j;
          *dst = accumulate ? *dst + acc[i][j] : acc[i][j];
        }
      }
  }
}

// The tensor-core or the SIMT body, by the traits' element type.
template <class Tr, bool kARow, bool kBRow>
__device__ __forceinline__ void warp_gemm(typename Tr::acc_t* c, int ldc, const typename Tr::T* a,
                                          int lda, int a_step, const typename Tr::T* b, int ldb,
                                          int b_step, int n, int k, bool accumulate) {
  if constexpr (Tr::kTC) {
    warp_gemm_tc<typename Tr::T, kARow, kBRow>(c, ldc, a, lda, a_step, b, ldb, b_step, n, k, accumulate);
  } else {
    warp_gemm_simt<typename Tr::T, typename Tr::acc_t, kARow, kBRow>(c, ldc, a, lda, a_step, b, ldb,
                                                                      b_step, n, k, accumulate);
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace swin_ext
