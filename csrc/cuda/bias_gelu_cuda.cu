// bias_gelu_fwd/_bwd on CUDA tensors: the ATen glue of the fused bias +
// exact GELU (kernels: bias_gelu.cuh, instantiated in bias_gelu_kernels.cu).
#include "bias_gelu.cuh"
#include "cuda_glue.h"

namespace swin_ext {
namespace cuda_glue {

inline void check_bias_gelu_limits(int64_t K) {
  TORCH_CHECK(K <= kMaxInt32, "swin_ext.bias_gelu (CUDA): K = ", K, " exceeds the kernels' 32-bit column indexing");
}

template <class Backend>
at::Tensor bias_gelu_fwd(const at::Tensor& z_in, const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_args(z_in, bias_in);
  Backend::check_device(z_in, "z");
  const typename Backend::Guard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), bias = bias_in.contiguous();
  const int64_t rows = z.numel() / K;
  at::Tensor y = Backend::output(z.sizes(), z.options());
  if (rows == 0) return y;
  check_bias_gelu_limits(K);
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_fwd_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename cuda::AccType<T>::type;
    const cuda::BgPlan plan =
        cuda::bias_gelu_plan<T>(rows, K, cuda::bias_gelu_aligned({z.const_data_ptr(), y.const_data_ptr()}));
    cuda::launch_bias_gelu_fwd<T, A>(ptr<T>(z), ptr<A>(bias), mut_ptr<T>(y), rows, K, plan, stream);
    Backend::check_launch();
  });
  return y;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> bias_gelu_bwd(const at::Tensor& grad_y_in, const at::Tensor& z_in,
                                                 const at::Tensor& bias_in) {
  const int64_t K = check_bias_gelu_bwd_args(grad_y_in, z_in, bias_in);
  Backend::check_device(z_in, "z");
  const typename Backend::Guard guard(z_in.device());
  const at::Tensor z = z_in.contiguous(), grad_y = grad_y_in.contiguous(), bias = bias_in.contiguous();
  const int64_t rows = z.numel() / K;
  at::Tensor dz = Backend::output(z.sizes(), z.options());
  if (rows == 0) return {dz, at::zeros({K}, bias.options())};
  check_bias_gelu_limits(K);
  at::Tensor db_part;
  const cudaStream_t stream = Backend::stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "bias_gelu_bwd_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = typename cuda::AccType<T>::type;
    const int64_t resident = sizeof(A) == 4 ? cuda::kBgBwdBlocksPerSm * device_sm_count() : 0;
    const cuda::BgPlan plan = cuda::bias_gelu_plan<T>(
        rows, K, cuda::bias_gelu_aligned({grad_y.const_data_ptr(), z.const_data_ptr(), dz.const_data_ptr()}),
        resident);
    db_part = Backend::output({plan.chunks, K}, bias.options());
    cuda::launch_bias_gelu_bwd<T, A>(ptr<T>(grad_y), ptr<T>(z), ptr<A>(bias), mut_ptr<T>(dz), mut_ptr<A>(db_part),
                                     rows, K, plan, stream);
    Backend::check_launch();
  });
  // Partials reduced over a fixed shape: bitwise reproducible run to run.
  return {dz, db_part.sum(0)};
}

// dz over grad_y: the kernel's dy and dz are __restrict__ (read-only cache for dy), so
// this runs the out-of-place kernel and copies; the model calls it on the CPU only.
template <class Backend>
at::Tensor bias_gelu_bwd_inplace(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& bias) {
  check_bias_gelu_bwd_inplace_args(grad_y, z, bias);
  auto [dz, dbias] = bias_gelu_bwd<Backend>(grad_y, z, bias);
  grad_y.copy_(dz);
  return dbias;
}

SWIN_CUDA_GLUE_IMPL(m) {
  m.impl("bias_gelu_fwd", &bias_gelu_fwd<GlueBackend>);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd<GlueBackend>);
  m.impl("bias_gelu_bwd_inplace", &bias_gelu_bwd_inplace<GlueBackend>);
}

}  // namespace cuda_glue
}  // namespace swin_ext
