// add_layernorm_fwd/_bwd on CUDA tensors: the ATen glue of the fused
// residual add + LayerNorm (kernels: add_layernorm.cuh, instantiated in
// add_layernorm_kernels.cu).
#include "add_layernorm.cuh"
#include "cuda_glue.h"

namespace swin_ext {
namespace cuda_glue {

// SWIN_EXT_ADD_LN_BLOCKS=<n> sets the register path's target block count
// (tests: several row groups per warp on small inputs); else the default.
inline int64_t add_layernorm_target_blocks() {
  const char* v = std::getenv("SWIN_EXT_ADD_LN_BLOCKS");
  const long n = v == nullptr ? 0 : std::strtol(v, nullptr, 10);
  return n > 0 && n < (1L << 30) ? n : cuda::kAddLnTargetBlocks;
}

// The SM count for the backward's plan; 0 (the target's groups per warp, as
// set) when SWIN_EXT_ADD_LN_BLOCKS is set.
inline int64_t add_layernorm_plan_sms() {
  return std::getenv("SWIN_EXT_ADD_LN_BLOCKS") == nullptr ? device_sm_count() : 0;
}

inline void check_add_layernorm_limits(int64_t rows, int64_t C) {
  TORCH_CHECK(rows <= kMaxInt32 && C <= kMaxInt32, "swin_ext.add_layernorm (CUDA): ", rows, " rows of ", C,
              " channels exceed the kernels' 32-bit row indexing");
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_fwd(
    const at::Tensor& x_in, const at::Tensor& branch_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    double eps, std::optional<at::ScalarType> y_dtype) {
  check_add_layernorm_args(x_in, branch_in, weight_in, bias_in, y_dtype);
  check_layernorm_eps(eps, "swin_ext.add_layernorm");
  Backend::check_device(x_in, "x");
  const at::ScalarType tx = x_in.scalar_type(), ty_req = y_dtype.value_or(tx);
  if (!add_layernorm_fused_dtypes(tx, branch_in.scalar_type(), ty_req)) {
    // Another mix of dtypes (none that autocast makes): h = x + branch summed
    // in the promoted dtype c and stored in x's dtype, as the CPU kernel
    // does, then the fused kernel in c on the stored h (its LayerNorm is that
    // of the tensor h) and y cast once to y_dtype.  Extra passes, same result.
    const at::ScalarType c = add_layernorm_promoted(tx, branch_in.scalar_type(), ty_req);
    const at::Tensor h = (x_in.to(c) + branch_in.to(c)).to(tx);
    const at::Tensor hc = h.to(c);
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    auto [h2, yc, mean, rstd] = add_layernorm_fwd<Backend>(hc, at::zeros_like(hc), weight_in.to(acc), bias_in.to(acc),
                                                          eps, std::nullopt);
    (void)h2;
    const auto stat = weight_in.scalar_type();
    return {h, yc.to(ty_req), mean.to(stat), rstd.to(stat)};
  }
  const typename Backend::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), branch = branch_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  const at::ScalarType ty = y_dtype.value_or(x.scalar_type());
  at::Tensor h = Backend::output(x.sizes(), x.options());
  at::Tensor y = Backend::output(x.sizes(), x.options().dtype(ty));
  const auto stat_sizes = x.sizes().slice(0, x.dim() - 1);
  at::Tensor mean = Backend::output(stat_sizes, weight.options());
  at::Tensor rstd = Backend::output(stat_sizes, weight.options());
  if (rows == 0) return {h, y, mean, rstd};
  check_add_layernorm_limits(rows, C);
  const cudaStream_t stream = Backend::stream();
  dispatch_add_layernorm(x.scalar_type(), branch.scalar_type(), ty, "forward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    const bool aligned = cuda::add_ln_aligned({x.const_data_ptr(), branch.const_data_ptr(), h.const_data_ptr(),
                                               y.const_data_ptr()});
    const cuda::AddLnPlan plan = cuda::add_ln_plan<TX, TB, TY, A>(rows, C, aligned, false, add_layernorm_target_blocks());
    cuda::launch_add_layernorm_fwd<TX, TB, TY, A>(ptr<TX>(x), ptr<TB>(branch), ptr<A>(weight), ptr<A>(bias),
                                                  mut_ptr<TX>(h), mut_ptr<TY>(y), mut_ptr<A>(mean), mut_ptr<A>(rstd),
                                                  rows, C, eps, plan, stream);
    Backend::check_launch();
  });
  return {h, y, mean, rstd};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_bwd(
    const std::optional<at::Tensor>& grad_h_in, const at::Tensor& grad_y_in, const at::Tensor& h_in,
    const at::Tensor& weight_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    std::optional<at::ScalarType> branch_dtype) {
  check_add_layernorm_bwd_args(grad_h_in, grad_y_in, h_in, weight_in, mean_in, rstd_in, branch_dtype);
  Backend::check_device(h_in, "h");
  const at::ScalarType th = h_in.scalar_type(), tb_req = branch_dtype.value_or(th);
  if (!add_layernorm_fused_dtypes(th, tb_req, grad_y_in.scalar_type())) {
    // Another mix of dtypes (see the forward): the fused kernel in the promoted dtype, cast back once.
    const at::ScalarType c = add_layernorm_promoted(th, tb_req, grad_y_in.scalar_type());
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    std::optional<at::Tensor> gh;
    if (grad_h_in.has_value()) gh = grad_h_in->to(c);
    auto [dhc, unused, dw, db] = add_layernorm_bwd<Backend>(gh, grad_y_in.to(c), h_in.to(c), weight_in.to(acc),
                                                            mean_in.to(acc), rstd_in.to(acc), std::nullopt);
    (void)unused;
    const auto stat = weight_in.scalar_type();
    at::Tensor dbranch = branch_dtype.has_value() ? dhc.to(*branch_dtype) : at::empty({0}, h_in.options());
    return {dhc.to(th), dbranch, dw.to(stat), db.to(stat)};
  }
  const typename Backend::Guard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), grad_y = grad_y_in.contiguous();
  const at::Tensor grad_h = grad_h_in.has_value() ? grad_h_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous(), mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t C = h.size(-1), rows = C ? h.numel() / C : 0;
  at::Tensor dh = Backend::output(h.sizes(), h.options());
  at::Tensor dbranch = branch_dtype.has_value() ? Backend::output(h.sizes(), h.options().dtype(*branch_dtype))
                                                : at::empty({0}, h.options());
  if (rows == 0) {
    return {dh, dbranch, at::zeros({C}, weight.options()), at::zeros({C}, weight.options())};
  }
  check_add_layernorm_limits(rows, C);
  const cudaStream_t stream = Backend::stream();
  const at::ScalarType tb = branch_dtype.value_or(h.scalar_type());
  at::Tensor part;  // (2, partials, C): dweight's rows, then dbias's
  dispatch_add_layernorm(h.scalar_type(), tb, grad_y.scalar_type(), "backward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    const bool aligned = cuda::add_ln_aligned({grad_h.defined() ? grad_h.const_data_ptr() : nullptr,
                                               grad_y.const_data_ptr(), h.const_data_ptr(), dh.const_data_ptr(),
                                               branch_dtype.has_value() ? dbranch.const_data_ptr() : nullptr});
    const cuda::AddLnPlan plan =
        cuda::add_ln_plan<TX, TB, TY, A>(rows, C, aligned, true, add_layernorm_target_blocks(), add_layernorm_plan_sms());
    TORCH_CHECK(plan.reg || plan.nwarps > 0, "swin_ext.add_layernorm (CUDA): C = ", C, " is too large for the ",
                "backward kernel (its per-block weight/bias accumulators of 2C values exceed ", cuda::kAddLnBwdMaxSmem,
                " bytes of shared memory)");
    part = partial_pair_workspace<Backend>(plan.partials(), C, weight.options());
    A* dw_part = mut_ptr<A>(part);
    cuda::launch_add_layernorm_bwd<TX, TB, TY, A>(
        grad_h.defined() ? ptr<TX>(grad_h) : nullptr, ptr<TY>(grad_y), ptr<TX>(h), ptr<A>(weight), ptr<A>(mean),
        ptr<A>(rstd), mut_ptr<TX>(dh), branch_dtype.has_value() ? mut_ptr<TB>(dbranch) : nullptr, dw_part,
        dw_part + plan.partials() * C, rows, C, plan, stream);
    Backend::check_launch();
  });
  auto [dweight, dbias] = sum_partial_pair<Backend>(part, stream);
  return {dh, dbranch, dweight, dbias};
}

SWIN_CUDA_GLUE_IMPL(m) {
  m.impl("add_layernorm_fwd", &add_layernorm_fwd<GlueBackend>);
  m.impl("add_layernorm_bwd", &add_layernorm_bwd<GlueBackend>);
}

}  // namespace cuda_glue
}  // namespace swin_ext
