// CUDA registrations: torch tensors in, raw pointers to the launchers in csrc/cuda/*.cu.
// Compiled only when the extension is built with CUDA (RLHF_FAST_WITH_CUDA).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "rlhf_fast/cuda_launchers.h"
#include "rlhf_fast/logprobs_checks.h"
#include "rlhf_fast/torch_utils.h"

namespace rlhf_fast {
namespace {

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(status));
}

std::tuple<at::Tensor, at::Tensor> gae_cuda(const at::Tensor& rewards, const at::Tensor& values,
                                            const at::Tensor& mask, double gamma, double lam) {
  check_gae_inputs(rewards, values, mask, gamma, lam);
  TORCH_CHECK(rewards.is_cuda(), "gae_cuda needs CUDA tensors, got ", rewards.device());
  const c10::cuda::CUDAGuard guard(rewards.device());
  const auto r = rewards.contiguous();
  const auto v = values.contiguous();
  const auto m = mask.contiguous();
  auto adv = at::empty(r.sizes(), r.options().dtype(at::kFloat));
  auto ret = at::empty(r.sizes(), r.options().dtype(at::kFloat));
  check_launch(launch_gae(to_dtype(r, "rewards"), r.data_ptr(), v.data_ptr(), m.data_ptr<bool>(),
                          adv.data_ptr<float>(), ret.data_ptr<float>(), r.size(0), r.size(1),
                          static_cast<float>(gamma), static_cast<float>(lam),
                          c10::cuda::getCurrentCUDAStream()),
               "gae");
  return {adv, ret};
}

at::Tensor masked_whiten_cuda(const at::Tensor& x, const at::Tensor& mask, double eps,
                              bool shift_mean) {
  check_whiten_inputs(x, mask, eps);
  TORCH_CHECK(x.is_cuda(), "masked_whiten_cuda needs CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const auto mc = mask.contiguous();
  auto out = at::empty(xc.sizes(), xc.options().dtype(at::kFloat));
  auto stats = at::zeros({3}, xc.options().dtype(at::kDouble));
  check_launch(launch_masked_whiten(to_dtype(xc, "x"), xc.data_ptr(), mc.data_ptr<bool>(),
                                    out.data_ptr<float>(), stats.data_ptr<double>(), xc.numel(),
                                    static_cast<float>(eps), shift_mean,
                                    c10::cuda::getCurrentCUDAStream()),
               "masked_whiten");
  return out;
}

void logprobs_fwd_tile_cuda(const at::Tensor& logits, const at::Tensor& labels, int64_t v_start,
                            double inv_temp, const at::Tensor& run_max, const at::Tensor& run_sum,
                            const at::Tensor& run_zsum, const at::Tensor& target, bool with_entropy) {
  check_logprobs_tile(logits, labels, inv_temp, {{&run_max, "run_max"}, {&run_sum, "run_sum"},
                                                 {&run_zsum, "run_zsum"}, {&target, "target"}});
  TORCH_CHECK(logits.is_cuda(), "logprobs_fwd_tile_ (CUDA) needs CUDA tensors, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto lab = labels.contiguous();
  check_launch(launch_logprobs_fwd_tile(to_dtype(logits, "logits"), logits.const_data_ptr(), logits.stride(0),
                                        lab.const_data_ptr<int64_t>(), logits.size(0), logits.size(1), v_start,
                                        static_cast<float>(inv_temp), run_max.data_ptr<float>(),
                                        run_sum.data_ptr<float>(), run_zsum.data_ptr<float>(),
                                        target.data_ptr<float>(), with_entropy,
                                        c10::cuda::getCurrentCUDAStream()),
               "logprobs_fwd_tile_");
}

void logprobs_bwd_tile_cuda(const at::Tensor& logits, const at::Tensor& labels, int64_t v_start,
                            double inv_temp, const at::Tensor& row_max, const at::Tensor& log_sum,
                            const at::Tensor& mean_rel, const at::Tensor& g_lp, const at::Tensor& g_ent) {
  check_logprobs_tile(logits, labels, inv_temp, {{&row_max, "row_max"}, {&log_sum, "log_sum"},
                                                 {&mean_rel, "mean_rel"}, {&g_lp, "g_lp"}, {&g_ent, "g_ent"}});
  TORCH_CHECK(logits.is_cuda(), "logprobs_bwd_tile_ (CUDA) needs CUDA tensors, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto lab = labels.contiguous();
  check_launch(launch_logprobs_bwd_tile(to_dtype(logits, "logits"), logits.data_ptr(), logits.stride(0),
                                        lab.const_data_ptr<int64_t>(), logits.size(0), logits.size(1), v_start,
                                        static_cast<float>(inv_temp), row_max.const_data_ptr<float>(),
                                        log_sum.const_data_ptr<float>(), mean_rel.const_data_ptr<float>(),
                                        g_lp.const_data_ptr<float>(), g_ent.const_data_ptr<float>(),
                                        c10::cuda::getCurrentCUDAStream()),
               "logprobs_bwd_tile_");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ranking_loss_cuda(
    const at::Tensor& rewards, const at::Tensor& ranks, double margin) {
  check_ranking_inputs(rewards, ranks, margin);
  TORCH_CHECK(rewards.is_cuda(), "ranking_loss_cuda needs CUDA tensors, got ", rewards.device());
  const c10::cuda::CUDAGuard guard(rewards.device());
  const auto r = rewards.contiguous();
  const auto rk = ranks.contiguous();
  const auto f32 = r.options().dtype(at::kFloat);
  auto grad = at::empty(r.sizes(), f32);
  auto loss = at::empty({}, f32);
  auto accuracy = at::empty({}, f32);
  auto stats = at::empty({4}, r.options().dtype(at::kLong));
  auto workspace = at::empty({kRankingWorkspaceBytes}, r.options().dtype(at::kByte));
  check_launch(launch_ranking_loss(to_dtype(r, "rewards"), r.data_ptr(), rk.data_ptr<int64_t>(),
                                   grad.data_ptr<float>(), loss.data_ptr<float>(),
                                   accuracy.data_ptr<float>(), stats.data_ptr<int64_t>(),
                                   workspace.data_ptr(), r.size(0), r.size(1),
                                   static_cast<float>(margin), c10::cuda::getCurrentCUDAStream()),
               "ranking_loss");
  return {loss, accuracy, grad, stats};
}

at::Tensor ranking_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad,
                                      const at::Tensor& stats, at::ScalarType dtype) {
  check_ranking_backward_inputs(grad_loss, grad, stats, dtype);
  TORCH_CHECK(grad.is_cuda(), "ranking_loss_backward_cuda needs CUDA tensors, got ", grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto gl = grad_loss.contiguous();
  const auto g = grad.contiguous();
  auto out = at::empty(g.sizes(), g.options().dtype(dtype));
  check_launch(launch_ranking_loss_backward(to_dtype(out, "dtype"), gl.data_ptr<float>(),
                                            g.data_ptr<float>(), stats.data_ptr<int64_t>(),
                                            out.data_ptr(), g.numel(),
                                            c10::cuda::getCurrentCUDAStream()),
               "ranking_loss_backward");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rlhf_fast, CUDA, m) {
  m.impl("gae", &gae_cuda);
  m.impl("masked_whiten", &masked_whiten_cuda);
  m.impl("logprobs_fwd_tile_", &logprobs_fwd_tile_cuda);
  m.impl("logprobs_bwd_tile_", &logprobs_bwd_tile_cuda);
  m.impl("ranking_loss", &ranking_loss_cuda);
  m.impl("ranking_loss_backward", &ranking_loss_backward_cuda);
}

}  // namespace rlhf_fast
