// Kernels of the harness self-tests (tools/cuda_harness/selftest.cpp and the
// swin_ext_harness test extension).  Ordinary CUDA: they compile with nvcc
// too (tests/test_harness.py checks that), so that what the harness runs is
// what a GPU would run.  The "planted_*" kernels contain deliberate bugs.
#pragma once

#include "cuda/cuda_compat.h"

namespace swin_selftest {

// ---------------------------------------------------------------------------
// Block sum: warp shuffles + a static __shared__ array of per-warp partials.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T, int BLOCK>
__global__ void block_sum_kernel(const T* __restrict__ in, T* __restrict__ out, int n) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK");
  __shared__ T partial[BLOCK / 32];
  T v = 0;
  for (int i = blockIdx.x * BLOCK + threadIdx.x; i < n; i += gridDim.x * BLOCK) v += in[i];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < BLOCK / 32 ? partial[lane] : T(0);
    v = warp_sum(v);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

template <typename T, int BLOCK>
void launch_block_sum(const T* in, T* out, int n, int blocks, cudaStream_t stream) {
  SWIN_LAUNCH_KERNEL((block_sum_kernel<T, BLOCK>), blocks, BLOCK, 0, stream, in, out, n);
}

// ---------------------------------------------------------------------------
// Tree reduction in dynamic shared memory, one barrier per level.
__global__ void smem_tree_sum_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  SWIN_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

inline void launch_smem_tree_sum(const float* in, float* out, int n, int block, cudaStream_t stream) {
  const int blocks = (n + block - 1) / block;
  SWIN_LAUNCH_KERNEL(smem_tree_sum_kernel, blocks, block, block * sizeof(float), stream, in, out, n);
}

// ---------------------------------------------------------------------------
// Every warp intrinsic; out has kWarpOpsOut ints per thread.
constexpr int kWarpOpsOut = 13;
__global__ void warp_ops_kernel(const int* __restrict__ in, int* __restrict__ out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  const int v = in[t];
  int* o = out + t * kWarpOpsOut;
  int s = v;  // butterfly sum: every lane gets the warp sum
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  o[0] = s;
  int d = v;  // shuffle-down sum: lane 0 gets the warp sum
  for (int off = 16; off > 0; off >>= 1) d += __shfl_down_sync(0xffffffffu, d, off);
  o[1] = d;
  int scan = v;  // inclusive prefix sum with shuffle-up
  for (int off = 1; off < 32; off <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, scan, off);
    if (lane >= off) scan += u;
  }
  o[2] = scan;
  o[3] = __shfl_sync(0xffffffffu, v, 3);             // broadcast lane 3
  int seg = v;                                       // sums within 8-lane segments
  for (int m = 4; m > 0; m >>= 1) seg += __shfl_xor_sync(0xffffffffu, seg, m, 8);
  o[4] = seg;
  o[5] = __shfl_sync(0xffffffffu, v, lane + 1, 16);  // rotate within 16-lane halves
  o[6] = static_cast<int>(__ballot_sync(0xffffffffu, v & 1));
  o[7] = __any_sync(0xffffffffu, v > 90);
  o[8] = __all_sync(0xffffffffu, v >= 0);
  // Half the warp: lanes 0..15 only, with their own mask.
  int h = -1;
  if (lane < 16) {
    h = v;
    for (int m = 8; m > 0; m >>= 1) h += __shfl_xor_sync(0x0000ffffu, h, m);
  }
  o[9] = h;
  __syncwarp();
  o[10] = __shfl_down_sync(0xffffffffu, v, 31);  // beyond the warp: own value
  double dv = static_cast<double>(v) * 0.5;      // 8-byte values
  dv = __shfl_sync(0xffffffffu, dv, 31 - lane);
  o[11] = static_cast<int>(dv * 2.0);
  o[12] = __syncthreads_count(v & 1);
}

// ---------------------------------------------------------------------------
// Atomics from many blocks (run by several OS threads at once).
__global__ void atomics_kernel(int* counter, float* fsum, double* dsum, unsigned* maxv) {
  atomicAdd(counter, 1);
  atomicAdd(fsum, 1.0f);
  atomicAdd(dsum, 0.5);
  atomicMax(maxv, blockIdx.x * blockDim.x + threadIdx.x);
}

