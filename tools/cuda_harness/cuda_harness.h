// swin_harness: run the project's CUDA kernel sources on the CPU.
//
// Compiled by the host C++ compiler (g++/clang++) with -DSWIN_CUDA_HARNESS,
// never by nvcc; kernel headers get it through csrc/cuda/cuda_compat.h.
// It provides what the kernels use on the device:
//
//   * gridDim / blockDim / blockIdx / threadIdx / warpSize,
//   * __global__ __device__ __host__ __forceinline__ __launch_bounds__,
//   * static __shared__ arrays (per block) and dynamic shared memory
//     (SWIN_DYNAMIC_SHARED, a per-block heap buffer of the launch's size,
//     filled with 0xFF bytes: NaN for floating types, -1 for integers),
//   * __syncthreads (+ _count/_and/_or), __syncwarp and the warp intrinsics
//     (__shfl*_sync, __ballot_sync, __any_sync, __all_sync, __match_*_sync,
//     __reduce_*_sync) on 32-lane warps,
//   * atomics, the math intrinsics (__expf, rsqrtf, __ldg, ...), min/max,
//   * __half / __nv_bfloat16 from the CUDA headers (host-capable),
//   * nvcuda::wmma fragments (load/store/fill/mma_sync), emulated per lane,
//   * the few runtime calls a launcher makes (cudaFuncSetAttribute,
//     cudaMemsetAsync, cudaDeviceGetAttribute, ...), emulating one device.
//
// Execution model (see cuda_harness.cpp): every thread of a block is a
// cooperative fiber; a fiber runs until it reaches a barrier or a warp
// operation, which really waits for the threads it names.  One OS thread
// runs one block at a time; blocks run in parallel on several OS threads
// unless SWIN_HARNESS_SERIAL_BLOCKS is defined (the AddressSanitizer build,
// where static __shared__ arrays are plain statics that ASan instruments).
//
// Bugs are reported as swin_harness::Error (a std::runtime_error) thrown from
// the launch, naming the kernel, the block and the threads involved: threads
// waiting at different barriers, warp operations that can never complete
// (lanes exited, at a barrier or at another warp operation), a lane calling a
// warp operation with a mask that excludes itself, invalid launch
// configurations, exceptions or __trap() inside a kernel.
//
// Modes (environment, read at every launch, or swin_harness::set_options):
//   SWIN_HARNESS_SHUFFLE=<seed>   run the ready threads in a random order
//                                 (seeded) instead of thread order; exposes
//                                 missing barriers.  0 / unset: thread order.
//   SWIN_HARNESS_WORKERS=<n>      OS threads running blocks (default: cores).
//   SWIN_HARNESS_STACK_KB=<kb>    fiber stack size (default 256).
//   SWIN_HARNESS_ARCH=<80|86|89|90>  device whose limits are emulated (90).
//   SWIN_HARNESS_TIMEOUT=<s>      abort with a message naming the kernel and
//                                 block if a launch runs longer (600; 0: off):
//                                 a fiber that spins never yields.
#pragma once

#if defined(__CUDACC__)
#error "cuda_harness.h is for the host compiler; nvcc builds use the real CUDA runtime"
#endif

#include <cuda_bf16.h>  // host-capable types; also pulls crt/host_defines.h,
#include <cuda_fp16.h>  // vector_types.h (dim3, uint3, float4...), driver_types.h
#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>


// ---------------------------------------------------------------------------
// Qualifiers.  crt/host_defines.h (host compiler) defines __device__,
// __host__, __global__, __shared__, __constant__ as nothing and
// __forceinline__ / __align__ as GCC attributes.
// __global__ gives kernels internal linkage: their static locals (the static
// __shared__ arrays) are then instrumented by GCC's AddressSanitizer, which
// skips the COMDAT statics of external templates.  (So do not write
// `static __global__`; `namespace { __global__ ... }` is fine.)
#undef __global__
#define __global__ static
#undef __shared__
#if defined(SWIN_HARNESS_SERIAL_BLOCKS)
#define __shared__ static
#else
#define __shared__ static thread_local
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif

