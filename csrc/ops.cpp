// The op schemas (one place for all backends) and the Python module rlhf_fast._C.
// Kernels register themselves per dispatch key in cpu/*.cpp and cuda_ops.cpp.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(rlhf_fast, m) {
  m.def("gae(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam) -> (Tensor, Tensor)");
  m.def("masked_whiten(Tensor x, Tensor mask, float eps, bool shift_mean) -> Tensor");
  // Fused LM-head log-probs: online log-sum-exp over one logits tile, and its gradient in place.
  m.def("logprobs_fwd_tile_(Tensor logits, Tensor labels, int v_start, float inv_temp, Tensor(a!) run_max, Tensor(b!) run_sum, Tensor(c!) run_zsum, Tensor(d!) target, bool with_entropy) -> ()");
  m.def("logprobs_bwd_tile_(Tensor(a!) logits, Tensor labels, int v_start, float inv_temp, Tensor row_max, Tensor log_sum, Tensor mean_rel, Tensor g_lp, Tensor g_ent) -> ()");
  // -> (loss, accuracy, grad = d loss_b / d rewards / P_b (B, K) fp32, stats (4,) int64)
  m.def("ranking_loss(Tensor rewards, Tensor ranks, float margin) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("ranking_loss_backward(Tensor grad_loss, Tensor grad, Tensor stats, ScalarType dtype) -> Tensor");
}

namespace {

PyObject* cuda_built(PyObject*, PyObject*) {
#ifdef RLHF_FAST_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cuda_built", cuda_built, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rlhf_fast C++/CUDA kernels", -1, methods};

}  // namespace

// Importing rlhf_fast._C loads this library, which runs the TORCH_LIBRARY registrations above.
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
