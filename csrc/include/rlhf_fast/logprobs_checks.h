// Input checks of the fused log-prob epilogue ops (CPU kernels and CUDA registrations).
#pragma once
#include <ATen/ATen.h>

#include <cmath>

#include "rlhf_fast/torch_utils.h"

namespace rlhf_fast {

// logits: (n, v) float with unit column stride (a column slice of a wider matrix is fine);
// labels: (n,) int64; each of `rows`: (n,) fp32 contiguous; all on one device; inv_temp finite > 0.
inline void check_logprobs_tile(const at::Tensor& logits, const at::Tensor& labels, double inv_temp,
                                std::initializer_list<std::pair<const at::Tensor*, const char*>> rows) {
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D (n, v), got shape ", logits.sizes());
  to_dtype(logits, "logits");
  TORCH_CHECK(logits.size(1) <= 1 || logits.stride(1) == 1,
              "logits must have unit stride along the vocabulary, got strides ", logits.strides());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), "labels must be (n,) with n = ",
              logits.size(0), " (logits ", logits.sizes(), "), got shape ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device(), "labels must be on ", logits.device(), ", got ",
              labels.device());
  for (const auto& [t, name] : rows) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == logits.size(0), name, " must be (n,) with n = ",
                logits.size(0), ", got shape ", t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kFloat, name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t->device() == logits.device(), name, " must be on ", logits.device(), ", got ",
                t->device());
  }
  TORCH_CHECK(inv_temp > 0 && std::isfinite(inv_temp), "inv_temp must be finite and > 0, got ", inv_temp);
}

}  // namespace rlhf_fast
