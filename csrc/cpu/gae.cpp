// GAE on the CPU: one backward pass per row, rows in parallel (at::parallel_for, OpenMP).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "rlhf_fast/common.h"
#include "rlhf_fast/torch_utils.h"

namespace rlhf_fast {
namespace {

template <typename scalar_t>
void gae_rows(const scalar_t* rewards, const scalar_t* values, const bool* mask, float* adv,
              float* ret, int64_t B, int64_t T, float gamma, float lam) {
  const float c = gamma * lam;
  // Rows are independent; keep at least ~16k elements per task so small inputs stay serial.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(T, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * T;
      float running = 0.f;     // A_{t+1}
      float next_value = 0.f;  // V_{t+1} (masked); V_T = 0
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool m = mask[off + t];
        const float r = m ? static_cast<float>(rewards[off + t]) : 0.f;
        const float v = m ? static_cast<float>(values[off + t]) : 0.f;
        running = gae_delta(r, v, next_value, gamma) + c * running;
        adv[off + t] = m ? running : 0.f;
        ret[off + t] = m ? running + v : 0.f;
        next_value = v;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& rewards, const at::Tensor& values,
                                           const at::Tensor& mask, double gamma, double lam) {
  check_gae_inputs(rewards, values, mask, gamma, lam);
  TORCH_CHECK(rewards.device().is_cpu(), "gae_cpu needs CPU tensors, got ", rewards.device());
  const auto r = rewards.contiguous();
  const auto v = values.contiguous();
  const auto m = mask.contiguous();
  auto adv = at::empty(r.sizes(), r.options().dtype(at::kFloat));
  auto ret = at::empty(r.sizes(), r.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gae_cpu", [&] {
    gae_rows<scalar_t>(r.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), m.data_ptr<bool>(),
                       adv.data_ptr<float>(), ret.data_ptr<float>(), r.size(0), r.size(1),
                       static_cast<float>(gamma), static_cast<float>(lam));
  });
  return {adv, ret};
}

}  // namespace

TORCH_LIBRARY_IMPL(rlhf_fast, CPU, m) { m.impl("gae", &gae_cpu); }

}  // namespace rlhf_fast
