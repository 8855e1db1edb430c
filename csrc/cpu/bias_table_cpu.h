// The table form of the attention's bias on the CPU (bias_table.h): the
// kernels take the gathered (heads, N, N) bias, so the glue expands the
// table on entry and bins the bias gradient into table rows on exit.  Both
// are O(heads * N^2), against the kernels' O(B * windows * heads * N^2 * d).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../bias_table.h"
#include "../swin_geometry.h"

namespace swin_ext {
namespace cpu {

inline BiasTableShape bias_table_shape(const WindowGeometry& g) { return BiasTableShape::make(g.wt, g.wh, g.ww); }

// table (rows, heads) -> bias (heads, N, N): bias[h, i, j] = table[row(i, j), h].
inline at::Tensor expand_bias_table(const at::Tensor& table_in, const WindowGeometry& g) {
  const at::Tensor table = table_in.contiguous();
  const BiasTableShape s = bias_table_shape(g);
  const int64_t heads = table.size(1), N = s.N;
  at::Tensor bias = at::empty({heads, N, N}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "expand_bias_table", [&] {
    const scalar_t* src = table.const_data_ptr<scalar_t>();
    scalar_t* dst = bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < N; ++j) {
          const int64_t row = bias_table_row(s, static_cast<int>(i), static_cast<int>(j));
          for (int64_t h = 0; h < heads; ++h) dst[(h * N + i) * N + j] = src[row * heads + h];
        }
      }
    });
  });
  return bias;
}

// dbias (heads, N, N) -> the table's gradient (rows, heads): each row summed
// over its token pairs in bias_table.h's fixed order (any thread count).
inline at::Tensor bin_bias_grad(const at::Tensor& dbias_in, const WindowGeometry& g) {
  const at::Tensor dbias = dbias_in.contiguous();
  const BiasTableShape s = bias_table_shape(g);
  const int64_t heads = dbias.size(0), N = s.N;
  at::Tensor dtable = at::empty({s.rows, heads}, dbias.options());
  AT_DISPATCH_FLOATING_TYPES(dbias.scalar_type(), "bin_bias_grad", [&] {
    const scalar_t* src = dbias.const_data_ptr<scalar_t>();
    scalar_t* dst = dtable.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        for (int64_t h = 0; h < heads; ++h) {
          const scalar_t* d = src + h * N * N;
          dst[row * heads + h] = bias_bin_sum<scalar_t>(s, static_cast<int>(row),
                                                        [&](int i, int j) { return d[int64_t(i) * N + j]; });
        }
      }
    });
  });
  return dtable;
}

}  // namespace cpu
}  // namespace swin_ext
