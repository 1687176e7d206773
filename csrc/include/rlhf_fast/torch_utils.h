// Helpers for the torch-facing C++ (CPU kernels and CUDA registrations): input checks with
// messages that name the argument and its shape.
#pragma once
#include <ATen/ATen.h>

#include "rlhf_fast/common.h"

namespace rlhf_fast {

inline DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline void check_same_shape(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  TORCH_CHECK(a.sizes() == b.sizes(), a_name, " and ", b_name, " must have the same shape, got ",
              a_name, " ", a.sizes(), " and ", b_name, " ", b.sizes());
}

// GAE inputs: rewards/values (B, T) of one float dtype, mask (B, T) bool, same device.
inline void check_gae_inputs(const at::Tensor& rewards, const at::Tensor& values,
                             const at::Tensor& mask, double gamma, double lam) {
  TORCH_CHECK(rewards.dim() == 2, "rewards must be 2-D (B, T), got shape ", rewards.sizes());
  check_same_shape(rewards, "rewards", values, "values");
  check_same_shape(rewards, "rewards", mask, "mask");
  to_dtype(rewards, "rewards");
  TORCH_CHECK(values.scalar_type() == rewards.scalar_type(), "values dtype ",
              values.scalar_type(), " must match rewards dtype ", rewards.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(values.device() == rewards.device() && mask.device() == rewards.device(),
              "rewards, values and mask must be on one device, got ", rewards.device(), ", ",
              values.device(), ", ", mask.device());
  TORCH_CHECK(std::isfinite(gamma) && std::isfinite(lam), "gamma and lam must be finite, got gamma=",
              gamma, " lam=", lam);
}

inline void check_whiten_inputs(const at::Tensor& x, const at::Tensor& mask, double eps) {
  check_same_shape(x, "x", mask, "mask");
  to_dtype(x, "x");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(x.device() == mask.device(), "x and mask must be on one device, got ", x.device(),
              " and ", mask.device());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be finite and >= 0, got ", eps);
}

// Ranking loss inputs: rewards (B, K) float, ranks (B, K) int64 on the same device, finite margin.
inline void check_ranking_inputs(const at::Tensor& rewards, const at::Tensor& ranks, double margin) {
  TORCH_CHECK(rewards.dim() == 2, "rewards must be 2-D (B, K), got shape ", rewards.sizes());
  check_same_shape(rewards, "rewards", ranks, "ranks");
  to_dtype(rewards, "rewards");
  TORCH_CHECK(ranks.scalar_type() == at::kLong, "ranks must be int64, got ", ranks.scalar_type());
  TORCH_CHECK(ranks.device() == rewards.device(), "rewards and ranks must be on one device, got ",
              rewards.device(), " and ", ranks.device());
  TORCH_CHECK(std::isfinite(margin), "margin must be finite, got ", margin);
}

// Ranking loss backward: grad_loss 0-dim fp32, grad (B, K) fp32, stats (4,) int64, one device.
inline void check_ranking_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& grad,
                                          const at::Tensor& stats, at::ScalarType dtype) {
  TORCH_CHECK(grad_loss.numel() == 1 && grad_loss.scalar_type() == at::kFloat,
              "grad_loss must be one fp32 value, got ", grad_loss.scalar_type(), " of shape ",
              grad_loss.sizes());
  TORCH_CHECK(grad.scalar_type() == at::kFloat, "grad must be fp32, got ", grad.scalar_type());
  TORCH_CHECK(stats.numel() == 4 && stats.scalar_type() == at::kLong && stats.is_contiguous(),
              "stats must be 4 contiguous int64, got ", stats.scalar_type(), " of shape ", stats.sizes());
  TORCH_CHECK(grad_loss.device() == grad.device() && stats.device() == grad.device(),
              "grad_loss, grad and stats must be on one device, got ", grad_loss.device(), ", ",
              grad.device(), ", ", stats.device());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "dtype must be float32, float16 or bfloat16, got ", dtype);
}

}  // namespace rlhf_fast
