// Swin V2's scaled cosine attention on the CPU: window_attention_v2_fwd/_bwd.
//
// q and k rows are L2-normalised (x / max(||x||, 1e-12), per token and head)
// and q is multiplied by the per-head scale in one pass over qkv into a
// normalised copy, kept in the accumulation dtype (a bfloat16 / float16 copy
// would round q' = s q^ with s up to 100, an error of the logits that the
// CUDA kernels, which scale the float32 scores, do not make); the V1 CPU
// kernel then runs on it with scale 1.  The
// backward recomputes that copy, runs the V1 backward, and chains its q and
// k gradients through the normalisation (dx = (g - x^ (x^ . g)) / ||x||),
// returning d head_scale = sum over tokens of q^ . dq'.  (The CUDA kernels do
// the normalisation inside the attention kernel instead.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace swin_ext {
namespace {

constexpr double kNormEps = 1e-12;

// The q, k, v parts of (..., 3C) as (..., heads, d) views, in the accumulation dtype.
struct Parts {
  at::Tensor q, k, v;
};
Parts split_parts(const at::Tensor& x, int64_t heads) {
  const int64_t C3 = x.size(-1), C = C3 / 3, d = C / heads;
  auto shape = x.sizes().vec();
  shape.back() = heads;
  shape.push_back(d);
  auto part = [&](int64_t i) { return x.narrow(-1, i * C, C).reshape(shape); };
  return {part(0), part(1), part(2)};
}

// 1 / max(||x||, eps) over the last dim, keepdim.
at::Tensor inv_norm(const at::Tensor& x) {
  return at::clamp_min(at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true), kNormEps).reciprocal();
}

struct Normalised {
  at::Tensor qkv;           // (..., 3C) in the accumulation dtype: q' = s q^, k^, v
  at::Tensor qh, kh;        // q^, k^ (..., heads, d) in the accumulation dtype
  at::Tensor inv_q, inv_k;  // (..., heads, 1)
};

Normalised normalise(const at::Tensor& qkv, const at::Tensor& head_scale) {
  const int64_t heads = head_scale.size(0);
  const auto acc = acc_type_of(qkv.scalar_type());
  Parts p = split_parts(qkv.to(acc), heads);
  Normalised n;
  n.inv_q = inv_norm(p.q);
  n.inv_k = inv_norm(p.k);
  n.qh = p.q * n.inv_q;
  n.kh = p.k * n.inv_k;
  const at::Tensor s = head_scale.view({heads, 1});
  auto flat = [&](const at::Tensor& t) { return t.flatten(-2); };
  n.qkv = at::cat({flat(n.qh * s), flat(n.kh), flat(p.v)}, -1).contiguous();
  return n;
}

c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                            const std::optional<at::Tensor>&, at::IntArrayRef,
                                                            at::IntArrayRef, double)>
v1_fwd() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("swin_ext::window_attention_fwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, at::IntArrayRef,
                                                                 at::IntArrayRef, double)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    at::IntArrayRef, at::IntArrayRef, double)>
v1_bwd() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("swin_ext::window_attention_bwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                           double)>();
  return op;
}

std::tuple<at::Tensor, at::Tensor> window_attention_v2_fwd_cpu(const at::Tensor& qkv, const at::Tensor& bias,
                                                               const std::optional<at::Tensor>& qkv_pad,
                                                               const at::Tensor& head_scale, int64_t window_size,
                                                               int64_t shift_h, int64_t shift_w) {
  check_attention_args_2d(qkv, bias, qkv_pad, window_size, shift_h, shift_w);
  check_v2_head_scale(head_scale, qkv, attention_heads(bias));
  const Normalised n = normalise(qkv, head_scale);
  std::optional<at::Tensor> pad_n;
  if (qkv_pad.has_value()) pad_n = normalise(qkv_pad->view({1, -1}), head_scale).qkv.view({-1});
  auto [out, lse] = v1_fwd().call(n.qkv, bias, pad_n, {window_size, window_size}, {shift_h, shift_w}, 1.0);
  return {out.to(qkv.scalar_type()), lse};
}

// d of (q' = s q^, k^, v) -> d of (q, k, v); adds sum(q^ . dq') over every
// dim but the heads to ds.
at::Tensor chain(const Normalised& n, const at::Tensor& dn, const at::Tensor& head_scale, at::Tensor& ds) {
  const int64_t heads = head_scale.size(0);
  Parts g = split_parts(dn.to(n.qh.scalar_type()), heads);
  const at::Tensor s = head_scale.view({heads, 1});
  const at::Tensor dot_q = (n.qh * g.q).sum(-1, /*keepdim=*/true);
  const at::Tensor dot_k = (n.kh * g.k).sum(-1, /*keepdim=*/true);
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < dot_q.dim() - 2; ++i) dims.push_back(i);
  ds = ds + (dims.empty() ? dot_q.view({heads}) : dot_q.sum(dims).view({heads}));
  const at::Tensor dq = s * (g.q - n.qh * dot_q) * n.inv_q;
  const at::Tensor dk = (g.k - n.kh * dot_k) * n.inv_k;
  auto flat = [&](const at::Tensor& t) { return t.flatten(-2); };
  return at::cat({flat(dq), flat(dk), flat(g.v)}, -1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_v2_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& bias,
    const std::optional<at::Tensor>& qkv_pad, const at::Tensor& head_scale, const at::Tensor& lse,
    int64_t window_size, int64_t shift_h, int64_t shift_w) {
  check_attention_args_2d(qkv, bias, qkv_pad, window_size, shift_h, shift_w);
  check_v2_head_scale(head_scale, qkv, attention_heads(bias));
  const Normalised n = normalise(qkv, head_scale);
  std::optional<at::Tensor> pad_n;
  Normalised np;
  if (qkv_pad.has_value()) {
    np = normalise(qkv_pad->view({1, -1}), head_scale);
    pad_n = np.qkv.view({-1});
  }
  auto [dqkv_n, dbias, dpad_n] = v1_bwd().call(grad_out.to(n.qkv.scalar_type()), n.qkv, bias, pad_n, lse,
                                              {window_size, window_size}, {shift_h, shift_w}, 1.0);
  at::Tensor ds = at::zeros({head_scale.size(0)}, head_scale.options());
  at::Tensor dqkv = chain(n, dqkv_n, head_scale, ds).to(qkv.scalar_type()).contiguous();
  at::Tensor dpad = dpad_n;
  if (qkv_pad.has_value()) {
    // The pad vector is one more token (its q part's gradient is zero).
    dpad = chain(np, dpad_n.view({1, -1}), head_scale, ds).view({-1}).to(dpad_n.scalar_type());
  }
  return {dqkv, dbias, dpad, ds};
}

}  // namespace

TORCH_LIBRARY_IMPL(swin_ext, CPU, m) {
  m.impl("window_attention_v2_fwd", &window_attention_v2_fwd_cpu);
  m.impl("window_attention_v2_bwd", &window_attention_v2_bwd_cpu);
}

}  // namespace swin_ext