namespace swin_harness {

// Thrown by launches (and by the runtime emulation) when the harness finds a bug.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  uint64_t shuffle_seed = 0;  // 0: thread order
  int workers = 0;            // 0: hardware concurrency
  int stack_kb = 256;
  int arch = 90;
  int timeout_s = 600;        // watchdog per launch; 0: none
};
// Overrides the environment until clear_options() is called.
void set_options(const Options& o);
void clear_options();
Options current_options();

// Number of kernel launches run so far (tests use it to check a path ran).
uint64_t launch_count();

// Fault injection: the next n cudaFuncSetAttribute calls fail with
// cudaErrorInvalidValue (tests of the launchers' error handling).
void inject_attribute_failures(int n);

// The launch log: while recording, every launch that passes the launch
// checks is recorded (kernel name, grid, block, dynamic shared memory), so
// tests can assert what ran and how (grids that grow with the batch, shared
// memory under a device's limit).
struct LaunchRecord {
  std::string kernel;
  unsigned grid[3];
  unsigned block[3];
  size_t smem;
};
void start_launch_log();                    // clears the log and starts recording
std::vector<LaunchRecord> stop_launch_log();  // stops recording, returns the log

namespace detail {

// Warp operation kinds.
enum WarpKind : int {
  kWarpSync = 0,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kMatchAny,
  kMatchAll,
  kReduceAddU,
  kReduceMinU,
  kReduceMaxU,
  kReduceMinS,
  kReduceMaxS,
  kReduceAnd,
  kReduceOr,
  kReduceXor,
  kWmma,
  kCollective,  // warp_collective: a function computes every lane's result
};
enum BarrierKind : int { kBarPlain = 0, kBarCount, kBarAnd, kBarOr };

// Fiber side of the scheduler (cuda_harness.cpp).  Not inline: a call is a
// point where the thread may be suspended and other threads run.
int block_sync(int kind, int pred, const char* file, int line);
uint64_t warp_op(int kind, unsigned mask, uint64_t value, int param, int width, const char* what,
                 const char* file, int line);
unsigned active_mask();
void* dynamic_smem();
size_t dynamic_smem_size();
int launch_arch();  // SWIN_HARNESS_ARCH of the running launch

// A warp-collective operation whose result is computed by `fn` once every
// lane named in `mask` has arrived at the same call site: fn(lanes, arrived)
// gets each arrived lane's `data` pointer (null for the others; the data
// lives on the waiting lanes' stacks) and writes the lanes' results through
// them.  It returns nullptr, or an error message that fails the launch.
using CollectiveFn = const char* (*)(void* const* lanes, unsigned arrived);
void warp_collective(CollectiveFn fn, unsigned mask, void* data, const char* what, const char* file,
                     int line);

// cp.async of the calling thread: recorded, performed when a wait retires its
// group (see swin_harness::ptx below).
void async_copy(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line);
void async_commit();
void async_wait(int pending_groups);
[[noreturn]] void kernel_fail(const std::string& msg);

struct LaunchSpec {
  const char* name;
  const void* func;
  dim3 grid, block;
  size_t smem;
  void (*invoke)(void*);
  void* ctx;
};
void run_launch(const LaunchSpec& spec);

// Emulated runtime.
int func_set_attribute(const void* func, int attr, int value);
int device_attribute(int* value, int attr, int device);
void device_properties(cudaDeviceProp* prop);

template <typename T>
inline uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8, "warp intrinsics exchange values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, static_cast<const void*>(&v), sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(static_cast<void*>(&v), &b, sizeof(T));
  return v;
}

}  // namespace detail

