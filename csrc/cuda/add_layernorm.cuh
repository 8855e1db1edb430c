// CUDA kernels of the fused residual add + LayerNorm:
//   h = x + branch (the new residual stream, in x's dtype), y = LayerNorm(h)
// (in y's dtype: under autocast the stream stays fp32 and y comes out in the
// autocast dtype, so the next GEMM reads it without a cast kernel).
//
//   forward   add_ln_fwd_kernel   one warp per row; lanes own VEC-element
//             chunks (16-byte accesses of the narrowest dtype); h is written
//             in the first pass, the statistics as the CPU kernel computes
//             them (layernorm_stats.cuh), then y.
//   backward  add_ln_bwd_kernel   one warp per row: pass 1 the row sums of
//             g = dy * weight and g * xhat, pass 2 dh = grad_h + rstd * (g -
//             mean(g) - xhat * mean(g * xhat)) written in h's dtype (and in
//             branch's dtype when it differs), dweight / dbias accumulated
//             per warp in shared memory (one owner lane per channel), one
//             partial row per block, warps summed in order; the caller sums
//             the partials over a fixed shape (deterministic, no atomics).
// ATen-free (see cuda_compat.h).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common.cuh"
#include "layernorm_stats.cuh"
#include "patch_merging.cuh"  // Pack, load_pack / store_pack

namespace swin_ext {
namespace cuda {

constexpr int kAddLnWarps = 4;
constexpr int kAddLnRowsPerWarp = 16;        // backward: rows per warp per block
constexpr int kAddLnBwdMaxSmem = 48 * 1024;  // dweight / dbias accumulators per block

// Elements per chunk: 16 bytes of the narrowest of the three dtypes.
template <typename A, typename B, typename C>
constexpr int add_ln_vec() {
  constexpr size_t m = sizeof(A) < sizeof(B) ? (sizeof(A) < sizeof(C) ? sizeof(A) : sizeof(C))
                                             : (sizeof(B) < sizeof(C) ? sizeof(B) : sizeof(C));
  return static_cast<int>(16 / m);
}

template <typename tx, typename tb, typename ty, typename acc_t, int VEC>
__global__ void __launch_bounds__(kAddLnWarps * 32, 1)
    add_ln_fwd_kernel(const tx* __restrict__ x, const tb* __restrict__ branch, const acc_t* __restrict__ weight,
                      const acc_t* __restrict__ bias, tx* __restrict__ h, ty* __restrict__ y,
                      acc_t* __restrict__ mean, acc_t* __restrict__ rstd, int rows, int C, acc_t eps,
                      acc_t inv_n) {
  const int row = blockIdx.x * kAddLnWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // the whole warp leaves together
  const int64_t base = static_cast<int64_t>(row) * C;
  // h, rounded to its dtype as stored (the LayerNorm of the tensor h).
  auto load_h = [&](int c, acc_t (&v)[VEC]) {
    acc_t a[VEC], b[VEC];
    load_pack<tx, acc_t, VEC>(x + base + c, a);
    load_pack<tb, acc_t, VEC>(branch + base + c, b);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = to_acc(from_acc<tx>(a[e] + b[e]));
  };
  for (int c = lane * VEC; c < C; c += 32 * VEC) {  // h
    acc_t v[VEC];
    load_h(c, v);
    store_pack<tx, acc_t, VEC>(h + base + c, v);
  }
  auto for_each = [&](auto&& fn) {
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      acc_t v[VEC];
      load_h(c, v);  // x and branch again: L1-hot
      fn(v);
    }
  };
  const RowStats<acc_t> st = warp_row_stats<acc_t, VEC>(for_each, inv_n, eps);
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    acc_t v[VEC], o[VEC];
    load_h(c, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] = (v[e] * st.scale - st.mean) * st.rstd * weight[c + e] + bias[c + e];
    store_pack<ty, acc_t, VEC>(y + base + c, o);
  }
  if (lane == 0) {
    mean[row] = st.stored_mean();
    rstd[row] = st.stored_rstd();
  }
}

inline size_t add_ln_bwd_smem(int nwarps, int64_t C, size_t acc_size) {
  return static_cast<size_t>(nwarps) * 2 * C * acc_size;
}
// Warps per backward block whose accumulators fit kAddLnBwdMaxSmem (0: none).
inline int add_ln_bwd_warps(int64_t C, size_t acc_size) {
  for (int w = kAddLnWarps; w >= 1; --w)
    if (add_ln_bwd_smem(w, C, acc_size) <= kAddLnBwdMaxSmem) return w;
  return 0;
}
inline int64_t add_ln_num_partials(int64_t rows, int nwarps) {
  return ceil_div64(rows, static_cast<int64_t>(nwarps) * kAddLnRowsPerWarp);
}

