// Self-tests of the CUDA harness: a standalone program (no torch), built by
// tools/cuda_harness/harness_build.py in a normal and an AddressSanitizer variant and run
// by tests/test_harness.py, one test per process:
//
//   selftest <name>     exit 0: PASS, 1: wrong result, 2: harness error (the
//                       message is printed), 3: unknown test
//
// Modes come from the environment (SWIN_HARNESS_SHUFFLE, SWIN_HARNESS_WORKERS).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "cuda/fast_div.h"
#include "selftest_kernels.cuh"

using namespace swin_selftest;

namespace {

int g_fail = 0;

// Device-style buffers: cudaMalloc returns 256-byte aligned memory and WMMA
// loads need 256-bit aligned tiles, while std::vector's malloc only promises
// 16 bytes.
template <typename T>
struct DeviceAlloc {
  using value_type = T;
  DeviceAlloc() = default;
  template <typename U>
  DeviceAlloc(const DeviceAlloc<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = ((n * sizeof(T) + 255) / 256) * 256;
    void* p = std::aligned_alloc(256, bytes == 0 ? 256 : bytes);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const DeviceAlloc<U>&) const { return true; }
  template <typename U>
  bool operator!=(const DeviceAlloc<U>&) const { return false; }
};
template <typename T>
using DeviceVec = std::vector<T, DeviceAlloc<T>>;
void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    g_fail = 1;
  }
}

int test_smem_reduction() {
  const int n = 5000;
  std::vector<float> in(n);
  double want = 0;
  for (int i = 0; i < n; ++i) {
    in[i] = static_cast<float>((i * 37) % 101) * 0.25f;
    want += in[i];
  }
  // Dynamic shared memory tree reduction, 40 blocks of 128.
  std::vector<float> part((n + 127) / 128, -1.0f);
  launch_smem_tree_sum(in.data(), part.data(), n, 128, nullptr);
  double got = 0;
  for (float p : part) got += p;
  check(std::fabs(got - want) < 1e-3 * want, "dynamic smem tree sum");
  // Static shared memory + warp shuffles, 7 blocks of 256.
  std::vector<float> out(7, -1.0f);
  launch_block_sum<float, 256>(in.data(), out.data(), n, 7, nullptr);
  got = 0;
  for (float p : out) got += p;
  check(std::fabs(got - want) < 1e-3 * want, "static smem block sum (float)");
  std::vector<double> ind(in.begin(), in.end()), outd(3, -1.0);
  launch_block_sum<double, 64>(ind.data(), outd.data(), n, 3, nullptr);
  check(std::fabs(outd[0] + outd[1] + outd[2] - want) < 1e-9 * want, "static smem block sum (double)");
  return g_fail;
}

int test_shuffle_reduction() {
  const int block = 96, blocks = 3, n = block * blocks;  // 3 warps per block
  std::vector<int> in(n), out(n * kWarpOpsOut, -7);
  for (int i = 0; i < n; ++i) in[i] = (i * 7919) % 97;
  SWIN_LAUNCH_KERNEL(warp_ops_kernel, blocks, block, 0, nullptr, in.data(), out.data());
  for (int w = 0; w < n / 32; ++w) {
    const int* v = in.data() + w * 32;
    int sum = 0, odd = 0;
    bool any = false, all = true;
    for (int l = 0; l < 32; ++l) {
      sum += v[l];
      if (v[l] & 1) odd |= 1 << l;
      any |= v[l] > 90;
      all &= v[l] >= 0;
    }
    const int blk = (w * 32) / block;
    int odd_in_block = 0;
    for (int i = blk * block; i < (blk + 1) * block; ++i) odd_in_block += in[i] & 1;
    int scan = 0;
    for (int l = 0; l < 32; ++l) {
      const int* o = out.data() + (w * 32 + l) * kWarpOpsOut;
      scan += v[l];
      int seg = 0;
      for (int k = (l / 8) * 8; k < (l / 8) * 8 + 8; ++k) seg += v[k];
      int half = 0;
      for (int k = 0; k < 16; ++k) half += v[k];
      char what[64];
      std::snprintf(what, sizeof what, "warp %d lane %d", w, l);
      check(o[0] == sum, (std::string(what) + ": __shfl_xor_sync sum").c_str());
      if (l == 0) check(o[1] == sum, (std::string(what) + ": __shfl_down_sync sum").c_str());
      check(o[2] == scan, (std::string(what) + ": __shfl_up_sync scan").c_str());
      check(o[3] == v[3], (std::string(what) + ": __shfl_sync broadcast").c_str());
      check(o[4] == seg, (std::string(what) + ": width-8 __shfl_xor_sync").c_str());
      check(o[5] == v[(l / 16) * 16 + (l + 1) % 16], (std::string(what) + ": width-16 __shfl_sync").c_str());
      check(o[6] == odd, (std::string(what) + ": __ballot_sync").c_str());
      check(o[7] == (any ? 1 : 0), (std::string(what) + ": __any_sync").c_str());
      check(o[8] == (all ? 1 : 0), (std::string(what) + ": __all_sync").c_str());
      check(o[9] == (l < 16 ? half : -1), (std::string(what) + ": half-warp mask").c_str());
      check(o[10] == (l == 0 ? v[31] : v[l]), (std::string(what) + ": __shfl_down_sync clamp").c_str());
      check(o[11] == v[31 - l], (std::string(what) + ": double __shfl_sync").c_str());
      check(o[12] == odd_in_block, (std::string(what) + ": __syncthreads_count").c_str());
    }
  }
  return g_fail;
}