// Launches `kernel` on the harness: the arguments are converted to the
// kernel's parameter types once (as a CUDA launch copies them), every thread
// gets its own copy.  `stream` is accepted and ignored (launches are synchronous).
template <typename... P, typename S, typename... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
            const S& /*stream*/, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
  using Tuple = std::tuple<std::decay_t<P>...>;
  struct Ctx {
    void (*k)(P...);
    Tuple params;
  };
  Ctx ctx{kernel, Tuple(std::forward<A>(args)...)};
  detail::LaunchSpec spec{name,  reinterpret_cast<const void*>(kernel),
                          grid,  block,
                          smem,  [](void* c) {
                            Ctx* x = static_cast<Ctx*>(c);
                            std::apply(x->k, x->params);  // copies: by-value params
                          },
                          &ctx};
  detail::run_launch(spec);
}

}  // namespace swin_harness

// ---------------------------------------------------------------------------
// Built-in variables (per OS thread; the scheduler sets them for the running fiber).
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

#define SWIN_HARNESS_SITE const char *swin_file = __builtin_FILE(), int swin_line = __builtin_LINE()

// ---------------------------------------------------------------------------
// Barriers and warp intrinsics.  The trailing defaulted parameters record the
// call site (GCC/Clang builtins) for the error messages; call them as in CUDA.
inline void __syncthreads(SWIN_HARNESS_SITE) {
  swin_harness::detail::block_sync(swin_harness::detail::kBarPlain, 0, swin_file, swin_line);
}
inline int __syncthreads_count(int pred, SWIN_HARNESS_SITE) {
  return swin_harness::detail::block_sync(swin_harness::detail::kBarCount, pred != 0, swin_file,
                                          swin_line);
}
inline int __syncthreads_and(int pred, SWIN_HARNESS_SITE) {
  return swin_harness::detail::block_sync(swin_harness::detail::kBarAnd, pred != 0, swin_file,
                                          swin_line);
}
inline int __syncthreads_or(int pred, SWIN_HARNESS_SITE) {
  return swin_harness::detail::block_sync(swin_harness::detail::kBarOr, pred != 0, swin_file,
                                          swin_line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, SWIN_HARNESS_SITE) {
  swin_harness::detail::warp_op(swin_harness::detail::kWarpSync, mask, 0, 0, 32, "__syncwarp",
                                swin_file, swin_line);
}
inline unsigned __activemask() { return swin_harness::detail::active_mask(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return from_bits<T>(warp_op(kShflIdx, mask, to_bits(var), srcLane, width, "__shfl_sync",
                              swin_file, swin_line));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return from_bits<T>(warp_op(kShflUp, mask, to_bits(var), static_cast<int>(delta), width,
                              "__shfl_up_sync", swin_file, swin_line));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return from_bits<T>(warp_op(kShflDown, mask, to_bits(var), static_cast<int>(delta), width,
                              "__shfl_down_sync", swin_file, swin_line));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return from_bits<T>(warp_op(kShflXor, mask, to_bits(var), laneMask, width, "__shfl_xor_sync",
                              swin_file, swin_line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kBallot, mask, pred != 0, 0, 32, "__ballot_sync", swin_file, swin_line));
}
inline int __any_sync(unsigned mask, int pred, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<int>(warp_op(kAny, mask, pred != 0, 0, 32, "__any_sync", swin_file, swin_line));
}
inline int __all_sync(unsigned mask, int pred, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<int>(warp_op(kAll, mask, pred != 0, 0, 32, "__all_sync", swin_file, swin_line));
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(warp_op(kMatchAny, mask, to_bits(value), 0, 32, "__match_any_sync",
                                       swin_file, swin_line));
}
template <typename T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  const uint64_t r =
      warp_op(kMatchAll, mask, to_bits(value), 0, 32, "__match_all_sync", swin_file, swin_line);
  *pred = static_cast<int>(r >> 32);
  return static_cast<unsigned>(r);
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kReduceAddU, mask, v, 0, 32, "__reduce_add_sync", swin_file, swin_line));
}
inline int __reduce_add_sync(unsigned mask, int v, SWIN_HARNESS_SITE) {
  return static_cast<int>(__reduce_add_sync(mask, static_cast<unsigned>(v), swin_file, swin_line));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kReduceMinU, mask, v, 0, 32, "__reduce_min_sync", swin_file, swin_line));
}
inline int __reduce_min_sync(unsigned mask, int v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<int>(static_cast<uint32_t>(warp_op(
      kReduceMinS, mask, static_cast<uint32_t>(v), 0, 32, "__reduce_min_sync", swin_file, swin_line)));
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kReduceMaxU, mask, v, 0, 32, "__reduce_max_sync", swin_file, swin_line));
}
inline int __reduce_max_sync(unsigned mask, int v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<int>(static_cast<uint32_t>(warp_op(
      kReduceMaxS, mask, static_cast<uint32_t>(v), 0, 32, "__reduce_max_sync", swin_file, swin_line)));
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kReduceAnd, mask, v, 0, 32, "__reduce_and_sync", swin_file, swin_line));
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kReduceOr, mask, v, 0, 32, "__reduce_or_sync", swin_file, swin_line));
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v, SWIN_HARNESS_SITE) {
  using namespace swin_harness::detail;
  return static_cast<unsigned>(
      warp_op(kReduceXor, mask, v, 0, 32, "__reduce_xor_sync", swin_file, swin_line));
}