// grad_h may be null (no other use of h); dbranch may be null (branch has h's dtype).
template <typename th, typename tb, typename ty, typename acc_t, int VEC>
__global__ void __launch_bounds__(kAddLnWarps * 32, 1)
    add_ln_bwd_kernel(const th* __restrict__ grad_h, const ty* __restrict__ grad_y, const th* __restrict__ h,
                      const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                      const acc_t* __restrict__ rstd, th* __restrict__ dh, tb* __restrict__ dbranch,
                      acc_t* __restrict__ dw_part, acc_t* __restrict__ db_part, int rows, int C, acc_t inv_n) {
  SWIN_DYNAMIC_SHARED(acc_t, smem);
  const int nwarps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  acc_t* dw_acc = smem + static_cast<int64_t>(warp) * 2 * C;
  acc_t* db_acc = dw_acc + C;
  for (int k = lane; k < 2 * C; k += 32) dw_acc[k] = acc_t(0);  // the warp's own accumulators
  __syncwarp();
  const int r0 = blockIdx.x * nwarps * kAddLnRowsPerWarp;
  const int r1 = r0 + nwarps * kAddLnRowsPerWarp < rows ? r0 + nwarps * kAddLnRowsPerWarp : rows;
  for (int row = r0 + warp; row < r1; row += nwarps) {
    const int64_t base = static_cast<int64_t>(row) * C;
    const acc_t mu = mean[row], rs = rstd[row];
    acc_t sg = 0, sgx = 0;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      acc_t hv[VEC], gv[VEC];
      load_pack<th, acc_t, VEC>(h + base + c, hv);
      load_pack<ty, acc_t, VEC>(grad_y + base + c, gv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t g = gv[e] * weight[c + e];
        sg += g;
        sgx += g * (hv[e] - mu) * rs;
      }
    }
    const acc_t mg = warp_sum(sg) * inv_n, mgx = warp_sum(sgx) * inv_n;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      acc_t hv[VEC], gv[VEC], d[VEC];
      load_pack<th, acc_t, VEC>(h + base + c, hv);  // L1-hot: read in pass 1
      load_pack<ty, acc_t, VEC>(grad_y + base + c, gv);
      if (grad_h != nullptr) {
        load_pack<th, acc_t, VEC>(grad_h + base + c, d);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) d[e] = acc_t(0);
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t xh = (hv[e] - mu) * rs;
        d[e] += rs * (gv[e] * weight[c + e] - mg - xh * mgx);
        dw_acc[c + e] += gv[e] * xh;
        db_acc[c + e] += gv[e];
      }
      store_pack<th, acc_t, VEC>(dh + base + c, d);
      if (dbranch != nullptr) store_pack<tb, acc_t, VEC>(dbranch + base + c, d);
    }
  }
  __syncthreads();
  for (int k = threadIdx.x; k < C; k += blockDim.x) {  // one partial row per block, warps in order
    acc_t w = 0, b = 0;
    for (int j = 0; j < nwarps; ++j) {
      w += smem[static_cast<int64_t>(j) * 2 * C + k];
      b += smem[static_cast<int64_t>(j) * 2 * C + C + k];
    }
    dw_part[static_cast<int64_t>(blockIdx.x) * C + k] = w;
    db_part[static_cast<int64_t>(blockIdx.x) * C + k] = b;
  }
}

// Every (non-null) pointer 16-byte aligned: with C % VEC == 0 every row is.
inline bool add_ln_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// rows x C; h in tx, y in ty, mean/rstd (rows) in acc_t.  Sizes checked by
// the caller to fit 32-bit row and channel indices.
template <typename tx, typename tb, typename ty, typename acc_t>
void launch_add_layernorm_fwd(const tx* x, const tb* branch, const acc_t* weight, const acc_t* bias, tx* h,
                              ty* y, acc_t* mean, acc_t* rstd, int64_t rows, int64_t C, double eps,
                              cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kVec = add_ln_vec<tx, tb, ty>();
  const unsigned blocks = static_cast<unsigned>(ceil_div64(rows, kAddLnWarps));
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C);  // on the host: no division in the kernel
  const int r = static_cast<int>(rows), c = static_cast<int>(C);
  if (C % kVec == 0 && add_ln_aligned({x, branch, h, y})) {
    SWIN_LAUNCH_KERNEL((add_ln_fwd_kernel<tx, tb, ty, acc_t, kVec>), blocks, kAddLnWarps * 32, 0, stream, x,
                       branch, weight, bias, h, y, mean, rstd, r, c, static_cast<acc_t>(eps), inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((add_ln_fwd_kernel<tx, tb, ty, acc_t, 1>), blocks, kAddLnWarps * 32, 0, stream, x,
                       branch, weight, bias, h, y, mean, rstd, r, c, static_cast<acc_t>(eps), inv_n);
  }
}

