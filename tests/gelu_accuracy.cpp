// Accuracy of csrc/cuda/gelu_math.h (the float32 GELU of the CUDA bias_gelu
// kernels) against float64, over float32 inputs: every bfloat16 and float16
// value, and every float32 bit pattern with a stride (stride 1: all 2^32).
// Compiled and run by tests/test_gelu_accuracy.py with the host compiler.
//
//   gelu_accuracy <stride> [lo hi]
//
// With lo, hi: every stride-th float32 of magnitude in [2^lo, 2^hi), both
// signs, instead of all bit patterns (lo = -30, hi = 4, stride 1: every
// float32 that is not trivially GELU(u) ~ u / 2 or u, ~8 min of one core).
//
// Prints one line per (function, range): the largest error in ulp of the
// float32-rounded exact value and the largest absolute error, for
//   gelu       swin_ext::gelu::gelu, the kernels' function (host exp2);
//   gelu_gpu   the same with every ex2 result off by +-2 ulp (ex2.approx's bound);
//   gelu_erff  0.5 u (1 + erff(u / sqrt 2)), the formula it replaces (glibc erff);
//   grad, grad_gpu, grad_erff   the same for GELU'(u) (erff formula: cdf + u * expf(-u^2/2) / sqrt(2 pi));
//   cdf        Phi(u) = normal_cdf(u).
// GELU' crosses zero at u ~ -0.75: its ulp column leaves out |GELU'(u)| < 2^-8
// (the absolute column has every u).  Exit status 1 if gelu_math's functions
// disagree with the +-0-ulp replica used for the GPU bound (a replica that
// drifted from the header).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "../csrc/cuda/gelu_math.h"

