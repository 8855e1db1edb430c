// The swin_ext_harness test extension: CUDA kernel sources compiled by the
// host compiler (-DSWIN_CUDA_HARNESS) and run by the CPU harness on CPU
// tensors, under the op namespace swin_ext_harness.  Test-only: built by
// tools/cuda_harness/harness_build.py, never by setup.py.
//
// This file holds the harness controls and the demo / self-test kernels, and
// defines the library's schemas (swin_ext's own list, csrc/op_schemas.h);
// harness_ops.cpp registers the project's kernels through the shipped glue
// (csrc/cuda/<op>_cuda.cu).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "harness_glue.h"
#include "op_schemas.h"
#include "demo_kernels.cuh"
#include "selftest_kernels.cuh"

namespace swin_harness_ops {
namespace {

void set_options(int64_t shuffle_seed, int64_t workers) {
  swin_harness::Options o = swin_harness::current_options();
  o.shuffle_seed = static_cast<uint64_t>(shuffle_seed);
  o.workers = static_cast<int>(workers);
  swin_harness::set_options(o);
}
void clear_options() { swin_harness::clear_options(); }
int64_t launch_count() { return static_cast<int64_t>(swin_harness::launch_count()); }
void inject_attribute_failures(int64_t n) { swin_harness::inject_attribute_failures(static_cast<int>(n)); }
void start_launch_log() { swin_harness::start_launch_log(); }
// One line per launch: "kernel;gx,gy,gz;bx,by,bz;smem".
std::string stop_launch_log() {
  std::string out;
  for (const auto& r : swin_harness::stop_launch_log()) {
    out += r.kernel + ";" + std::to_string(r.grid[0]) + "," + std::to_string(r.grid[1]) + "," +
           std::to_string(r.grid[2]) + ";" + std::to_string(r.block[0]) + "," + std::to_string(r.block[1]) +
           "," + std::to_string(r.block[2]) + ";" + std::to_string(r.smem) + "\n";
  }
  return out;
}

bool asan_enabled() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

at::Tensor row_softmax(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2, "row_softmax: x must be 2-D");
  TORCH_CHECK(x_in.device().is_cpu(), "swin_ext_harness runs on CPU tensors");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "row_softmax", [&] {
    using T = cuda_t<scalar_t>;
    swin_demo::launch_row_softmax<T>(ptr<T>(x), mut_ptr<T>(y), x.size(0), x.size(1), nullptr);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x_in,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& bias, double eps) {
  TORCH_CHECK(x_in.dim() == 2, "layer_norm_fwd: x must be 2-D");
  const at::Tensor x = x_in.contiguous();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(weight.scalar_type() == acc && bias.scalar_type() == acc, "weight/bias dtype");
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({x.size(0)}, w.options());
  at::Tensor rstd = at::empty({x.size(0)}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_fwd", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename swin_demo::Acc<T>::type;
    swin_demo::launch_layer_norm_fwd<T>(ptr<T>(x), ptr<A>(w), ptr<A>(b), mut_ptr<T>(y),
                                        mut_ptr<A>(mean), mut_ptr<A>(rstd), x.size(0), x.size(1),
                                        eps, nullptr);
  });
  return {y, mean, rstd};
}

at::Tensor wmma_matmul(const at::Tensor& a_in, const at::Tensor& b_in) {
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == b_in.size(0),
              "wmma_matmul: shapes");
  TORCH_CHECK(a_in.size(0) % 16 == 0 && a_in.size(1) % 16 == 0 && b_in.size(1) % 16 == 0,
              "wmma_matmul: sizes must be multiples of 16");
  TORCH_CHECK(a_in.scalar_type() == b_in.scalar_type(), "wmma_matmul: dtypes differ");
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int M = static_cast<int>(a.size(0)), K = static_cast<int>(a.size(1)),
            N = static_cast<int>(b.size(1));
  at::Tensor c = at::empty({M, N}, a.options().dtype(at::kFloat));
  const int tiles = (M / 16) * (N / 16);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    SWIN_LAUNCH_KERNEL((swin_selftest::wmma_gemm_kernel<T>), (tiles + 3) / 4, 128, 0, nullptr,
                       ptr<T>(a), ptr<T>(b), mut_ptr<float>(c), M, N, K);
  };
  if (a.scalar_type() == at::kHalf) run(__half());
  else if (a.scalar_type() == at::kBFloat16) run(__nv_bfloat16());
  else TORCH_CHECK(false, "wmma_matmul: float16 or bfloat16 inputs");
  return c;
}

// Planted bugs, for the end-to-end checks (error reaches Python; ASan in the
// torch process sees an out-of-bounds write into a tensor).
void planted(const std::string& name) {
  at::Tensor out = at::zeros({64}, at::kFloat);
  float* p = out.mutable_data_ptr<float>();
  if (name == "oob_global") {
    SWIN_LAUNCH_KERNEL(swin_selftest::planted_oob_global_kernel, 1, 64, 0, nullptr, p);
  } else if (name == "divergent_barrier") {
    SWIN_LAUNCH_KERNEL(swin_selftest::planted_divergent_barrier_kernel, 1, 64, 0, nullptr, p);
  } else if (name == "missing_lane") {
    SWIN_LAUNCH_KERNEL(swin_selftest::planted_missing_lane_kernel, 1, 64, 0, nullptr, p);
  } else {
    TORCH_CHECK(false, "planted: unknown bug ", name);
  }
}

}  // namespace
}  // namespace swin_harness_ops

TORCH_LIBRARY(swin_ext_harness, m) {
  // Harness controls (also settable by environment, see cuda_harness.h).
  m.def("set_options(int shuffle_seed, int workers) -> ()", &swin_harness_ops::set_options);
  m.def("clear_options() -> ()", &swin_harness_ops::clear_options);
  m.def("launch_count() -> int", &swin_harness_ops::launch_count);
  m.def("inject_attribute_failures(int n) -> ()", &swin_harness_ops::inject_attribute_failures);
  m.def("start_launch_log() -> ()", &swin_harness_ops::start_launch_log);
  m.def("stop_launch_log() -> str", &swin_harness_ops::stop_launch_log);
  m.def("asan_enabled() -> bool", &swin_harness_ops::asan_enabled);
  m.def("planted(str name) -> ()", &swin_harness_ops::planted);
  // Demo kernels.
  m.def("row_softmax(Tensor x) -> Tensor");
  m.def("layer_norm_fwd(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("wmma_matmul(Tensor a, Tensor b) -> Tensor");
  // The project's ops: swin_ext's own list (csrc/op_schemas.h), implemented
  // in harness_ops.cpp through the shipped glue.
  swin_ext::schema::define_ops(m);
}

TORCH_LIBRARY_IMPL(swin_ext_harness, CPU, m) {
  m.impl("row_softmax", &swin_harness_ops::row_softmax);
  m.impl("layer_norm_fwd", &swin_harness_ops::layer_norm_fwd);
  m.impl("wmma_matmul", &swin_harness_ops::wmma_matmul);
}
