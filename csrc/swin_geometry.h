// Shared window geometry for swin_ext kernels (CPU and CUDA).
//
// The fused attention sees the feature map as the official Swin code (2-D)
// and Video Swin code (3-D) do after "pad, then roll": the map (T, H, W) is
// padded at the back/bottom/right to (Tp, Hp, Wp), multiples of the window
// (wt, wh, ww), then cyclically shifted by (-st, -sh, -sw) and cut into
// wt x wh x ww windows.  Every step is pure index math here; no tensor is
// padded, rolled or partitioned.
//
// One geometry for both: a 2-D map (B, H, W) is the 3-D map with T = 1,
// window depth wt = 1 and no temporal shift, and every formula below reduces
// to the 2-D one (window index, token order, region ids, token offsets).
//
// Window and shift are taken as given: a window larger than the map pads it.
// The models' rule that shrinks a window to a smaller map (and drops its
// shift) -- torchvision's swin3d `_get_window_and_shift_size`, the official
// Video Swin `get_window_size` -- is applied by the caller before it builds
// the bias: swin_ext.ops.reference.clamp_window.
//
// This header has no ATen dependency so that CUDA kernels, CPU kernels and
// host-side harnesses can all include it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SWIN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SWIN_HOST_DEVICE inline
#endif

namespace swin_ext {

// Value added to the logits of token pairs from different shift regions.
// The official code uses -100 (not -inf); every Swin port copies it.
constexpr float kShiftMaskValue = -100.0f;

struct WindowGeometry {
  int64_t B;              // batch
  int64_t T, H, W;        // unpadded map (T = 1: a 2-D map)
  int64_t Tp, Hp, Wp;     // padded to a window multiple
  int64_t wt, wh, ww;     // window per axis (wt = 1: a 2-D window)
  int64_t N;              // tokens per window, wt * wh * ww
  int64_t nWt, nWh, nWw;  // windows along T, H and W
  int64_t nW;             // windows per image (per clip), nWt * nWh * nWw
  int64_t st, sh, sw;     // cyclic shift per axis (0 <= s < window)

