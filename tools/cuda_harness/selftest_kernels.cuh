// Kernels of the harness self-tests (tools/cuda_harness/selftest.cpp and the
// swin_ext_harness test extension).  Ordinary CUDA: they compile with nvcc
// too (tests/test_harness.py checks that), so that what the harness runs is
// what a GPU would run.  The "planted_*" kernels contain deliberate bugs.
#pragma once

#include "cuda/attention/mma.h"
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
// mma.sync m16n8k16 + ldmatrix + cp.async (csrc/cuda/attention/mma.h):
// C (M x N, float, row-major) = A (M x K) B (K x N), one warp per 16 x 16
// block of C (two 8-column tiles).  The operands are staged in dynamic shared
// memory with cp.async in four layouts (row stride + 8 elements):
//   sA  = A row-major (M x K)     sAt = A^T row-major (K x M)
//   sB  = B row-major (K x N)     sBt = B^T row-major (N x K)
// and `variant` picks how the fragments are loaded:
//   a_mode  0: A by ldmatrix.x4 from sA,  1: A by ldmatrix.x4.trans from sAt
//   b_mode  0: x2 from sBt   1: x2.trans from sB   2: x4 from sBt (both tiles)
//           3: x4.trans from sB (both tiles)   4: x1 from sBt   5: x1.trans from sB
// variant = a_mode * 6 + b_mode; the planted variants use a fragment wrongly:
//   kPlantedSwapA: A registers 1 and 2 exchanged (rows g+8 taken for columns +8);
//   kPlantedNoTrans: B loaded from the k-major sB without .trans.
// C is written through AccLayout.
constexpr int kMmaVariants = 12;
constexpr int kPlantedSwapA = 100;
constexpr int kPlantedNoTrans = 101;

template <typename T>
__global__ void mma_gemm_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ c, int M,
                                int N, int K, int variant) {
  using namespace swin_ext::cuda::attn;
  SWIN_DYNAMIC_SHARED(T, smem);
  const int lda = K + 8, ldat = M + 8, ldb = N + 8, ldbt = K + 8;
  T* sA = smem;
  T* sAt = sA + M * lda;
  T* sB = sAt + K * ldat;
  T* sBt = sB + K * ldb;
  // Row-major A and B arrive by 16-byte cp.async (8 elements); the
  // transposes are written element by element after the wait.
  for (int e = threadIdx.x; e < M * K / 8; e += blockDim.x) {
    const int r = e / (K / 8), cv = e % (K / 8);
    cp_async16(sA + r * lda + cv * 8, a + r * K + cv * 8);
  }
  cp_async_commit();
  for (int e = threadIdx.x; e < K * N / 8; e += blockDim.x) {
    const int r = e / (N / 8), cv = e % (N / 8);
    cp_async16(sB + r * ldb + cv * 8, b + r * N + cv * 8);
  }
  cp_async_commit();
  for (int e = threadIdx.x; e < M * K; e += blockDim.x) sAt[(e % K) * ldat + e / K] = a[e];
  for (int e = threadIdx.x; e < K * N; e += blockDim.x) sBt[(e % N) * ldbt + e / N] = b[e];
  cp_async_wait<0>();
  __syncthreads();

  const int a_mode = variant >= kPlantedSwapA ? 0 : variant / 6;
  const int b_mode = variant == kPlantedNoTrans ? -1 : (variant >= kPlantedSwapA ? 0 : variant % 6);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int li = lane & 7, lm = lane >> 3;  // row within a matrix, matrix of this lane's address
  for (int tile = warp; tile < (M / 16) * (N / 16); tile += nwarps) {
    const int m0 = (tile / (N / 16)) * 16, n0 = (tile % (N / 16)) * 16;
    float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t fa[4];
      if (a_mode == 0) {
        ldsm<4>(fa, sA + (m0 + li + (lm & 1) * 8) * lda + k0 + (lm >> 1) * 8);
      } else {
        ldsm<4, true>(fa, sAt + (k0 + li + (lm >> 1) * 8) * ldat + m0 + (lm & 1) * 8);
      }
      if (variant == kPlantedSwapA) {
        const uint32_t t = fa[1];
        fa[1] = fa[2];
        fa[2] = t;
      }
      uint32_t fb[2][2];
      if (b_mode == 2 || b_mode == 3) {
        uint32_t r4[4];
        if (b_mode == 2) {
          ldsm<4>(r4, sBt + (n0 + li + (lm >> 1) * 8) * ldbt + k0 + (lm & 1) * 8);
        } else {
          ldsm<4, true>(r4, sB + (k0 + li + (lm & 1) * 8) * ldb + n0 + (lm >> 1) * 8);
        }
        fb[0][0] = r4[0];
        fb[0][1] = r4[1];
        fb[1][0] = r4[2];
        fb[1][1] = r4[3];
      } else {
        for (int j = 0; j < 2; ++j) {
          const int n = n0 + 8 * j;
          if (b_mode == 0) {
            ldsm<2>(fb[j], sBt + (n + li) * ldbt + k0 + (lm & 1) * 8);
          } else if (b_mode == 1) {
            ldsm<2, true>(fb[j], sB + (k0 + li + (lm & 1) * 8) * ldb + n);
          } else if (b_mode == -1) {  // planted: the k-major tile read as if n-major
            ldsm<2>(fb[j], sB + (k0 + li + (lm & 1) * 8) * ldb + n);
          } else {
            for (int h = 0; h < 2; ++h) {
              uint32_t r1[1];
              if (b_mode == 4) {
                ldsm<1>(r1, sBt + (n + li) * ldbt + k0 + 8 * h);
              } else {
                ldsm<1, true>(r1, sB + (k0 + li + 8 * h) * ldb + n);
              }
              fb[j][h] = r1[0];
            }
          }
        }
      }
      mma_16816<T>(acc[0], fa, fb[0], acc[0]);
      mma_16816<T>(acc[1], fa, fb[1], acc[1]);
    }
    for (int j = 0; j < 2; ++j)
      for (int r = 0; r < 4; ++r)
        c[(m0 + AccLayout::row(lane, r)) * N + n0 + 8 * j + AccLayout::col(lane, r)] = acc[j][r];
  }
}