// Memory fences: blocks that run in parallel are real OS threads.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { swin_harness::detail::kernel_fail("kernel called __trap()"); }
[[noreturn]] inline void __brkpt() { swin_harness::detail::kernel_fail("kernel called __brkpt()"); }
inline void __nanosleep(unsigned) {}
#if defined(__x86_64__) || defined(__i386__)
inline long long clock64() { return static_cast<long long>(__builtin_ia32_rdtsc()); }
#endif

// ---------------------------------------------------------------------------
// Dynamic shared memory of the running block.
namespace swin_harness {
inline void* dynamic_shared_memory() { return detail::dynamic_smem(); }
}  // namespace swin_harness

// ---------------------------------------------------------------------------
// Loads / stores with cache hints.
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline T __ldca(const T* p) { return *p; }
template <typename T>
inline T __ldcs(const T* p) { return *p; }
template <typename T>
inline T __ldlu(const T* p) { return *p; }
template <typename T>
inline T __ldcv(const T* p) { return *p; }
template <typename T>
inline void __stcg(T* p, T v) { *p = v; }
template <typename T>
inline void __stcs(T* p, T v) { *p = v; }
template <typename T>
inline void __stwb(T* p, T v) { *p = v; }
template <typename T>
inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------
// Atomics.  Fibers of a block never interleave inside one call; blocks on
// different OS threads use real atomic instructions.
namespace swin_harness {
namespace detail {
template <typename T, typename Bits, typename F>
inline T atomic_update(T* addr, F f) {
  static_assert(sizeof(T) == sizeof(Bits), "size");
  Bits* p = reinterpret_cast<Bits*>(addr);
  Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T old_v;
    std::memcpy(static_cast<void*>(&old_v), &old_bits, sizeof(T));
    const T new_v = f(old_v);
    Bits new_bits;
    std::memcpy(&new_bits, static_cast<const void*>(&new_v), sizeof(T));
    if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED))
      return old_v;
  }
}
}  // namespace detail
}  // namespace swin_harness

#define SWIN_HARNESS_INT_ATOMICS(T)                                                           \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }        \
  inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }        \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }      \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }        \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }          \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }        \
  inline T atomicMin(T* a, T v) {                                                             \
    return swin_harness::detail::atomic_update<T, T>(a, [v](T o) { return o < v ? o : v; }); \
  }                                                                                           \
  inline T atomicMax(T* a, T v) {                                                             \
    return swin_harness::detail::atomic_update<T, T>(a, [v](T o) { return o > v ? o : v; }); \
  }                                                                                           \
  inline T atomicCAS(T* a, T compare, T v) {                                                  \
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);   \
    return compare;                                                                           \
  }
