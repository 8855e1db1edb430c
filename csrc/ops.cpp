// Registration of every swin_ext operator schema (the strings, with their
// shape contracts, and the list are in op_schemas.h).
//
// Forward and backward are separate operators (as torchvision does); their
// autograd kernels (csrc/autograd/) tie them together, Python
// (swin_ext/ops/<op>.py) gives each a fake (meta) kernel with register_fake and
// the higher-order backward its composite.  Device kernels are registered by
// csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

#include "checks.h"
#include "op_schemas.h"

extern "C" {
// `import swin_ext._C` runs the static initialisers below; the module holds
// only the argument limits of checks.h (written once, there: swin_ext's
// Python validation reads them from here), the ops live in torch.ops.swin_ext.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "swin_ext compiled operators (see torch.ops.swin_ext)", -1,
      nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  const struct {
    const char* name;
    long long value;
  } limits[] = {
      {"MAX_WINDOW_SIZE", swin_ext::kMaxWindowSize},
      {"MAX_WINDOW_TOKENS", swin_ext::kMaxWindowTokens},
      {"MAX_DIM", swin_ext::kMaxDim},
      {"MAX_MERGE_CHANNELS", swin_ext::kMaxMergeChannels},
      {"MAX_LAYERNORM_CHANNELS", swin_ext::kMaxLayerNormChannels},
  };
  for (const auto& l : limits) {
    PyObject* v = PyLong_FromLongLong(l.value);
    if (v == nullptr || PyModule_AddObject(m, l.name, v) != 0) {
      Py_XDECREF(v);
      Py_DECREF(m);
      return nullptr;
    }
  }
  return m;
}
}

TORCH_LIBRARY(swin_ext, m) {
  swin_ext::schema::define_ops(m);
  swin_ext::schema::define_vjp_ops(m);
  swin_ext::schema::define_cpu_ops(m);
}