template <typename T>
inline size_t mma_gemm_smem(int M, int N, int K) {
  return sizeof(T) * static_cast<size_t>(M * (K + 8) + K * (M + 8) + K * (N + 8) + N * (K + 8));
}

// cp.async with zero fill: 32 threads stage 128 floats in shared memory, one
// 16-byte chunk each (chunks >= valid_chunks: zero fill), and each writes out
// its neighbour's chunk.  planted_no_wait: the wait before the barrier is
// missing (the data is read while the copies may still be in flight).
__global__ void cp_async_kernel(const float* __restrict__ in, float* __restrict__ out, int valid_chunks,
                                bool planted_no_wait) {
  SWIN_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;  // 32 threads, one 16-byte chunk each
  swin_ext::cuda::attn::cp_async16(s + 4 * t, in + 4 * t, t < valid_chunks ? 16 : 0);
  swin_ext::cuda::attn::cp_async_commit();
  if (!planted_no_wait) swin_ext::cuda::attn::cp_async_wait<0>();
  __syncthreads();
  for (int e = 0; e < 4; ++e) out[4 * ((t + 1) % 32) + e] = s[4 * ((t + 1) % 32) + e];  // a neighbour's chunk
}

// store_a_tile (stmatrix.x4 on sm_90, four 32-bit stores below): each lane
// forms the A fragment of a 16 x 16 tile whose element (r, c) is the 16-bit
// pattern r * 16 + c + 1 (by ALayout), stores it at rows of stride 80 bytes,
// then reads the tile back through ldmatrix.x4 (the inverse) into `frag` and
// copies it out row-major into `tile`.  planted_swap: registers 1 and 2
// exchanged before the store.
__global__ void store_a_tile_kernel(uint16_t* __restrict__ tile, uint32_t* __restrict__ frag, bool planted_swap) {
  using namespace swin_ext::cuda::attn;
  constexpr int kStride = 80;
  SWIN_DYNAMIC_SHARED(unsigned char, s);
  const int lane = threadIdx.x;
  for (int e = lane; e < 16 * kStride; e += 32) s[e] = 0xAB;  // poison: an element not stored shows
  __syncwarp();
  uint32_t a[4];
  for (int r = 0; r < 4; ++r) {
    const int row = ALayout::row(lane, r), col = ALayout::col(lane, r);
    a[r] = static_cast<uint32_t>(row * 16 + col + 1) | (static_cast<uint32_t>(row * 16 + col + 2) << 16);
  }
  if (planted_swap) {
    const uint32_t t = a[1];
    a[1] = a[2];
    a[2] = t;
  }
  store_a_tile<kStride>(s, a, lane);
  __syncwarp();
  uint32_t back[4];
  ldsm<4>(back, s + ((lane & 7) + (lane & 8)) * kStride + ((lane >> 4) << 4));
  for (int r = 0; r < 4; ++r) frag[lane * 4 + r] = back[r];
  for (int e = lane; e < 256; e += 32) memcpy(tile + e, s + (e / 16) * kStride + (e % 16) * 2, 2);
}

// stmatrix at an sm_86 launch (stsm4 called directly, as no kernel may).
__global__ void planted_stmatrix_below_sm90_kernel(float* out) {
  SWIN_DYNAMIC_SHARED(unsigned char, s);
  const uint32_t r[4] = {1, 2, 3, 4};
  swin_ext::cuda::attn::stsm4(s + (threadIdx.x & 15) * 16, r);
  out[threadIdx.x] = 0.f;
}

// mma.sync by half a warp (the other half has returned).
__global__ void planted_mma_exited_lane_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4] = {0, 0, 0, 0};
  swin_ext::cuda::attn::mma_16816<__half>(c, a, b, c);
  out[threadIdx.x] = c[0];
}

// ldmatrix given a row address that is not 16-byte aligned.
__global__ void planted_ldmatrix_misaligned_kernel(float* out) {
  SWIN_DYNAMIC_SHARED(__half, s);
  for (int e = threadIdx.x; e < 256; e += blockDim.x) s[e] = __float2half(1.0f);
  __syncwarp();
  uint32_t r[1];
  swin_ext::cuda::attn::ldsm<1>(r, s + (threadIdx.x & 7) * 16 + 1);  // BUG: + 1 element
  out[threadIdx.x] = static_cast<float>(r[0]);
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
