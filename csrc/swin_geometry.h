// Shared window geometry for swin_ext kernels (CPU and CUDA).
//
// The fused attention sees the feature map as the official Swin code does
// after "pad, then roll": the map (H, W) is padded at bottom/right to
// (Hp, Wp), multiples of the window size, then cyclically shifted by
// (-shift_h, -shift_w) and cut into ws x ws windows.  Every step is pure
// index math here; no tensor is padded, rolled or partitioned.
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
  int64_t B;        // batch
  int64_t H, W;     // unpadded map
  int64_t Hp, Wp;   // padded to a window multiple
  int64_t ws;       // window side
  int64_t N;        // tokens per window, ws * ws
  int64_t nWh, nWw; // windows along H and W
  int64_t nW;       // windows per image
  int64_t sh, sw;   // cyclic shift along H and W (0 <= s < ws)
};

SWIN_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

SWIN_HOST_DEVICE WindowGeometry make_geometry(int64_t B, int64_t H, int64_t W,
                                              int64_t ws, int64_t sh, int64_t sw) {
  WindowGeometry g;
  g.B = B;
  g.H = H;
  g.W = W;
  g.ws = ws;
  g.N = ws * ws;
  g.nWh = ceil_div(H, ws);
  g.nWw = ceil_div(W, ws);
  g.Hp = g.nWh * ws;
  g.Wp = g.nWw * ws;
  g.nW = g.nWh * g.nWw;
  g.sh = sh;
  g.sw = sw;
  return g;
}

// Shift region (0, 1 or 2) of a coordinate of the rolled, padded map along
// one axis, as the official 3-slice recipe assigns it:
//   [0, P - ws) -> 0,  [P - ws, P - s) -> 1,  [P - s, P) -> 2.
// An axis that is not shifted has a single region.
SWIN_HOST_DEVICE int region_1d(int64_t pos, int64_t padded, int64_t ws, int64_t shift) {
  if (shift == 0) return 0;
  if (pos < padded - ws) return 0;
  if (pos < padded - shift) return 1;
  return 2;
}

// Where token `t` (row-major inside the window) of window `win` lives.
struct TokenLoc {
  int64_t y, x;  // position in the original (unpadded, unrolled) map
  bool valid;    // false for padding tokens (y >= H or x >= W)
  int region;    // shift region id, 0..8
};

SWIN_HOST_DEVICE TokenLoc locate_token(const WindowGeometry& g, int64_t win, int64_t t) {
  const int64_t wy = win / g.nWw;
  const int64_t wx = win - wy * g.nWw;
  const int64_t r = t / g.ws;
  const int64_t c = t - r * g.ws;
  const int64_t ry = wy * g.ws + r;  // rolled, padded coordinates
  const int64_t rx = wx * g.ws + c;
  TokenLoc loc;
  // roll(x, -s)[i] == x[(i + s) mod P]
  loc.y = ry + g.sh;
  if (loc.y >= g.Hp) loc.y -= g.Hp;
  loc.x = rx + g.sw;
  if (loc.x >= g.Wp) loc.x -= g.Wp;
  loc.valid = (loc.y < g.H) && (loc.x < g.W);
  loc.region = region_1d(ry, g.Hp, g.ws, g.sh) * 3 + region_1d(rx, g.Wp, g.ws, g.sw);
  return loc;
}

// Patch merging: source pixel of quadrant q (0..3) of output pixel (oy, ox).
// Quadrant order is the official one: x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1)
// as (row, col) offsets.  Returns false for zero padding (odd H or W).
SWIN_HOST_DEVICE bool merge_source(int64_t H, int64_t W, int64_t oy, int64_t ox, int q,
                                   int64_t* y, int64_t* x) {
  *y = 2 * oy + (q & 1);
  *x = 2 * ox + (q >> 1);
  return (*y < H) && (*x < W);
}

}  // namespace swin_ext
