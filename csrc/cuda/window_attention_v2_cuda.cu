// window_attention_v2_fwd/_bwd on CUDA tensors: Swin V2's scaled cosine
// attention (q, k L2-normalised, q times the per-head scale, logit scale 1),
// run by the V1 kernels with their qk_norm flag (window_attention_cuda.h).
#include "window_attention_cuda.h"

namespace swin_ext {
namespace cuda_glue {

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_v2_fwd(const at::Tensor& qkv, const at::Tensor& bias,
                                                           const std::optional<at::Tensor>& qkv_pad,
                                                           const at::Tensor& head_scale, int64_t window_size,
                                                           int64_t shift_h, int64_t shift_w) {
  const WindowGeometry g = check_attention_args_2d(qkv, bias, qkv_pad, window_size, shift_h, shift_w);
  check_v2_head_scale(head_scale, qkv, attention_heads(bias));
  return window_attention_fwd_impl<Backend>(qkv, bias, qkv_pad, head_scale, g, 1.0);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_v2_bwd(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale, const at::Tensor& lse,
    int64_t window_size, int64_t shift_h, int64_t shift_w) {
  const WindowGeometry g = check_attention_args_2d(qkv, bias, qkv_pad, window_size, shift_h, shift_w);
  check_v2_head_scale(head_scale, qkv, attention_heads(bias));
  return window_attention_bwd_impl<Backend>(grad_out, qkv, bias, qkv_pad, head_scale, lse, g, 1.0);
}

SWIN_CUDA_GLUE_IMPL(m) {
  m.impl("window_attention_v2_fwd", &window_attention_v2_fwd<GlueBackend>);
  m.impl("window_attention_v2_bwd", &window_attention_v2_bwd<GlueBackend>);
}

}  // namespace cuda_glue
}  // namespace swin_ext