int test_atomics() {
  int counter = 0;
  float fsum = 0;
  double dsum = 0;
  unsigned maxv = 0;
  SWIN_LAUNCH_KERNEL(atomics_kernel, 64, 64, 0, nullptr, &counter, &fsum, &dsum, &maxv);
  check(counter == 4096, "atomicAdd(int)");
  check(fsum == 4096.0f, "atomicAdd(float)");
  check(dsum == 2048.0, "atomicAdd(double)");
  check(maxv == 4095u, "atomicMax(unsigned)");
  return g_fail;
}

int test_exited_barrier() {
  std::vector<float> out(100, -1.0f);
  SWIN_LAUNCH_KERNEL(exited_barrier_kernel, 1, 128, 0, nullptr, out.data(), 100);
  for (int t = 0; t < 100; ++t) check(out[t] == static_cast<float>(99 - t), "exited threads");
  return g_fail;
}

template <typename T>
int test_wmma_t() {
  const int M = 32, N = 48, K = 32;
  DeviceVec<T> a(M * K), b(K * N);
  DeviceVec<float> c(M * N, -1.0f);
  std::vector<float> af(M * K), bf(K * N);
  for (int i = 0; i < M * K; ++i) {
    af[i] = static_cast<float>((i * 13) % 17 - 8) * 0.125f;
    a[i] = static_cast<T>(af[i]);
  }
  for (int i = 0; i < K * N; ++i) {
    bf[i] = static_cast<float>((i * 7) % 11 - 5) * 0.25f;
    b[i] = static_cast<T>(bf[i]);
  }
  const int tiles = (M / 16) * (N / 16);  // 6 tiles, 4 warps per block -> 2 blocks
  SWIN_LAUNCH_KERNEL((wmma_gemm_kernel<T>), (tiles + 3) / 4, 128, 0, nullptr, a.data(), b.data(),
                     c.data(), M, N, K);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float want = 0;
      for (int k = 0; k < K; ++k) want += af[i * K + k] * bf[k * N + j];
      check(std::fabs(c[i * N + j] - 2.0f * want) < 1e-4f, "wmma gemm");
    }
  return g_fail;
}
int test_wmma() {
  test_wmma_t<__half>();
  return test_wmma_t<__nv_bfloat16>();
}

// mma.sync + ldmatrix (every variant the kernels may use) + cp.async against
// a plain matmul; the values are small multiples of 1/8, so the products and
// sums are exact in float and any fragment misplaced shows.
template <typename T>
int mma_gemm_errors(int variant, int M, int N, int K) {
  DeviceVec<T> a(M * K), b(K * N);
  DeviceVec<float> c(M * N, -1.0f);
  std::vector<float> af(M * K), bf(K * N);
  for (int i = 0; i < M * K; ++i) {
    af[i] = static_cast<float>((i * 13 + 5) % 17 - 8) * 0.125f;
    a[i] = static_cast<T>(af[i]);
  }
  for (int i = 0; i < K * N; ++i) {
    bf[i] = static_cast<float>((i * 7 + 3) % 11 - 5) * 0.25f;
    b[i] = static_cast<T>(bf[i]);
  }
  SWIN_LAUNCH_KERNEL((mma_gemm_kernel<T>), 1, 64, mma_gemm_smem<T>(M, N, K), nullptr, a.data(), b.data(), c.data(),
                     M, N, K, variant);
  int bad = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float want = 0;
      for (int k = 0; k < K; ++k) want += af[i * K + k] * bf[k * N + j];
      if (!(std::fabs(c[i * N + j] - want) <= 1e-5f)) ++bad;
    }
  return bad;
}