SWIN_HARNESS_INT_ATOMICS(int)
SWIN_HARNESS_INT_ATOMICS(unsigned int)
SWIN_HARNESS_INT_ATOMICS(unsigned long long)
SWIN_HARNESS_INT_ATOMICS(long long)
#undef SWIN_HARNESS_INT_ATOMICS

inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return swin_harness::detail::atomic_update<unsigned, unsigned>(
      a, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return swin_harness::detail::atomic_update<unsigned, unsigned>(
      a, [limit](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}
inline float atomicAdd(float* a, float v) {
  return swin_harness::detail::atomic_update<float, uint32_t>(a, [v](float o) { return o + v; });
}
inline double atomicAdd(double* a, double v) {
  return swin_harness::detail::atomic_update<double, uint64_t>(a, [v](double o) { return o + v; });
}
inline float atomicExch(float* a, float v) {
  return swin_harness::detail::atomic_update<float, uint32_t>(a, [v](float) { return v; });
}
inline float atomicMax(float* a, float v) {  // not in CUDA for float; kernels emulate it via CAS
  return swin_harness::detail::atomic_update<float, uint32_t>(
      a, [v](float o) { return o > v ? o : v; });
}
inline __half atomicAdd(__half* a, __half v) {
  return swin_harness::detail::atomic_update<__half, uint16_t>(
      a, [v](__half o) { return __float2half(__half2float(o) + __half2float(v)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  return swin_harness::detail::atomic_update<__nv_bfloat16, uint16_t>(
      a, [v](__nv_bfloat16 o) { return __float2bfloat16(__bfloat162float(o) + __bfloat162float(v)); });
}
// Scoped variants.
template <typename T, typename V>
inline T atomicAdd_block(T* a, V v) { return atomicAdd(a, static_cast<T>(v)); }
template <typename T, typename V>
inline T atomicAdd_system(T* a, V v) { return atomicAdd(a, static_cast<T>(v)); }

// ---------------------------------------------------------------------------
// Math intrinsics.  The harness computes them with the host libm: the
// results are at least as accurate as the GPU's fast-math approximations.
inline float __expf(float x) { return ::expf(x); }
inline float __exp10f(float x) { return ::exp10f(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __log2f(float x) { return ::log2f(x); }
inline float __log10f(float x) { return ::log10f(x); }
inline float __powf(float x, float y) { return ::powf(x, y); }
inline float __sinf(float x) { return ::sinf(x); }
inline float __cosf(float x) { return ::cosf(x); }
inline float __tanf(float x) { return ::tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = ::sinf(x); *c = ::cosf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fsqrt_rn(float x) { return ::sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / ::sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return ::fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return ::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x != x ? 0.0f : x)); }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / ::cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / ::cbrt(x); }
inline int __float2int_rn(float x) { return static_cast<int>(::nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(::floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(::ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(::nearbyintf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(::nearbyintf(x)); }
inline int __float_as_int(float x) { int r; std::memcpy(&r, &x, 4); return r; }
inline unsigned __float_as_uint(float x) { unsigned r; std::memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; std::memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned x) { float r; std::memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; std::memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; std::memcpy(&r, &x, 8); return r; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (s & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (s & 31));
}
inline float __float_to_tf32_value(float x) {  // round to nearest, 10-bit mantissa
  unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return __uint_as_float(u);
}

// CUDA's min/max overloads (the host compiler sees none without cuda_runtime.h).
template <typename A, typename B,
          typename = std::enable_if_t<std::is_integral<A>::value && std::is_integral<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_integral<A>::value && std::is_integral<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
inline float min(float a, float b) { return ::fminf(a, b); }
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline double min(double a, double b) { return ::fmin(a, b); }
inline double max(double a, double b) { return ::fmax(a, b); }
inline double min(float a, double b) { return ::fmin(a, b); }
inline double max(float a, double b) { return ::fmax(a, b); }
inline double min(double a, float b) { return ::fmin(a, b); }
inline double max(double a, float b) { return ::fmax(a, b); }

// ---------------------------------------------------------------------------
// The runtime calls a launcher may make, on one emulated device (the limits of
// SWIN_HARNESS_ARCH).  Macros, so that they never bind to libcudart.
namespace swin_harness {
namespace rt {
template <typename T>
inline cudaError_t func_set_attribute(T* func, cudaFuncAttribute attr, int value) {
  return static_cast<cudaError_t>(
      detail::func_set_attribute(reinterpret_cast<const void*>(func), static_cast<int>(attr), value));
}
inline cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  return static_cast<cudaError_t>(detail::func_set_attribute(func, static_cast<int>(attr), value));
}
inline cudaError_t get_last_error() { return cudaSuccess; }
inline const char* get_error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (swin_harness)";
    case cudaErrorInvalidValue: return "invalid argument (swin_harness)";
    case cudaErrorInvalidDevice: return "invalid device ordinal (swin_harness)";
    default: return "error (swin_harness)";
  }
}
template <typename S>
inline cudaError_t memset_async(void* p, int value, size_t count, const S&) {
  if (count) std::memset(p, value, count);
  return cudaSuccess;
}
inline cudaError_t memset_sync(void* p, int value, size_t count) {
  if (count) std::memset(p, value, count);
  return cudaSuccess;
}
template <typename S>
inline cudaError_t memcpy_async(void* dst, const void* src, size_t count, cudaMemcpyKind, const S&) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
inline cudaError_t memcpy_sync(void* dst, const void* src, size_t count, cudaMemcpyKind) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
template <typename T>
inline cudaError_t memcpy_to_symbol(T& symbol, const void* src, size_t count, size_t offset = 0,
                                    cudaMemcpyKind = cudaMemcpyHostToDevice) {
  std::memcpy(reinterpret_cast<char*>(&symbol) + offset, src, count);
  return cudaSuccess;
}
inline cudaError_t get_device(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int device) {
  return static_cast<cudaError_t>(detail::device_attribute(value, static_cast<int>(attr), device));
}
inline cudaError_t get_device_properties(cudaDeviceProp* prop, int) {
  detail::device_properties(prop);
  return cudaSuccess;
}
template <typename S>
inline cudaError_t stream_synchronize(const S&) { return cudaSuccess; }
inline cudaError_t device_synchronize() { return cudaSuccess; }
}  // namespace rt
}  // namespace swin_harness

#define cudaFuncSetAttribute(...) ::swin_harness::rt::func_set_attribute(__VA_ARGS__)
#define cudaGetLastError() ::swin_harness::rt::get_last_error()
#define cudaPeekAtLastError() ::swin_harness::rt::get_last_error()
#define cudaGetErrorString(e) ::swin_harness::rt::get_error_string(e)
#define cudaMemsetAsync(...) ::swin_harness::rt::memset_async(__VA_ARGS__)
#define cudaMemset(...) ::swin_harness::rt::memset_sync(__VA_ARGS__)
#define cudaMemcpyAsync(...) ::swin_harness::rt::memcpy_async(__VA_ARGS__)
#define cudaMemcpy(...) ::swin_harness::rt::memcpy_sync(__VA_ARGS__)
#define cudaMemcpyToSymbol(...) ::swin_harness::rt::memcpy_to_symbol(__VA_ARGS__)
#define cudaGetDevice(d) ::swin_harness::rt::get_device(d)
#define cudaDeviceGetAttribute(...) ::swin_harness::rt::device_get_attribute(__VA_ARGS__)
#define cudaGetDeviceProperties(...) ::swin_harness::rt::get_device_properties(__VA_ARGS__)
#define cudaStreamSynchronize(s) ::swin_harness::rt::stream_synchronize(s)
#define cudaDeviceSynchronize() ::swin_harness::rt::device_synchronize()

// fp16 bits -> float by a table: the host conversion is slow, and the tensor-core
// emulation (WMMA, mma.sync) converts every element it multiplies.
namespace swin_harness {
namespace detail {
inline float half_bits_to_float(uint16_t bits) {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) {
      __half_raw raw;
      raw.x = static_cast<uint16_t>(i);
      t[i] = __half2float(__half(raw));
    }
    return t;
  }();
  return table[bits];
}
}  // namespace detail
}  // namespace swin_harness

// ---------------------------------------------------------------------------
// WMMA.  Fragment layouts are opaque in CUDA, so each lane here holds the
// whole tile (x[] in row-major order of the logical matrix): element-wise
// code on frag.x[i] that is uniform across lanes behaves as on the GPU.
// load/store/mma/fill wait for all 32 lanes of the warp first, as the _sync
// functions do.  mma accumulates in float (tf32 inputs are truncated to
// 10 mantissa bits, as the tensor cores read them).
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <typename Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};
template <typename T>
inline float to_f(const T& v) { return static_cast<float>(v); }
inline float to_f(const __half& v) { return swin_harness::detail::half_bits_to_float(static_cast<__half_raw>(v).x); }
inline float to_f(const __nv_bfloat16& v) { return __bfloat162float(v); }
template <typename T>
inline T from_f(float v) { return static_cast<T>(v); }
template <>
inline __half from_f<__half>(float v) { return __float2half(v); }
template <>
inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
inline void warp_sync(const char* what, const char* file, int line) {
  swin_harness::detail::warp_op(swin_harness::detail::kWmma, 0xffffffffu, 0, 0, 32, what, file,
                                line);
}
// The CUDA rules a GPU enforces (a violation is undefined behaviour there):
// the pointer 256-bit aligned, ldm a multiple of 16 bytes' worth of elements.
template <typename P>
inline void check_ptr_ldm(const P* p, unsigned ldm, const char* what, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    swin_harness::detail::kernel_fail(std::string(what) + " at " + file + ":" + std::to_string(line) +
                                      ": pointer not 256-bit aligned");
  if ((ldm * sizeof(P)) % 16 != 0)
    swin_harness::detail::kernel_fail(std::string(what) + " at " + file + ":" + std::to_string(line) +
                                      ": ldm " + std::to_string(ldm) + " is not a multiple of " +
                                      std::to_string(16 / sizeof(P)) + " elements");
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
 public:
  using element_type = typename detail::storage<T>::type;
  using storage_element_type = element_type;
  static constexpr int rows = detail::dims<Use, M, N, K>::rows;
  static constexpr int cols = detail::dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f,
                          const typename fragment<Use, M, N, K, T, L>::element_type& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm,
                             SWIN_HARNESS_SITE) {
  static_assert(!std::is_same<L, void>::value, "accumulator loads take a layout_t");
  detail::warp_sync("wmma::load_matrix_sync", swin_file, swin_line);
  detail::check_ptr_ldm(p, ldm, "wmma::load_matrix_sync", swin_file, swin_line);
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<L, row_major>::value ? p[size_t(r) * ldm + c]
                                                               : p[size_t(c) * ldm + r];
}
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const P* p, unsigned ldm,
                             layout_t layout, SWIN_HARNESS_SITE) {
  detail::warp_sync("wmma::load_matrix_sync", swin_file, swin_line);
  detail::check_ptr_ldm(p, ldm, "wmma::load_matrix_sync", swin_file, swin_line);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
}
template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm,
                              layout_t layout, SWIN_HARNESS_SITE) {
  detail::warp_sync("wmma::store_matrix_sync", swin_file, swin_line);
  detail::check_ptr_ldm(p, ldm, "wmma::store_matrix_sync", swin_file, swin_line);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) {
      P& dst = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
      dst = f.x[r * N + c];
    }
}
template <int M, int N, int K, typename Tab, typename La, typename Lb, typename Tc, typename Td>
inline void mma_sync(fragment<accumulator, M, N, K, Td, void>& d,
                     const fragment<matrix_a, M, N, K, Tab, La>& a,
                     const fragment<matrix_b, M, N, K, Tab, Lb>& b,
                     const fragment<accumulator, M, N, K, Tc, void>& c, bool /*satf*/ = false,
                     SWIN_HARNESS_SITE) {
  detail::warp_sync("wmma::mma_sync", swin_file, swin_line);
  constexpr bool tf32 = std::is_same<Tab, precision::tf32>::value;
  float acc[M * N], bf[K * N];
  for (int i = 0; i < M * N; ++i) acc[i] = detail::to_f(c.x[i]);
  for (int i = 0; i < K * N; ++i) {  // B converted once (not once per row of A)
    bf[i] = detail::to_f(b.x[i]);
    if (tf32) bf[i] = __uint_as_float(__float_as_uint(bf[i]) & 0xffffe000u);
  }
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) {
      float av = detail::to_f(a.x[i * K + k]);
      if (tf32) av = __uint_as_float(__float_as_uint(av) & 0xffffe000u);
      for (int j = 0; j < N; ++j) acc[i * N + j] += av * bf[k * N + j];
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = detail::from_f<Td>(acc[i]);
}
inline float __float_to_tf32(float x) { return __float_to_tf32_value(x); }
}  // namespace wmma
}  // namespace nvcuda

