// Registration of every swin_ext operator schema (the strings, with their
// shape contracts, are in op_schemas.h).
//
// Forward and backward are separate operators (as torchvision does); Python
// (swin_ext/ops.py) ties them together with torch.library.register_autograd
// and gives each a fake (meta) kernel with register_fake.  Device kernels are
// registered by csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

extern "C" {
// `import swin_ext._C` runs the static initialisers below; the module itself
// is empty (the ops live in torch.ops.swin_ext).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "swin_ext compiled operators (see torch.ops.swin_ext)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(swin_ext, m) {
  m.def(swin_ext::schema::kWindowAttentionFwd);
  m.def(swin_ext::schema::kWindowAttentionBwd);
  m.def(swin_ext::schema::kPatchMergingFwd);
  m.def(swin_ext::schema::kPatchMergingBwd);
  m.def(swin_ext::schema::kAddLayerNormFwd);
  m.def(swin_ext::schema::kAddLayerNormBwd);
}