int test_mma() {
  for (int v = 0; v < kMmaVariants; ++v) {
    char what[96];
    std::snprintf(what, sizeof what, "mma.sync m16n8k16 fp16, variant %d (a_mode %d, b_mode %d)", v, v / 6, v % 6);
    check(mma_gemm_errors<__half>(v, 32, 48, 48) == 0, what);
    std::snprintf(what, sizeof what, "mma.sync m16n8k16 bf16, variant %d (a_mode %d, b_mode %d)", v, v / 6, v % 6);
    check(mma_gemm_errors<__nv_bfloat16>(v, 32, 48, 48) == 0, what);
  }
  return g_fail;
}

int test_planted_mma_swapped_fragment() {
  const int bad = mma_gemm_errors<__nv_bfloat16>(kPlantedSwapA, 32, 32, 32);
  if (bad) std::printf("FAIL: %d of %d outputs are wrong (the swapped A fragment registers)\n", bad, 32 * 32);
  return bad ? 1 : 0;
}

int test_planted_ldmatrix_no_trans() {
  const int bad = mma_gemm_errors<__half>(kPlantedNoTrans, 32, 32, 32);
  if (bad) std::printf("FAIL: %d of %d outputs are wrong (the B tile loaded without .trans)\n", bad, 32 * 32);
  return bad ? 1 : 0;
}

// store_a_tile on the emulated sm_90 (stmatrix) and sm_86 (32-bit stores):
// the tile holds each element at its (row, col), and ldmatrix.x4 gives back
// the fragment stored.
int store_a_tile_errors(int arch, bool planted) {
  swin_harness::Options o = swin_harness::current_options();
  o.arch = arch;
  swin_harness::set_options(o);
  DeviceVec<uint16_t> tile(256, 0);
  DeviceVec<uint32_t> frag(128, 0);
  SWIN_LAUNCH_KERNEL(store_a_tile_kernel, 1, 32, 16 * 80, nullptr, tile.data(), frag.data(), planted);
  swin_harness::clear_options();
  int bad = 0;
  for (int e = 0; e < 256; ++e)
    if (tile[e] != e + 1) ++bad;
  for (int l = 0; l < 32; ++l)
    for (int r = 0; r < 4; ++r) {
      const int row = swin_ext::cuda::attn::ALayout::row(l, r), col = swin_ext::cuda::attn::ALayout::col(l, r);
      const uint32_t want = static_cast<uint32_t>(row * 16 + col + 1) | (static_cast<uint32_t>(row * 16 + col + 2) << 16);
      if (frag[l * 4 + r] != want) ++bad;
    }
  return bad;
}

int test_stmatrix() {
  check(store_a_tile_errors(90, false) == 0, "store_a_tile by stmatrix.x4 (sm_90)");
  check(store_a_tile_errors(86, false) == 0, "store_a_tile by 32-bit stores (sm_86)");
  return g_fail;
}

int test_planted_stmatrix_swapped_fragment() {
  const int bad = store_a_tile_errors(90, true);
  if (bad) std::printf("FAIL: %d of 384 values are wrong (the swapped fragment registers)\n", bad);
  return bad ? 1 : 0;
}

int test_planted_stmatrix_below_sm90() {
  swin_harness::Options o = swin_harness::current_options();
  o.arch = 86;
  swin_harness::set_options(o);
  std::vector<float> out(32);
  SWIN_LAUNCH_KERNEL(planted_stmatrix_below_sm90_kernel, 1, 32, 512, nullptr, out.data());
  return 0;
}

int cp_async_errors(bool planted) {
  DeviceVec<float> in(128), out(128, -1.0f);
  for (int i = 0; i < 128; ++i) in[i] = static_cast<float>(i) + 0.5f;
  const int valid = 24;
  SWIN_LAUNCH_KERNEL(cp_async_kernel, 1, 32, 128 * sizeof(float), nullptr, in.data(), out.data(), valid, planted);
  int bad = 0;
  for (int i = 0; i < 128; ++i)
    if (!(out[i] == (i / 4 < valid ? in[i] : 0.0f))) ++bad;
  return bad;
}