// dw_part / db_part: (add_ln_num_partials(rows, nwarps), C), summed over dim 0
// by the caller; nwarps = add_ln_bwd_warps(C, sizeof(acc_t)).
template <typename th, typename tb, typename ty, typename acc_t>
void launch_add_layernorm_bwd(const th* grad_h, const ty* grad_y, const th* h, const acc_t* weight,
                              const acc_t* mean, const acc_t* rstd, th* dh, tb* dbranch, acc_t* dw_part,
                              acc_t* db_part, int64_t rows, int64_t C, int nwarps, cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kVec = add_ln_vec<th, tb, ty>();
  const unsigned blocks = static_cast<unsigned>(add_ln_num_partials(rows, nwarps));
  const size_t smem = add_ln_bwd_smem(nwarps, C, sizeof(acc_t));
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(C);
  const int r = static_cast<int>(rows), c = static_cast<int>(C);
  if (C % kVec == 0 && add_ln_aligned({grad_h, grad_y, h, dh, dbranch})) {
    SWIN_LAUNCH_KERNEL((add_ln_bwd_kernel<th, tb, ty, acc_t, kVec>), blocks, nwarps * 32, smem, stream, grad_h,
                       grad_y, h, weight, mean, rstd, dh, dbranch, dw_part, db_part, r, c, inv_n);
  } else {
    SWIN_LAUNCH_KERNEL((add_ln_bwd_kernel<th, tb, ty, acc_t, 1>), blocks, nwarps * 32, smem, stream, grad_h,
                       grad_y, h, weight, mean, rstd, dh, dbranch, dw_part, db_part, r, c, inv_n);
  }
}

// The dtype combinations the glue dispatches to (x / h, branch, y): one
// dtype throughout, or a float32 residual stream with a bf16 / fp16 branch
// or output.  Instantiated in add_layernorm_kernels.cu (a translation unit
// of its own, compiled in parallel and by the harness); declared extern here
// so that the glue does not instantiate them again.
#define SWIN_ADD_LN_TYPES(X)                                                                          \
  X(float, float, float)                                                                              \
  X(double, double, double)                                                                           \
  X(__half, __half, __half)                                                                           \
  X(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)                                                      \
  X(float, __nv_bfloat16, __nv_bfloat16)                                                              \
  X(float, __half, __half)                                                                            \
  X(float, float, __nv_bfloat16)                                                                      \
  X(float, float, __half)                                                                             \
  X(float, __nv_bfloat16, float)                                                                      \
  X(float, __half, float)

#define SWIN_ADD_LN_LAUNCHERS(PREFIX, TX, TB, TY)                                                     \
  PREFIX template void launch_add_layernorm_fwd<TX, TB, TY, AccType<TX>::type>(                     \
      const TX*, const TB*, const AccType<TX>::type*, const AccType<TX>::type*, TX*, TY*,             \
      AccType<TX>::type*, AccType<TX>::type*, int64_t, int64_t, double, cudaStream_t);               \
  PREFIX template void launch_add_layernorm_bwd<TX, TB, TY, AccType<TX>::type>(                     \
      const TX*, const TY*, const TX*, const AccType<TX>::type*, const AccType<TX>::type*,            \
      const AccType<TX>::type*, TX*, TB*, AccType<TX>::type*, AccType<TX>::type*, int64_t, int64_t,   \
      int, cudaStream_t);
#define SWIN_ADD_LN_EXTERN(TX, TB, TY) SWIN_ADD_LN_LAUNCHERS(extern, TX, TB, TY)
#ifndef SWIN_ADD_LN_INSTANTIATING
SWIN_ADD_LN_TYPES(SWIN_ADD_LN_EXTERN)
#endif

}  // namespace cuda
}  // namespace swin_ext
