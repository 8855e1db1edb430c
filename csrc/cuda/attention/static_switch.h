// The one head_dim switch of the attention kernels (the shape of
// flash-attention's static_switch.h): a run-time head_dim becomes the
// compile-time kHeadDim of the kernel traits, 0 for the generic kernels.
#pragma once

#define SWIN_HEADDIM_SWITCH(HEADDIM, ...)         \
  [&] {                                           \
    if ((HEADDIM) == 32) {                        \
      constexpr static int kHeadDim = 32;         \
      return __VA_ARGS__();                       \
    } else if ((HEADDIM) == 16) {                 \
      constexpr static int kHeadDim = 16;         \
      return __VA_ARGS__();                       \
    } else if ((HEADDIM) == 64) {                 \
      constexpr static int kHeadDim = 64;         \
      return __VA_ARGS__();                       \
    } else if ((HEADDIM) == 128) {                \
      constexpr static int kHeadDim = 128;        \
      return __VA_ARGS__();                       \
    } else {                                      \
      constexpr static int kHeadDim = 0;          \
      return __VA_ARGS__();                       \
    }                                             \
  }()