int test_cp_async() {
  check(cp_async_errors(false) == 0, "cp.async with zero fill");
  return g_fail;
}

int test_planted_cp_async_no_wait() {
  const int bad = cp_async_errors(true);
  if (bad) std::printf("FAIL: %d of 128 outputs are wrong (the missing cp.async wait)\n", bad);
  return bad ? 1 : 0;
}

int test_planted_mma_exited_lane() {
  std::vector<float> out(32);
  SWIN_LAUNCH_KERNEL(planted_mma_exited_lane_kernel, 1, 32, 0, nullptr, out.data());
  return 0;
}

int test_planted_ldmatrix_misaligned() {
  std::vector<float> out(32);
  SWIN_LAUNCH_KERNEL(planted_ldmatrix_misaligned_kernel, 1, 32, 512, nullptr, out.data());
  return 0;
}

// The kernels' division by host-precomputed multipliers (fast_div.h) against
// / and %: every divisor below 2^12, powers of two and their neighbours, and
// dividends at the edges of [0, 2^31) plus a pseudo-random sample.
int test_fast_div() {
  using swin_ext::cuda::FastDiv;
  std::vector<int> divisors;
  for (int d = 1; d < 4096; ++d) divisors.push_back(d);
  for (int k = 12; k < 31; ++k)
    for (int e = -2; e <= 2; ++e) divisors.push_back((1 << k) + e);
  divisors.push_back(2147483647);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  auto next = [&s]() { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; };
  int bad = 0;
  for (int d : divisors) {
    const FastDiv f = FastDiv::make(d);
    std::vector<int64_t> ns = {0, 1, d - 1, d, d + 1, 2 * int64_t(d) - 1, 2 * int64_t(d), 2147483647, 2147483646,
                               2147483647 - int64_t(d)};
    for (int i = 0; i < 64; ++i) ns.push_back(static_cast<int64_t>(next() % 2147483648ull));
    for (int64_t n : ns) {
      if (n < 0 || n > 2147483647) continue;
      int q, r;
      f.divmod(static_cast<int>(n), q, r);
      if (q != n / d || r != n % d) ++bad;
    }
  }
  check(bad == 0, "FastDiv::divmod");
  return g_fail;
}

int test_launch_config() {
  std::vector<float> buf(4096);
  int errors = 0;
  auto expect_error = [&](const char* what, const std::function<void()>& f, const char* needle) {
    try {
      f();
      std::printf("FAIL: %s: no error\n", what);
      g_fail = 1;
    } catch (const swin_harness::Error& e) {
      if (!std::strstr(e.what(), needle)) {
        std::printf("FAIL: %s: unexpected message: %s\n", what, e.what());
        g_fail = 1;
      }
      ++errors;
    }
  };
  float* p = buf.data();
  expect_error("empty grid", [&] { SWIN_LAUNCH_KERNEL(planted_oob_global_kernel, 0, 32, 0, nullptr, p); },
               "grid dimension is 0");
  expect_error("2048 threads", [&] { SWIN_LAUNCH_KERNEL(planted_oob_global_kernel, 1, 2048, 0, nullptr, p); },
               "1024 threads");
  expect_error("64 KiB smem without opt-in",
               [&] { SWIN_LAUNCH_KERNEL(planted_oob_global_kernel, 1, 32, 65536, nullptr, p); },
               "cudaFuncSetAttribute");
  // With the attribute set, 64 KiB is fine on sm_90.
  cudaFuncSetAttribute(planted_divergent_barrier_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536);
  try {
    SWIN_LAUNCH_KERNEL(planted_divergent_barrier_kernel, 1, 8, 65536, nullptr, p);  // 8 threads: no divergence
  } catch (const swin_harness::Error& e) {
    std::printf("FAIL: launch with 64 KiB after opt-in: %s\n", e.what());
    g_fail = 1;
  }
  return g_fail;
}

// ---- planted bugs: the test driver checks the outcome.
int test_planted_missing_barrier() {
  const int block = 64, blocks = 4;
  std::vector<float> in(block * blocks), out(block * blocks, 0.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 13) + 1.0f;
  SWIN_LAUNCH_KERNEL(planted_missing_barrier_kernel, blocks, block, block * sizeof(float), nullptr,
                     in.data(), out.data());
  int bad = 0;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < block; ++t) {
      const float want = in[b * block + t] - (t > 0 ? in[b * block + t - 1] : 0.0f);
      if (!(out[b * block + t] == want)) ++bad;
    }
  if (bad) std::printf("FAIL: %d of %d outputs are wrong (the missing barrier)\n", bad, block * blocks);
  return bad ? 1 : 0;
}

