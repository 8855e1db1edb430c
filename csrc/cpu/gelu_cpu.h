// The exact (erf) GELU and its derivative on float vectors, shared by
// bias_gelu_cpu.cpp and the fused inference MLP (mlp_cpu.cpp).
//
// V: a float vector of 8 (AVX2 / baseline) or 16 (AVX-512) lanes.  Phi(u) =
// 0.5 erfc(-u / sqrt(2)); for w = |u| / sqrt(2), erfc(w) = exp(-w^2) t R(t)
// with t = 1 / (1 + w / 2) and R a degree-8 polynomial fitted (relative
// minimax, Lawson) to exp(w^2) erfc(w) / t on w in [0, 10]: 2.2e-7 relative
// in float32 evaluation; beyond w = 9.3, exp(-w^2) underflows and erfc is 0.
// One exp and one division per element, no range branches; exp(-w^2) is the
// density's exp too (GELU' = Phi(u) + u exp(-u^2 / 2) / sqrt(2 pi)).

#pragma once

#include "cpu_microkernels.h"
#include "layernorm_cpu.h"  // VecN, lanes_of, load_lanes / store_lanes

namespace swin_ext {
namespace cpu_gelu {

template <typename V>
using VI = typename cpu::VecN<cpu::lanes_of<V>>::i;

// U vectors at a time (normal_cdf_n): each statement over all U before the
// next, so the core's out-of-order window holds U erfc chains (an exp, a
// division and a degree-8 polynomial in series, ~70 cycles of latency per
// vector) at the same depth, not the ~2 whole chains of one vector at a time.
// The rows run kBgUnroll vectors per step (then single vectors, then the
// tail); every element gets the same operations in the same order, so the
// same bits, as one vector at a time.  Measured on the AVX2 EPYC, 2 threads,
// Swin-T's fc1 maps at training batch 4: the backward 21.0 -> 16.2 ms a step,
// the training step 834 -> 823 ms
// (benchmarks/results/cpu_bias_gelu_interleave_avx2_2026-12-05.md).
constexpr int kBgUnroll = 4;

#define SWIN_BG_EACH _Pragma("GCC unroll 8") for (int i = 0; i < U; ++i)

template <int U, typename V>
SWIN_ALWAYS_INLINE void normal_cdf_n(const V (&u)[U], V (&cdf)[U], V (&e)[U]) {
  static constexpr float R[] = {-5.906921560e-02f, 2.845761685e-01f, -4.872022997e-01f,
                                2.780697872e-01f,  -2.662738457e-02f, 2.026875542e-01f,
                                2.431036012e-01f,  2.823753290e-01f,  2.820864168e-01f};
  V w[U], t[U], r[U];
  SWIN_BG_EACH w[i] = (V)((VI<V>)u[i] & 0x7FFFFFFF) * 0.70710678118654752f;  // |u| / sqrt(2)
  SWIN_BG_EACH e[i] = cpu::exp_vec<V, VI<V>>(-(w[i] * w[i]));
  SWIN_BG_EACH {
    t[i] = 1.0f / (1.0f + 0.5f * w[i]);
    r[i] = V{} + R[0];
  }
  for (int k = 1; k < 9; ++k) SWIN_BG_EACH r[i] = r[i] * t[i] + R[k];
  SWIN_BG_EACH {
    const V half_erfc = 0.5f * e[i] * t[i] * r[i];                                     // Phi(-|u|)
    cdf[i] = u[i] >= 0.0f ? 1.0f - half_erfc : (u[i] < 0.0f ? half_erfc : u[i]);  // NaN stays NaN
  }
}

// GELU(u) and GELU'(u) of U vectors.
template <int U, typename V>
SWIN_ALWAYS_INLINE void gelu_n(V (&u)[U]) {
  V cdf[U], e[U];
  normal_cdf_n<U>(u, cdf, e);
  SWIN_BG_EACH u[i] = u[i] * cdf[i];
}
template <int U, typename V>
SWIN_ALWAYS_INLINE void gelu_grad_n(V (&u)[U]) {
  V cdf[U], e[U];
  normal_cdf_n<U>(u, cdf, e);
  SWIN_BG_EACH u[i] = cdf[i] + u[i] * e[i] * 0.39894228040143267794f;
}

// The first n (< lanes) elements of a row as one vector (zeros after), and back.
template <typename V, typename T>
SWIN_ALWAYS_INLINE V load_tail(const T* p, int64_t n) {
  float buf[cpu::lanes_of<V>] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
  return cpu::load_lanes<V>(buf);
}
template <typename V, typename T>
SWIN_ALWAYS_INLINE void store_tail(T* p, V v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(v[i]);
}

// y = GELU(z + bias) of the U vectors at column k of row zr / yr (yr may be zr: each
// element is read before it is written).
template <int U, typename V, typename T>
SWIN_ALWAYS_INLINE void bg_fwd_step(const T* zr, const float* bias, T* yr, int64_t k) {
  constexpr int L = cpu::lanes_of<V>;
  V u[U];
  SWIN_BG_EACH u[i] = cpu::load_lanes<V>(zr + k + i * L) + cpu::load_lanes<V>(bias + k + i * L);
  gelu_n<U>(u);
  SWIN_BG_EACH cpu::store_lanes(yr + k + i * L, u[i]);
}

template <typename V, typename T>
SWIN_ALWAYS_INLINE void bg_fwd_rows_vec(const T* z, const float* bias, T* y, int64_t K, int64_t r0, int64_t r1) {
  constexpr int L = cpu::lanes_of<V>;
  for (int64_t r = r0; r < r1; ++r) {
    const T* zr = z + r * K;
    T* yr = y + r * K;
    int64_t k = 0;
    for (; k + kBgUnroll * L <= K; k += kBgUnroll * L) bg_fwd_step<kBgUnroll, V>(zr, bias, yr, k);
    for (; k + L <= K; k += L) bg_fwd_step<1, V>(zr, bias, yr, k);
    if (k < K) {
      const int64_t n = K - k;
      V u[1] = {load_tail<V>(zr + k, n) + load_tail<V>(bias + k, n)};
      gelu_n<1>(u);
      store_tail(yr + k, u[0], n);
    }
  }
}

}  // namespace cpu_gelu
}  // namespace swin_ext
