// patch_merging_fwd/_bwd on CUDA tensors: the ATen glue of the fused 2x2
// gather + LayerNorm (kernels: patch_merging.cuh, instantiated in
// patch_merging_kernels.cu).
#include "patch_merging.cuh"
#include "cuda_glue.h"

namespace swin_ext {
namespace cuda_glue {

// The merging kernels index pixels and channels in 32 bits.
inline void check_merging_limits(int64_t B, int64_t H, int64_t W, int64_t C) {
  TORCH_CHECK(B * H * W <= kMaxInt32 && 4 * C <= kMaxInt32 && B * ((H + 1) / 2) * ((W + 1) / 2) <= kMaxInt32,
              "swin_ext.patch_merging (CUDA): input (", B, ", ", H, ", ", W, ", ", C,
              ") exceeds the kernels' 32-bit pixel indexing");
}

// The dtype the residual add of patch merging runs in (its contract, as
// add_layernorm's): float64 if x or the branch is float64, else float32.
inline at::ScalarType merging_add_dtype(at::ScalarType tx, const std::optional<at::Tensor>& branch) {
  return (tx == at::kDouble || (branch.has_value() && branch->scalar_type() == at::kDouble)) ? at::kDouble
                                                                                              : at::kFloat;
}

// h = x + branch (summed in merging_add_dtype, rounded to x's dtype), or x.
inline at::Tensor merging_h(const at::Tensor& x, const std::optional<at::Tensor>& branch) {
  if (!branch.has_value()) return x;
  const at::ScalarType add = merging_add_dtype(x.scalar_type(), branch);
  return (x.to(add) + branch->to(add)).to(x.scalar_type());
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_merging_fwd(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in, double eps,
                                                                 const std::optional<at::Tensor>& branch_in,
                                                                 std::optional<at::ScalarType> y_dtype) {
  check_merging_args(x_in, weight_in, bias_in, branch_in, y_dtype);
  check_layernorm_eps(eps, "swin_ext.patch_merging");
  Backend::check_device(x_in, "x");
  const at::ScalarType tx = x_in.scalar_type(), ty = y_dtype.value_or(tx);
  const at::ScalarType tb = branch_in.has_value() ? branch_in->scalar_type() : tx;
  if (!add_layernorm_fused_dtypes(tx, tb, ty)) {
    // Another mix of dtypes (none that autocast makes): h as the contract
    // says, then the fused kernel in the promoted dtype c on it and y cast
    // once to y_dtype (add_layernorm_fwd's fallback).  Extra passes, same result.
    const at::ScalarType c = add_layernorm_promoted(tx, tb, ty);
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    auto [yc, mean, rstd] = patch_merging_fwd<Backend>(merging_h(x_in, branch_in).to(c), weight_in.to(acc),
                                                       bias_in.to(acc), eps, std::nullopt, std::nullopt);
    const auto stat = weight_in.scalar_type();
    return {yc.to(ty), mean.to(stat), rstd.to(stat)};
  }
  const typename Backend::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.has_value() ? branch_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  at::Tensor y = Backend::output({B, H2, W2, 4 * C}, x.options().dtype(ty));
  at::Tensor mean = Backend::output({B, H2, W2}, weight.options());
  at::Tensor rstd = Backend::output({B, H2, W2}, weight.options());
  if (y.numel() == 0) return {y, mean, rstd};
  check_merging_limits(B, H, W, C);
  const cudaStream_t stream = Backend::stream();
  const void* bp = branch.defined() ? branch.const_data_ptr() : nullptr;
  dispatch_add_layernorm(tx, tb, ty, "patch_merging forward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    const bool aligned = cuda::merge_aligned({x.const_data_ptr(), bp, y.const_data_ptr(), weight.const_data_ptr(),
                                              bias.const_data_ptr()});
    const cuda::MergePlan plan =
        cuda::merge_plan(B, H, W, C, cuda::merge_vec<TX, TB, TY>(), sizeof(A), aligned, /*backward=*/false);
    cuda::launch_patch_merging_fwd<TX, TB, TY, A>(ptr<TX>(x), static_cast<const TB*>(bp), ptr<A>(weight),
                                                  ptr<A>(bias), mut_ptr<TY>(y), mut_ptr<A>(mean), mut_ptr<A>(rstd),
                                                  B, H, W, C, eps, plan, stream);
    Backend::check_launch();
  });
  return {y, mean, rstd};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_merging_bwd(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const std::optional<at::Tensor>& branch_in,
    std::optional<at::ScalarType> branch_dtype) {
  check_merging_bwd_args(grad_out_in, x_in, weight_in, mean_in, rstd_in, branch_in, branch_dtype);
  Backend::check_device(x_in, "x");
  const at::ScalarType tx = x_in.scalar_type(), ty = grad_out_in.scalar_type();
  // The kernels' branch dtype is that of the branch read and of dbranch written.
  const at::ScalarType tb = branch_in.has_value() ? branch_in->scalar_type() : branch_dtype.value_or(tx);
  if (!add_layernorm_fused_dtypes(tx, tb, ty) || branch_dtype.value_or(tb) != tb) {
    // Another mix (see the forward): h recomputed as the contract says, the
    // fused kernel in the promoted dtype, dx and dbranch cast back once.
    const at::ScalarType c = add_layernorm_promoted(tx, add_layernorm_promoted(tb, branch_dtype.value_or(tb), ty), ty);
    const auto acc = c == at::kDouble ? at::kDouble : at::kFloat;
    auto [dxc, unused, dw, db] = patch_merging_bwd<Backend>(grad_out_in.to(c), merging_h(x_in, branch_in).to(c),
                                                            weight_in.to(acc), mean_in.to(acc), rstd_in.to(acc),
                                                            std::nullopt, std::nullopt);
    (void)unused;
    const auto stat = weight_in.scalar_type();
    at::Tensor dbranch = branch_dtype.has_value() ? dxc.to(*branch_dtype) : at::empty({0}, x_in.options());
    return {dxc.to(tx), dbranch, dw.to(stat), db.to(stat)};
  }
  const typename Backend::Guard guard(x_in.device());
  const int64_t B = x_in.size(0), H = x_in.size(1), W = x_in.size(2), C = x_in.size(3);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor branch = branch_in.has_value() ? branch_in->contiguous() : at::Tensor();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  at::Tensor dx = Backend::output(x.sizes(), x.options());
  at::Tensor dbranch = branch_dtype.has_value() ? Backend::output(x.sizes(), x.options().dtype(*branch_dtype))
                                                : at::empty({0}, x.options());
  if (B * ((H + 1) / 2) * ((W + 1) / 2) == 0 || C == 0) {
    return {dx.zero_(), dbranch.zero_(), at::zeros({4 * C}, weight.options()), at::zeros({4 * C}, weight.options())};
  }
  check_merging_limits(B, H, W, C);
  const size_t acc_size = tx == at::kDouble ? sizeof(double) : sizeof(float);
  const void* bp = branch.defined() ? branch.const_data_ptr() : nullptr;
  void* dbp = branch_dtype.has_value() ? dbranch.mutable_data_ptr() : nullptr;
  const bool aligned = cuda::merge_aligned({grad_out.const_data_ptr(), x.const_data_ptr(), bp, weight.const_data_ptr(),
                                            dx.const_data_ptr(), dbp});
  cuda::MergePlan plan;
  dispatch_add_layernorm(tx, tb, ty, "patch_merging backward", [&]<typename TX, typename TB, typename TY>() {
    plan = cuda::merge_plan(B, H, W, C, cuda::merge_vec<TX, TB, TY>(), acc_size, aligned, /*backward=*/true,
                            cuda::kMergeRegBlocks * device_sm_count());
  });
  TORCH_CHECK(plan.reg || plan.nwarps > 0, "swin_ext.patch_merging (CUDA): C = ", C,
              " is too large for the backward kernel (its per-block weight/bias accumulators of 2 * 4C values exceed ",
              cuda::kMergeBwdMaxSmem, " bytes of shared memory)");
  at::Tensor part = partial_pair_workspace<Backend>(plan.blocks, 4 * C, weight.options());  // dweight's, dbias's rows
  const cudaStream_t stream = Backend::stream();
  dispatch_add_layernorm(tx, tb, ty, "patch_merging backward", [&]<typename TX, typename TB, typename TY>() {
    using A = typename cuda::AccType<TX>::type;
    A* dw_part = mut_ptr<A>(part);
    cuda::launch_patch_merging_bwd<TX, TB, TY, A>(ptr<TY>(grad_out), ptr<TX>(x), static_cast<const TB*>(bp),
                                                  ptr<A>(weight), ptr<A>(mean), ptr<A>(rstd), mut_ptr<TX>(dx),
                                                  static_cast<TB*>(dbp), dw_part, dw_part + plan.blocks * 4 * C, B,
                                                  H, W, C, plan, stream);
    Backend::check_launch();
  });
  auto [dweight, dbias] = sum_partial_pair<Backend>(part, stream);
  return {dx, dbranch, dweight, dbias};
}

SWIN_CUDA_GLUE_IMPL(m) {
  m.impl("patch_merging_fwd", &patch_merging_fwd<GlueBackend>);
  m.impl("patch_merging_bwd", &patch_merging_bwd<GlueBackend>);
}

}  // namespace cuda_glue
}  // namespace swin_ext
