// Small dense building blocks for the CPU kernels: a register-blocked
// row-major GEMM micro-kernel and a vectorisable exp.
//
// Written as plain loops with fixed-size inner blocks so that the compiler
// vectorises them; the kernels that use them are compiled once per ISA
// and picked at run time (isa_dispatch.h).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../swin_geometry.h"  // ceil_div
#include "isa_dispatch.h"

#if defined(__GNUC__)
#define SWIN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SWIN_ALWAYS_INLINE inline
#endif

namespace swin_ext {
namespace cpu {

// Every padded dimension of the tile buffers is a multiple of this.
constexpr int64_t kPad = 16;
constexpr int64_t kRowBlock = 4;

inline int64_t round_up(int64_t v, int64_t m) { return ceil_div(v, m) * m; }

// Vectors of `Bytes` bytes (GCC/Clang vector extensions): 32 is one AVX2
// register (two SSE registers on the baseline ISA), 64 one AVX-512 register.
template <typename T, int Bytes>
struct VecB {
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int kLanes = Bytes / static_cast<int>(sizeof(T));
};

template <typename T>
struct Vec32 : VecB<T, 32> {};

// Column block of gemm_nn / gemm_tn with VB-byte vectors (two vectors): the
// padded dimensions of their operands are multiples of it.
template <typename T, int VB>
constexpr int64_t col_block() {
  return 2 * VecB<T, VB>::kLanes;
}

template <typename V, typename T>
SWIN_ALWAYS_INLINE V load_vec(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
SWIN_ALWAYS_INLINE void store_vec(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Rows of A per register block of gemm_nn / gemm_tn: 4 or 6 (each row holds
// two vector accumulators).  The operands' row counts are multiples of
// kRowBlock (4); with 6-row blocks the last one or two blocks take 4 rows.
//
// Why 6 where the ISA has the registers (AVX2: 16 ymm, AVX-512: 32 zmm; the
// 6 x 2 block uses 12 accumulators, 2 B vectors and a broadcast): an FMA
// chain per accumulator leaves 2 FMA pipes of latency 5 (Zen 2) at most 8/10
// busy with the 4 x 2 block's 8 chains, and the 6 x 2 block also loads 8
// operands per 12 FMAs instead of 6 per 8.  Measured on one Zen 2 core at the
// attention's shapes (N = 49, 144, 392; head_dim 32): 80-85 GFLOP/s with
// 4 rows, 99-103 with 6 (benchmarks/results/cpu_attention_row_block_avx2_2026-12-05.md).
// The baseline build keeps 4: SSE has 16 xmm registers, and a 32-byte vector
// takes two.  Every element of C is the same sum in the same order either
// way, so the block size never changes a result bit.
// The row block of an ISA's build: 4 on the baseline ISA, 6 on AVX2 and AVX-512.
constexpr int gemm_rows_for(Isa isa) { return isa == Isa::kDefault ? 4 : 6; }

template <typename T, int VB, int RB, bool kTransA>
SWIN_ALWAYS_INLINE void gemm_row_block(int64_t i0, int64_t Nc, int64_t K, T alpha, const T* A, int64_t lda,
                                       const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  typedef typename VecB<T, VB>::type V;
  constexpr int L = VecB<T, VB>::kLanes;
  for (int64_t j0 = 0; j0 < Nc; j0 += 2 * L) {
    V c[RB][2];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) c[r][0] = c[r][1] = V{};
    const T* bp = B + j0;
    // A's element of row i0 + r at k: A[(i0 + r) * lda + k], or A[k * lda + i0 + r] transposed.
    const T* ap = kTransA ? A + i0 : A + i0 * lda;
    for (int64_t k = 0; k < K; ++k, bp += ldb) {
      const V b0 = load_vec<V>(bp);
      const V b1 = load_vec<V>(bp + L);
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) {
        const T a = kTransA ? ap[k * lda + r] : ap[r * lda + k];
        c[r][0] += a * b0;
        c[r][1] += a * b1;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      T* cr = C + (i0 + r) * ldc + j0;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        V v = alpha * c[r][h];
        if (accumulate) v += load_vec<V>(cr + h * L);
        store_vec(cr + h * L, v);
      }
    }
  }
}

template <typename T, int VB, int RB, bool kTransA>
SWIN_ALWAYS_INLINE void gemm_rows(int64_t M, int64_t Nc, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                                  int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  static_assert(kRowBlock == 4 && (RB == 4 || RB == 6), "row blocks of 4 or 6 rows over rows padded to 4");
  int64_t i0 = 0;
  if constexpr (RB == 6) {
    const int64_t rows6 = M - (M % 12);  // M % 4 == 0: what is left is 0, 4 or 8 rows
    for (; i0 < rows6; i0 += 6)
      gemm_row_block<T, VB, 6, kTransA>(i0, Nc, K, alpha, A, lda, B, ldb, C, ldc, accumulate);
  }
  for (; i0 < M; i0 += 4) gemm_row_block<T, VB, 4, kTransA>(i0, Nc, K, alpha, A, lda, B, ldb, C, ldc, accumulate);
}

// C[M x Nc] = alpha * A[M x K] * B[K x Nc]  (+ C when accumulate), row-major,
// with VB-byte vectors (32: AVX2, 64: AVX-512; the caller's ISA build picks)
// and RB-row register blocks (gemm_row_block).  Requires M % kRowBlock == 0
// and Nc % col_block<T, VB>() == 0 (buffers are padded).
template <typename T, int VB = 32, int RB = 4>
SWIN_ALWAYS_INLINE void gemm_nn(int64_t M, int64_t Nc, int64_t K, T alpha, const T* A, int64_t lda,
                                const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  gemm_rows<T, VB, RB, false>(M, Nc, K, alpha, A, lda, B, ldb, C, ldc, accumulate);
}

// C[M x Nc] = alpha * A^T * B with A stored K x M (row-major, lda >= M): the
// transposed operand without a transposed copy (the broadcast loads read RB
// consecutive A elements of row k).  Same blocking and padding rules as gemm_nn.
template <typename T, int VB = 32, int RB = 4>
SWIN_ALWAYS_INLINE void gemm_tn(int64_t M, int64_t Nc, int64_t K, T alpha, const T* A, int64_t lda,
                                const T* B, int64_t ldb, T* C, int64_t ldc) {
  gemm_rows<T, VB, RB, true>(M, Nc, K, alpha, A, lda, B, ldb, C, ldc, false);
}

// dst (8 x 8, row stride ldd) = transpose(src (8 x 8, row stride lds)), floats:
// 24 two-source shuffles, not 64 scalar loads and strided stores.
typedef int32_t v8i_mask __attribute__((vector_size(32)));
#if defined(__clang__)
#define SWIN_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#else
#define SWIN_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shuffle(a, b, (v8i_mask){i0, i1, i2, i3, i4, i5, i6, i7})
#endif
SWIN_ALWAYS_INLINE void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  typedef Vec32<float>::type V;
  V r[8];
  for (int i = 0; i < 8; ++i) r[i] = load_vec<V>(src + i * lds);
  V a[8], b[8];
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs
    a[i] = SWIN_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    a[i + 1] = SWIN_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs
    b[i] = SWIN_SHUFFLE8(a[i], a[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    b[i + 1] = SWIN_SHUFFLE8(a[i], a[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    b[i + 2] = SWIN_SHUFFLE8(a[i + 1], a[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    b[i + 3] = SWIN_SHUFFLE8(a[i + 1], a[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {  // then the 128-bit halves
    store_vec(dst + j * ldd, SWIN_SHUFFLE8(b[j], b[j + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    store_vec(dst + (j + 4) * ldd, SWIN_SHUFFLE8(b[j], b[j + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}
#undef SWIN_SHUFFLE8

// dst[c] = src[c] * scale (converted), n elements.  Written with explicit
// vectors for float so that no copy loop becomes a memmove call (GCC turns
// plain copy loops into library calls, costly on rows of 32 elements).
//
// The empty volatile asm keeps the loop a loop: GCC's -O3 turns plain copy
// loops (vectorised or not) into memmove calls, whose call overhead is a
// large share of copying the 16-64 elements of a head's row.
#if defined(__GNUC__)
#define SWIN_KEEP_LOOP() __asm__ volatile("")
#else
#define SWIN_KEEP_LOOP() (void)0
#endif

template <typename S, typename T>
SWIN_ALWAYS_INLINE void copy_row(const S* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(src[c]);
}

template <>
SWIN_ALWAYS_INLINE void copy_row<float, float>(const float* __restrict src, float* __restrict dst, int64_t n) {
  typedef Vec32<float>::type V;
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    store_vec(dst + c, load_vec<V>(src + c));
    SWIN_KEEP_LOOP();
  }
  for (; c < n; ++c) {
    dst[c] = src[c];
    SWIN_KEEP_LOOP();
  }
}

template <>
SWIN_ALWAYS_INLINE void copy_row<double, double>(const double* __restrict src, double* __restrict dst, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    dst[c] = src[c];
    SWIN_KEEP_LOOP();
  }
}

template <typename S, typename T>
SWIN_ALWAYS_INLINE void copy_row_scaled(const S* __restrict src, T* __restrict dst, int64_t n, T scale) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(src[c]) * scale;
}

// exp(x) for 8 floats at once: Cody-Waite range reduction and a degree-6
// polynomial (Cephes expf), ~1 ulp; exactly 0 below the float range (so
// exp(-inf) == 0) and NaN stays NaN.
typedef Vec32<float>::type v8f;
typedef int32_t v8i __attribute__((vector_size(32)));

// The same for any float vector V (VI: the int32 vector of as many lanes).
template <typename V, typename VI>
SWIN_ALWAYS_INLINE V exp_vec(V x) {
  const float lo = -87.33654f, hi = 88.37626f;
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V t = xc * 1.44269504088896341f;
  const V n = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  const V y = p * (V)bits;
  return x < lo ? V{} : y;
}

// Sum / maximum of a vector's lanes by halving (log2(lanes) dependent steps,
// not a chain of one add per lane): a short row's softmax waits on these.
template <typename T, typename V>
SWIN_ALWAYS_INLINE T lanes_reduce(V v, bool max) {
  constexpr int kBytes = static_cast<int>(sizeof(V));
  if constexpr (kBytes == static_cast<int>(sizeof(T))) {
    return v[0];
  } else {
    typedef T H __attribute__((vector_size(kBytes / 2)));
    H lo, hi;
    std::memcpy(&lo, &v, sizeof(H));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
    return lanes_reduce<T>(max ? (hi > lo ? hi : lo) : lo + hi, max);
  }
}

// The numerator of a row softmax, in place: s[j] = exp(s[j] - max) over Np
// entries whose padding holds -inf (-> 0); returns the max, and the row's sum
// in `sum`.  The caller divides by the sum where it is cheaper than here (the
// attention scales its d-wide output rows, not the Np-wide P rows) and forms
// the log-sum-exp max + log(sum) outside the row's chain of dependent steps.
// float: VB-byte vectors, Np a multiple of col_block<float, VB>(); double: scalar std::exp.
template <int VB, typename T>
SWIN_ALWAYS_INLINE T exp_row_max(T* __restrict s, int64_t Np, T& sum) {
  if constexpr (std::is_same<T, float>::value) {
    typedef typename VecB<float, VB>::type V;
    typedef typename VecB<int32_t, VB>::type VI;
    constexpr int L = VecB<float, VB>::kLanes;
    V m0 = load_vec<V>(s), m1 = load_vec<V>(s + L);
    for (int64_t j = 2 * L; j < Np; j += 2 * L) {
      const V a = load_vec<V>(s + j), b = load_vec<V>(s + j + L);
      m0 = a > m0 ? a : m0;
      m1 = b > m1 ? b : m1;
    }
    const float mx = lanes_reduce<float>(m1 > m0 ? m1 : m0, true);
    V s0 = {}, s1 = {};
    for (int64_t j = 0; j < Np; j += 2 * L) {
      const V a = exp_vec<V, VI>(load_vec<V>(s + j) - mx), b = exp_vec<V, VI>(load_vec<V>(s + j + L) - mx);
      store_vec(s + j, a);
      store_vec(s + j + L, b);
      s0 += a;
      s1 += b;
    }
    sum = lanes_reduce<float>(s0 + s1, false);
    return mx;
  } else {
    T mx = s[0];
    for (int64_t j = 1; j < Np; ++j) mx = s[j] > mx ? s[j] : mx;
    T acc = 0;
    for (int64_t j = 0; j < Np; ++j) {
      s[j] = __builtin_exp(s[j] - mx);
      acc += s[j];
    }
    sum = acc;
    return mx;
  }
}

// s[j] = exp(s[j] - l) over Np entries (padding -inf -> 0); float as exp_row_max.
template <int VB, typename T>
SWIN_ALWAYS_INLINE void exp_shift_row(T* __restrict s, T l, int64_t Np) {
  if constexpr (std::is_same<T, float>::value) {
    typedef typename VecB<float, VB>::type V;
    typedef typename VecB<int32_t, VB>::type VI;
    constexpr int L = VecB<float, VB>::kLanes;
    for (int64_t j = 0; j < Np; j += L) store_vec(s + j, exp_vec<V, VI>(load_vec<V>(s + j) - l));
  } else {
    for (int64_t j = 0; j < Np; ++j) s[j] = __builtin_exp(s[j] - l);
  }
}

// The softmax backward of one row, in place: with D = sum_{j<N} p[j] ds[j],
// ds[j] = p[j] (ds[j] - D) for j < N and 0 on the padding N <= j < Np.  On
// entry ds holds dP.  float: VB-byte vectors (Np a multiple of their lanes),
// the padding lanes masked out of D whatever they hold, and D summed from two
// vector accumulators by halving -- not an `omp simd` reduction, whose 49-long
// rows GCC finished with a scalar tail and a lane-by-lane sum through the
// stack (a twentieth of the attention backward); double: scalar.
template <int VB, typename T>
SWIN_ALWAYS_INLINE void softmax_bwd_row(const T* __restrict p, T* __restrict ds, int64_t N, int64_t Np) {
  if constexpr (std::is_same<T, float>::value) {
    typedef typename VecB<float, VB>::type V;
    typedef typename VecB<int32_t, VB>::type VI;
    constexpr int L = VecB<float, VB>::kLanes;
    VI lane;
    for (int i = 0; i < L; ++i) lane[i] = i;
    V a0 = {}, a1 = {};
    int64_t j = 0;
    for (; j + 2 * L <= N; j += 2 * L) {
      a0 += load_vec<V>(p + j) * load_vec<V>(ds + j);
      a1 += load_vec<V>(p + j + L) * load_vec<V>(ds + j + L);
    }
    for (; j < N; j += L) {
      const V x = load_vec<V>(p + j) * load_vec<V>(ds + j);
      a0 += lane + static_cast<int32_t>(j) < static_cast<int32_t>(N) ? x : V{};
    }
    const float D = lanes_reduce<float>(a0 + a1, false);
    for (j = 0; j < Np; j += L) {
      const V x = load_vec<V>(p + j) * (load_vec<V>(ds + j) - D);
      store_vec(ds + j, lane + static_cast<int32_t>(j) < static_cast<int32_t>(N) ? x : V{});
    }
  } else {
    T D = 0;
    for (int64_t j = 0; j < N; ++j) D += p[j] * ds[j];
    for (int64_t j = 0; j < N; ++j) ds[j] = p[j] * (ds[j] - D);
    for (int64_t j = N; j < Np; ++j) ds[j] = T(0);
  }
}

}  // namespace cpu
}  // namespace swin_ext
