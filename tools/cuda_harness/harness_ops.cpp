// swin_ext_harness::<every swin_ext op>: the project's CUDA kernels *and
// their ATen glue* (csrc/cuda/<op>_cuda.cu, the same files nvcc compiles into
// swin_ext._C for CUDA tensors) run by the CPU harness on CPU tensors, with
// the schemas and semantics of swin_ext::*.  Each glue file registers its
// ops with SWIN_CUDA_GLUE_IMPL, which harness_glue.h points at the
// swin_ext_harness library and HarnessBackend.
//
// One difference on purpose: every output and workspace the kernels must
// write is allocated filled with NaN, so an element that no kernel writes
// shows up in the comparison with the reference (on a GPU it would hold
// whatever was in memory).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "harness_glue.h"

// One line per op (the registry of the harness's kernels).
#include "cuda/add_layernorm_cuda.cu"
#include "cuda/bias_gelu_cuda.cu"
#include "cuda/patch_merging_cuda.cu"
#include "cuda/window_attention_cuda.cu"
#include "cuda/window_attention_v2_cuda.cu"