// ---------------------------------------------------------------------------
// PTX warp-level matrix instructions and asynchronous copies, emulated as the
// PTX ISA documents them (the device side is csrc/cuda/attention/mma.h):
//
//   * mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: every
//     lane contributes its fragment registers; the 16x16 A, 16x8 B and C
//     tiles are assembled from the lanes by the ISA's fragment layouts
//     (groupID = lane / 4, threadID_in_group = lane % 4), D = A B + C is
//     computed in float (k in order; the products are exact) and each lane
//     gets back the D registers its layout names.  So a kernel that reads or
//     writes a fragment register as the wrong (row, col) gets wrong numbers,
//     as on a GPU.
//   * ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: lanes 8m..8m+7
//     give the row addresses of matrix m (16-byte aligned, inside the block's
//     dynamic shared memory, checked); lane l receives, per matrix, elements
//     (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) -- of the transpose with .trans.
//   * stmatrix.sync.aligned.m8n8.x4.shared.b16 (sm_90): the inverse, lane l's
//     register m written as those two elements of matrix m at the row
//     addresses of lanes 8m..8m+7 (checked as ldmatrix's).  device_arch() is
//     the launch's SWIN_HARNESS_ARCH, so that a kernel takes its sm_90 path
//     (stmatrix) only where the emulated device has it.
//   * cp.async.{ca,cg}.shared.global (4, 8, 16 bytes, with a source size for
//     zero fill) + commit_group / wait_group: the destination is poisoned
//     (0xFF bytes) when the copy is issued and written when a wait_group of the
//     issuing thread retires its group, the latest moment a GPU may complete
//     it: a read before the wait (or by another thread before the wait and a
//     barrier) sees the poison.
// All lanes of the warp must execute mma / ldmatrix (.aligned): a lane that
// has exited, or lanes at different call sites, fail the launch.
namespace swin_harness {
namespace ptx {
enum class MmaIn { kF16, kBF16 };
void mma_m16n8k16(MmaIn type, float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file,
                  int line);
void ldmatrix(int num, bool trans, uint32_t* r, const void* row, const char* file, int line);
void stmatrix(int num, const uint32_t* r, void* row, const char* file, int line);
int device_arch();  // the emulated device's compute capability (90: sm_90), inside a kernel
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line) {
  detail::async_copy(dst, src, bytes, src_bytes, file, line);
}
inline void cp_async_commit() { detail::async_commit(); }
inline void cp_async_wait(int pending_groups) { detail::async_wait(pending_groups); }
}  // namespace ptx
}  // namespace swin_harness
