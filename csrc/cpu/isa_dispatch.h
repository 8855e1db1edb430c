// Run-time ISA dispatch of the CPU kernels, the one place that knows which
// instruction sets a kernel is compiled for.
//
// On x86-64 with GCC a kernel body is compiled more than once from the same
// source -- for the baseline ISA and, as a clone with a target attribute,
// for AVX2 + FMA (bias + GELU also for AVX-512) -- and the build this CPU
// runs is picked at run time; elsewhere only the baseline build exists.
// A kernel file names its clones in one line each and calls them through
// one dispatch:
//
//   SWIN_CPU_CLONES((template <typename T>), fwd_items, (const Args<T>& a, int64_t b, int64_t e),
//                   fwd_items_body(a, b, e));
//       defines fwd_items_default and (where clones exist) fwd_items_avx2,
//       each `void name params { body; }`, the body compiled for that ISA
//       (it is inlined into the clone: write it as SWIN_ALWAYS_INLINE or a
//       template the clone instantiates); the body sees `kIsa`, the clone's
//       cpu::Isa, as a constant expression;
//   SWIN_CPU_CLONE_AVX512((template <typename T>), name, (params), body);
//       adds name_avx512, with a body of its own (16-lane vectors);
//   SWIN_CPU_DISPATCH(fwd_items, (a, begin, end));
//   SWIN_CPU_DISPATCH(fwd_rows, <add_t>(a, p, begin, end));
//       the call (an expression) of name_avx2 on a CPU with AVX2 + FMA,
//       else of name_default; SWIN_CPU_DISPATCH_AVX512 tries name_avx512
//       first.
//
// SWIN_EXT_CPU_ISA=default forces the baseline build (tests use it to cover
// the path that machines without AVX2 take); =avx2 stops at the AVX2 build.
#pragma once

#include <cstdlib>
#include <string>

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define SWIN_HAVE_AVX2_CLONE 1
#define SWIN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SWIN_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define SWIN_HAVE_AVX2_CLONE 0
#define SWIN_TARGET_AVX2
#define SWIN_TARGET_AVX512
#endif

#define SWIN_CPU_UNPAREN(...) __VA_ARGS__

namespace swin_ext {
namespace cpu {

// The instruction set a clone's body is compiled for: each clone of
// SWIN_CPU_CLONES / SWIN_CPU_CLONE_AVX512 declares `kIsa`, a constant its body
// may pass on as a template argument (the one body text is compiled per ISA,
// so a tuning that depends on the register file, such as the GEMM row block
// of gemm_rows_for, is chosen there).
enum class Isa { kDefault, kAvx2, kAvx512 };

}  // namespace cpu
}  // namespace swin_ext

#define SWIN_CPU_ISA(isa) [[maybe_unused]] constexpr ::swin_ext::cpu::Isa kIsa = ::swin_ext::cpu::Isa::isa;

#if SWIN_HAVE_AVX2_CLONE

namespace swin_ext {
namespace cpu {

inline bool cpu_has_avx2() {
  static const bool has = [] {
    const char* isa = std::getenv("SWIN_EXT_CPU_ISA");
    if (isa != nullptr && std::string(isa) == "default") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

// AVX-512 (F, VL, BW, DQ) for the kernels compiled a third time with 16-lane
// vectors (compute-bound ones: bias + GELU).
inline bool cpu_has_avx512() {
  static const bool has = [] {
    const char* isa = std::getenv("SWIN_EXT_CPU_ISA");
    if (isa != nullptr && (std::string(isa) == "default" || std::string(isa) == "avx2")) return false;
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }();
  return has;
}

}  // namespace cpu
}  // namespace swin_ext

#define SWIN_CPU_CLONES(head, name, params, ...)                                                 \
  SWIN_CPU_UNPAREN head void name##_default params { SWIN_CPU_ISA(kDefault) __VA_ARGS__; }        \
  SWIN_CPU_UNPAREN head SWIN_TARGET_AVX2 void name##_avx2 params { SWIN_CPU_ISA(kAvx2) __VA_ARGS__; } \
  static_assert(true, "")
#define SWIN_CPU_CLONE_AVX512(head, name, params, ...)                                                       \
  SWIN_CPU_UNPAREN head SWIN_TARGET_AVX512 void name##_avx512 params { SWIN_CPU_ISA(kAvx512) __VA_ARGS__; } \
  static_assert(true, "")
#define SWIN_CPU_DISPATCH(name, ...) \
  (::swin_ext::cpu::cpu_has_avx2() ? name##_avx2 __VA_ARGS__ : name##_default __VA_ARGS__)
#define SWIN_CPU_DISPATCH_AVX512(name, ...)                          \
  (::swin_ext::cpu::cpu_has_avx512() ? name##_avx512 __VA_ARGS__     \
   : ::swin_ext::cpu::cpu_has_avx2() ? name##_avx2 __VA_ARGS__       \
                                     : name##_default __VA_ARGS__)

#else

#define SWIN_CPU_CLONES(head, name, params, ...) \
  SWIN_CPU_UNPAREN head void name##_default params { SWIN_CPU_ISA(kDefault) __VA_ARGS__; } static_assert(true, "")
#define SWIN_CPU_CLONE_AVX512(head, name, params, ...) static_assert(true, "")
#define SWIN_CPU_DISPATCH(name, ...) (name##_default __VA_ARGS__)
#define SWIN_CPU_DISPATCH_AVX512(name, ...) (name##_default __VA_ARGS__)

#endif