int test_planted_divergent_barrier() {
  std::vector<float> out(64);
  SWIN_LAUNCH_KERNEL(planted_divergent_barrier_kernel, 1, 64, 0, nullptr, out.data());
  return 0;
}
int test_planted_missing_lane() {
  std::vector<float> out(64);
  SWIN_LAUNCH_KERNEL(planted_missing_lane_kernel, 2, 64, 0, nullptr, out.data());
  return 0;
}
int test_planted_trap() {
  std::vector<float> out(64);
  SWIN_LAUNCH_KERNEL(planted_trap_kernel, 1, 64, 0, nullptr, out.data());
  return 0;
}
int test_planted_bad_mask() {
  std::vector<float> out(64);
  SWIN_LAUNCH_KERNEL(planted_bad_mask_kernel, 1, 32, 0, nullptr, out.data());
  return 0;
}
int test_planted_oob_global() {
  float* out = new float[64];  // heap, exactly 64 floats: ASan sees out[64]
  SWIN_LAUNCH_KERNEL(planted_oob_global_kernel, 1, 64, 0, nullptr, out);
  delete[] out;
  return 0;
}
int test_planted_oob_dynamic_shared() {
  std::vector<float> out(64);
  SWIN_LAUNCH_KERNEL(planted_oob_dynamic_shared_kernel, 1, 64, 64 * sizeof(float), nullptr, out.data());
  return 0;
}
int test_planted_oob_static_shared() {
  std::vector<float> out(64);
  SWIN_LAUNCH_KERNEL(planted_oob_static_shared_kernel, 1, 64, 0, nullptr, out.data());
  return 0;
}

int test_planted_spin() {
  int flag = 0;
  SWIN_LAUNCH_KERNEL(planted_spin_kernel, 2, 32, 0, nullptr, &flag);
  return 0;
}

const std::map<std::string, int (*)()>& tests() {
  static const std::map<std::string, int (*)()> t = {
      {"smem_reduction", test_smem_reduction},
      {"shuffle_reduction", test_shuffle_reduction},
      {"atomics", test_atomics},
      {"exited_barrier", test_exited_barrier},
      {"wmma", test_wmma},
      {"launch_config", test_launch_config},
      {"mma", test_mma},
      {"fast_div", test_fast_div},
      {"cp_async", test_cp_async},
      {"stmatrix", test_stmatrix},
      {"planted_stmatrix_swapped_fragment", test_planted_stmatrix_swapped_fragment},
      {"planted_stmatrix_below_sm90", test_planted_stmatrix_below_sm90},
      {"planted_mma_swapped_fragment", test_planted_mma_swapped_fragment},
      {"planted_ldmatrix_no_trans", test_planted_ldmatrix_no_trans},
      {"planted_cp_async_no_wait", test_planted_cp_async_no_wait},
      {"planted_mma_exited_lane", test_planted_mma_exited_lane},
      {"planted_ldmatrix_misaligned", test_planted_ldmatrix_misaligned},
      {"planted_missing_barrier", test_planted_missing_barrier},
      {"planted_divergent_barrier", test_planted_divergent_barrier},
      {"planted_missing_lane", test_planted_missing_lane},
      {"planted_trap", test_planted_trap},
      {"planted_bad_mask", test_planted_bad_mask},
      {"planted_oob_global", test_planted_oob_global},
      {"planted_oob_dynamic_shared", test_planted_oob_dynamic_shared},
      {"planted_oob_static_shared", test_planted_oob_static_shared},
      {"planted_spin", test_planted_spin},
  };
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: %s <test>|list\n", argv[0]);
    return 3;
  }
  const std::string name = argv[1];
  if (name == "list") {
    for (auto& kv : tests()) std::printf("%s\n", kv.first.c_str());
    return 0;
  }
  auto it = tests().find(name);
  if (it == tests().end()) {
    std::printf("unknown test %s\n", name.c_str());
    return 3;
  }
  try {
    const int rc = it->second();
    if (rc == 0) std::printf("PASS %s\n", name.c_str());
    return rc ? 1 : 0;
  } catch (const swin_harness::Error& e) {
    std::printf("HARNESS ERROR: %s\n", e.what());
    return 2;
  }
}