// ---------------------------------------------------------------------------
// Threads that exit before a barrier do not block it (the barrier waits for
// the live threads).
__global__ void exited_barrier_kernel(float* __restrict__ out, int n) {
  __shared__ float buf[256];
  const int t = threadIdx.x;
  if (t >= n) return;
  buf[t] = static_cast<float>(t);
  __syncthreads();
  out[t] = buf[n - 1 - t];
}

// ---------------------------------------------------------------------------
// WMMA: C (M x N, float) = A (M x K, half, row-major) * B (K x N, half, row-major);
// one warp per 16 x 16 tile of C.
template <typename T>
__global__ void wmma_gemm_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                 float* __restrict__ c, int M, int N, int K) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  const int warp = threadIdx.x / 32;
  const int tiles_n = N / 16;
  const int tile = blockIdx.x * (blockDim.x / 32) + warp;
  if (tile >= (M / 16) * tiles_n) return;  // a whole warp leaves together
  const int tm = tile / tiles_n, tn = tile % tiles_n;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int k = 0; k < K; k += 16) {
    wmma::load_matrix_sync(fa, a + static_cast<size_t>(tm) * 16 * K + k, K);
    wmma::load_matrix_sync(fb, b + static_cast<size_t>(k) * N + tn * 16, N);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.0f;  // element-wise epilogue
  wmma::store_matrix_sync(c + static_cast<size_t>(tm) * 16 * N + tn * 16, acc, N,
                          wmma::mem_row_major);
#endif
}

// ---------------------------------------------------------------------------
// Planted bugs.

// Missing __syncthreads between the shared-memory writes and the reads of a
// neighbour's value.  Thread order happens to hide it (thread t-1 finishes
// before thread t starts, as lockstep warps often hide it on a GPU); the
// shuffled mode exposes it.
__global__ void planted_missing_barrier_kernel(const float* __restrict__ in, float* __restrict__ out) {
  SWIN_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  // BUG: __syncthreads() missing here.
  out[blockIdx.x * blockDim.x + t] = s[t] - (t > 0 ? s[t - 1] : 0.0f);
}

// __syncthreads in both branches of a divergent if: two different barriers.
__global__ void planted_divergent_barrier_kernel(float* out) {
  const int t = threadIdx.x;
  if (t < 16) {
    out[t] = 1.0f;
    __syncthreads();
  } else {
    out[t] = 2.0f;
    __syncthreads();
  }
}

// A full-warp shuffle executed by half of the warp only; the other half goes
// on to a barrier.
__global__ void planted_missing_lane_kernel(float* out) {
  const int t = threadIdx.x;
  float v = static_cast<float>(t);
  if (t % 32 < 16) v = __shfl_sync(0xffffffffu, v, 0);
  __syncthreads();
  out[t] = v;
}

// One element past the end of a global buffer of blockDim.x floats.
__global__ void planted_oob_global_kernel(float* out) { out[threadIdx.x + 1] = 1.0f; }

// One element past the end of the dynamic shared memory (blockDim.x floats).
__global__ void planted_oob_dynamic_shared_kernel(float* out) {
  SWIN_DYNAMIC_SHARED(float, s);
  s[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// One element past the end of a static __shared__ array of 64 floats.
__global__ void planted_oob_static_shared_kernel(float* out) {
  __shared__ float buf[64];
  buf[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

// __trap() in one thread.
__global__ void planted_trap_kernel(float* out) {
  if (threadIdx.x == 5) __trap();
  out[threadIdx.x] = 0.0f;
}

// A warp operation whose mask leaves out the calling lane.
__global__ void planted_bad_mask_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  v = __shfl_sync(0x1u, v, 0);
  out[threadIdx.x] = v;
}

// Block 0 spin-waits for a flag that block 1 sets: works on a GPU when both
// blocks are resident, never returns under the harness (cooperative fibers,
// blocks one after another), where the watchdog stops it.
__global__ void planted_spin_kernel(volatile int* flag) {
  if (blockIdx.x == 1) *flag = 1;
  while (*flag == 0) {
  }
}

}  // namespace swin_selftest