  SWIN_HOST_DEVICE bool shifted() const { return st > 0 || sh > 0 || sw > 0; }
  SWIN_HOST_DEVICE bool padded() const { return Tp != T || Hp != H || Wp != W; }
  // Tokens per image (frames * rows * columns).
  SWIN_HOST_DEVICE int64_t tokens() const { return T * H * W; }
};

// ceil(a / b) for a >= 0, b >= 1 (a + b - 1 must fit in I): the one ceil_div of
// csrc/, for host and device code (checks.h's checked_ceil_div is the
// overflow-proof form for unchecked arguments).
template <typename I>
SWIN_HOST_DEVICE constexpr I ceil_div(I a, I b) {
  return (a + b - 1) / b;
}

// The geometry of a (B, T, H, W) map, window (wt, wh, ww), shift (st, sh, sw).
SWIN_HOST_DEVICE WindowGeometry make_geometry(int64_t B, int64_t T, int64_t H, int64_t W, int64_t wt,
                                              int64_t wh, int64_t ww, int64_t st, int64_t sh, int64_t sw) {
  WindowGeometry g;
  g.B = B;
  g.T = T;
  g.H = H;
  g.W = W;
  g.wt = wt;
  g.wh = wh;
  g.ww = ww;
  g.N = wt * wh * ww;
  g.nWt = ceil_div(T, wt);
  g.nWh = ceil_div(H, wh);
  g.nWw = ceil_div(W, ww);
  g.Tp = g.nWt * wt;
  g.Hp = g.nWh * wh;
  g.Wp = g.nWw * ww;
  g.nW = g.nWt * g.nWh * g.nWw;
  g.st = st;
  g.sh = sh;
  g.sw = sw;
  return g;
}

// Shift region (0, 1 or 2) of a coordinate of the rolled, padded map along
// one axis, as the official 3-slice recipe assigns it:
//   [0, P - w) -> 0,  [P - w, P - s) -> 1,  [P - s, P) -> 2.
// An axis that is not shifted has a single region.
SWIN_HOST_DEVICE int region_1d(int64_t pos, int64_t padded, int64_t w, int64_t shift) {
  if (shift == 0) return 0;
  if (pos < padded - w) return 0;
  if (pos < padded - shift) return 1;
  return 2;
}

// Shift region id of a rolled, padded position: 9 * r_t + 3 * r_h + r_w, in
// [0, 27) (in [0, 9) for a 2-D map: r_t = 0).  Two tokens of a window attend
// unmasked iff their ids are equal -- the official (nW, N, N) mask, never built.
SWIN_HOST_DEVICE int region_id(const WindowGeometry& g, int64_t rz, int64_t ry, int64_t rx) {
  return region_1d(rz, g.Tp, g.wt, g.st) * 9 + region_1d(ry, g.Hp, g.wh, g.sh) * 3 +
         region_1d(rx, g.Wp, g.ww, g.sw);
}

// roll(x, -s)[i] == x[(i + s) mod P] along one axis (0 <= i < P, 0 <= s < P).
SWIN_HOST_DEVICE int64_t unroll(int64_t i, int64_t s, int64_t padded) {
  const int64_t v = i + s;
  return v >= padded ? v - padded : v;
}

// Where token `t` (row-major (frame, row, column) inside the window) of
// window `win` (row-major over (nWt, nWh, nWw)) lives.
struct TokenLoc {
  int64_t z, y, x;  // position in the original (unpadded, unrolled) map
  bool valid;       // false for padding tokens (z >= T, y >= H or x >= W)
  int region;       // shift region id, 0..26
};

// The token at rolled, padded coordinates (rz, ry, rx): where it lives in the
// original map, whether it is real, its shift region.
SWIN_HOST_DEVICE TokenLoc token_at(const WindowGeometry& g, int64_t rz, int64_t ry, int64_t rx) {
  TokenLoc loc;
  loc.z = unroll(rz, g.st, g.Tp);
  loc.y = unroll(ry, g.sh, g.Hp);
  loc.x = unroll(rx, g.sw, g.Wp);
  loc.valid = (loc.z < g.T) && (loc.y < g.H) && (loc.x < g.W);
  loc.region = region_id(g, rz, ry, rx);
  return loc;
}

// Token `t` of window `win`: both decoded by division (the CPU kernel walks a
// whole window instead, window_attention_cpu.cpp's for_window_tokens).
SWIN_HOST_DEVICE TokenLoc locate_token(const WindowGeometry& g, int64_t win, int64_t t) {
  const int64_t plane = g.nWh * g.nWw;  // windows per frame-slab
  const int64_t wz = win / plane;
  const int64_t wrem = win - wz * plane;
  const int64_t wy = wrem / g.nWw;
  const int64_t wx = wrem - wy * g.nWw;
  const int64_t area = g.wh * g.ww;  // tokens per window frame
  const int64_t f = t / area;
  const int64_t trem = t - f * area;
  const int64_t r = trem / g.ww;
  const int64_t c = trem - r * g.ww;
  // rolled, padded coordinates
  return token_at(g, wz * g.wt + f, wy * g.wh + r, wx * g.ww + c);
}

// Row of a valid token in the token-major (B, T, H, W, .) map.
SWIN_HOST_DEVICE int64_t token_row(const WindowGeometry& g, int64_t b, const TokenLoc& loc) {
  return ((b * g.T + loc.z) * g.H + loc.y) * g.W + loc.x;
}

// Patch merging's quadrant order, the official one: x0=(0,0), x1=(1,0),
// x2=(0,1), x3=(1,1) as the (row, col) offsets of quadrant q (0..3) within
// its 2x2 block of source pixels.
SWIN_HOST_DEVICE int merge_quadrant_dy(int q) { return q & 1; }
SWIN_HOST_DEVICE int merge_quadrant_dx(int q) { return q >> 1; }

// Patch merging: source pixel of quadrant q (0..3) of output pixel (oy, ox).
// Returns false for zero padding (odd H or W).
SWIN_HOST_DEVICE bool merge_source(int64_t H, int64_t W, int64_t oy, int64_t ox, int q,
                                   int64_t* y, int64_t* x) {
  *y = 2 * oy + merge_quadrant_dy(q);
  *x = 2 * ox + merge_quadrant_dx(q);
  return (*y < H) && (*x < W);
}

}  // namespace swin_ext