namespace {

namespace g = swin_ext::gelu;

float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

double ulp_of(double exact) {  // ulp of the float32 nearest to exact
  float f = static_cast<float>(std::fabs(exact));
  if (!(f < std::numeric_limits<float>::max())) f = std::numeric_limits<float>::max();
  if (f < std::numeric_limits<float>::min()) return std::ldexp(1.0, -149);
  return static_cast<double>(std::nextafter(f, std::numeric_limits<float>::infinity())) - f;
}

double exact_cdf(double u) { return 0.5 * std::erfc(-u * 0.70710678118654752440); }
double exact_gelu(double u) { return u * exact_cdf(u); }
double exact_grad(double u) { return exact_cdf(u) + u * std::exp(-0.5 * u * u) * 0.39894228040143267794; }

// The header's composition with each ex2 result scaled by (1 + d1) / (1 + d2).
float gelu_replica(float u, double d1) {
  const float t = std::fmin(std::fabs(u), g::kTailClamp);
  const float e = static_cast<float>(g::ex2_ftz(g::log2_2ncdf_neg(t)) * (1.0 + d1));
  return std::fmaf(-0.5f * t, e, g::max0_nan(u));
}
float grad_replica(float u, double d1, double d2) {
  const float t = std::fabs(u);
  const float h = 0.5f * static_cast<float>(g::ex2_ftz(g::log2_2ncdf_neg(t)) * (1.0 + d1));
  const float pdf = static_cast<float>(g::ex2_ftz(std::fmaf(t * t, -0x1.715476p-1f, -0x1.53643ap+0f)) * (1.0 + d2));
  return std::fmaf(u, pdf, u >= 0.0f ? 1.0f - h : h);
}
float gelu_erff(float u) { return 0.5f * u * (1.0f + erff(u * 0.70710678118654752440f)); }
float grad_erff(float u) {
  const float cdf = 0.5f * (1.0f + erff(u * 0.70710678118654752440f));
  return cdf + u * (expf(-0.5f * u * u) * 0.39894228040143267794f);
}

constexpr int kRanges = 6;
const char* kRangeNames[kRanges] = {"u<-5.6", "-5.6<=u<-3", "-3<=u<-1", "-1<=u<=1", "1<u<=3", "u>3"};
int range_of(float u) {
  if (u < -5.6f) return 0;
  if (u < -3.0f) return 1;
  if (u < -1.0f) return 2;
  if (u <= 1.0f) return 3;
  if (u <= 3.0f) return 4;
  return 5;
}

struct Err {
  double ulp = 0, abs = 0, at_ulp = 0, at_abs = 0;
  void add(float u, float got, double exact, bool ulp_ok) {
    if (std::isnan(exact)) return;
    const double e = std::isinf(exact) ? (got == exact ? 0.0 : INFINITY) : std::fabs(static_cast<double>(got) - exact);
    if (!(e <= abs)) { abs = e; at_abs = u; }
    if (ulp_ok) {
      const double eu = std::isinf(exact) ? e : e / ulp_of(exact);
      if (!(eu <= ulp)) { ulp = eu; at_ulp = u; }
    }
  }
};

constexpr int kFns = 7;
const char* kFnNames[kFns] = {"gelu", "gelu_gpu", "gelu_erff", "grad", "grad_gpu", "grad_erff", "cdf"};
Err err[kFns][kRanges];
bool drift = false;

void check(float u) {
  if (std::isnan(u)) {
    drift |= !std::isnan(g::gelu(u)) || !std::isnan(g::gelu_grad(u));  // NaN must propagate
    return;
  }
  const int r = range_of(u);
  const double ug = exact_gelu(u), ud = exact_grad(u), uc = exact_cdf(u);
  const float yg = g::gelu(u), yd = g::gelu_grad(u);
  const float rg = gelu_replica(u, 0.0);
  if (std::memcmp(&yg, &rg, 4) != 0 && !(std::isnan(yg) && std::isnan(rg))) drift = true;
  const float rd = grad_replica(u, 0.0, 0.0);
  if (std::memcmp(&yd, &rd, 4) != 0 && !(std::isnan(yd) && std::isnan(rd))) drift = true;
  const bool grad_ulp = std::fabs(ud) >= 0x1p-8;
  err[0][r].add(u, yg, ug, true);
  const double d = 0x1p-22;  // 2 ulp of ex2.approx.f32
  for (double s : {-d, d}) err[1][r].add(u, gelu_replica(u, s), ug, true);
  err[2][r].add(u, gelu_erff(u), ug, true);
  err[3][r].add(u, yd, ud, grad_ulp);
  for (double s1 : {-d, d})
    for (double s2 : {-d, d}) err[4][r].add(u, grad_replica(u, s1, s2), ud, grad_ulp);
  err[5][r].add(u, grad_erff(u), ud, grad_ulp);
  err[6][r].add(u, g::normal_cdf(u), uc, true);
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t stride = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 4099;
  if (stride == 0) return 2;
  uint64_t n = 0;
  for (uint32_t h = 0; h < 65536; ++h) {  // every bfloat16 and every float16 value
    check(bits_to_float(h << 16));
    uint16_t hb = static_cast<uint16_t>(h);
    const uint32_t sign = (hb >> 15) & 1, ex = (hb >> 10) & 31, man = hb & 1023;
    float f;
    if (ex == 0) f = std::ldexp(static_cast<float>(man), -24);
    else if (ex == 31) f = man ? NAN : INFINITY;
    else f = std::ldexp(static_cast<float>(man | 1024), static_cast<int>(ex) - 25);
    check(sign ? -f : f);
    n += 2;
  }
  if (argc > 3) {
    const int lo = std::atoi(argv[2]), hi = std::atoi(argv[3]);
    if (lo < -126 || hi > 128 || lo >= hi) return 2;
    const uint64_t first = uint64_t(lo + 127) << 23, last = uint64_t(hi + 127) << 23;
    for (uint64_t b = first; b < last; b += stride, n += 2) {
      check(bits_to_float(static_cast<uint32_t>(b)));
      check(bits_to_float(static_cast<uint32_t>(b) | 0x80000000u));
    }
  } else {
    for (uint64_t b = 0; b < (uint64_t(1) << 32); b += stride, ++n) check(bits_to_float(static_cast<uint32_t>(b)));
  }
  std::printf("inputs %llu stride %llu\n", static_cast<unsigned long long>(n), static_cast<unsigned long long>(stride));
  for (int f = 0; f < kFns; ++f)
    for (int r = 0; r < kRanges; ++r)
      std::printf("%s %s ulp %.3f at %.9g abs %.3e at %.9g\n", kFnNames[f], kRangeNames[r], err[f][r].ulp,
                  err[f][r].at_ulp, err[f][r].abs, err[f][r].at_abs);
  std::printf("replica %s\n", drift ? "DRIFT" : "ok");
  return drift ? 1 : 0;
}
