// window_attention_fwd/_bwd on CUDA tensors: the ATen glue of the fused
// window attention (the shared forward and backward are in
// window_attention_cuda.h; the kernels in attention/).
#include "window_attention_cuda.h"

namespace swin_ext {
namespace cuda_glue {

template <class Backend>
std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv, const at::Tensor& bias,
                                                        const std::optional<at::Tensor>& qkv_pad,
                                                        at::IntArrayRef window_size, at::IntArrayRef shift,
                                                        double scale) {
  const WindowGeometry g = check_attention_args(qkv, bias, qkv_pad, window_size, shift);
  return window_attention_fwd_impl<Backend>(qkv, bias, qkv_pad, at::Tensor(), g, scale);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& lse, at::IntArrayRef window_size,
    at::IntArrayRef shift, double scale) {
  const WindowGeometry g = check_attention_args(qkv, bias, qkv_pad, window_size, shift);
  auto r = window_attention_bwd_impl<Backend>(grad_out, qkv, bias, qkv_pad, at::Tensor(), lse, g, scale);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

SWIN_CUDA_GLUE_IMPL(m) {
  m.impl("window_attention_fwd", &window_attention_fwd<GlueBackend>);
  m.impl("window_attention_bwd", &window_attention_bwd<GlueBackend>);
}

}  // namespace cuda_glue
}  // namespace swin_ext
