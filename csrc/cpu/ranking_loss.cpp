// InstructGPT K-way ranking loss on the CPU: one pass over each prompt's ordered pairs computes the
// prompt's loss and d loss_b / d rewards (already divided by P_b); prompts run in parallel
// (at::parallel_reduce), and the batch sums are reduced in a fixed order (deterministic for a given
// thread count). The backward op only scales the saved gradient by grad_loss / num_valid_prompts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "rlhf_fast/ranking_loss_math.h"
#include "rlhf_fast/torch_utils.h"

namespace rlhf_fast {
namespace {

// Batch sums: loss_b over prompts with P_b > 0, and the counts that become stats.
struct RankingSums {
  double loss = 0.0;
  int64_t valid_prompts = 0, pairs = 0, correct = 0, nonfinite = 0;
  RankingSums operator+(const RankingSums& o) const {
    return {loss + o.loss, valid_prompts + o.valid_prompts, pairs + o.pairs, correct + o.correct,
            nonfinite + o.nonfinite};
  }
};

template <typename scalar_t>
RankingSums ranking_rows(const scalar_t* rewards, const int64_t* ranks, float* grad, int64_t B,
                         int64_t K, float margin) {
  // ~16k pair checks per task, so small batches stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(K * K, 1));
  return at::parallel_reduce(
      0, B, grain, RankingSums{},
      [&](int64_t begin, int64_t end, RankingSums acc) {
        std::vector<float> r(K), g(K);  // one prompt's rewards (fp32) and gradient
        std::vector<int64_t> rk(K);     // its ranks, -1 (any negative) = empty slot
        for (int64_t b = begin; b < end; ++b) {
          const int64_t off = b * K;
          for (int64_t k = 0; k < K; ++k) {
            rk[k] = ranks[off + k];
            const float v = static_cast<float>(rewards[off + k]);
            // Empty slots may hold garbage (NaN padding): they never enter the math.
            r[k] = rk[k] >= 0 ? v : 0.f;
            acc.nonfinite += (rk[k] >= 0 && !std::isfinite(v)) ? 1 : 0;
            g[k] = 0.f;
          }
          float loss = 0.f;
          int64_t pairs = 0, correct = 0;
          for (int64_t i = 0; i < K; ++i) {
            if (rk[i] < 0) continue;
            const float ri = r[i];
            const int64_t rank_i = rk[i];
            float gi = 0.f;
            for (int64_t j = 0; j < K; ++j) {
              if (rank_i >= rk[j] || rk[j] < 0) continue;  // only "i above j": rank_i < rank_j
              const PairTerms t = ranking_pair_terms(ri - r[j] - margin);
              loss += t.softplus_neg;
              gi -= t.sigmoid_neg;
              g[j] += t.sigmoid_neg;
              pairs += 1;
              correct += ri > r[j] ? 1 : 0;
            }
            g[i] += gi;
          }
          float* grow = grad + off;
          if (pairs > 0) {
            const float inv = 1.f / static_cast<float>(pairs);
            for (int64_t k = 0; k < K; ++k) grow[k] = g[k] * inv;
            acc.loss += static_cast<double>(loss * inv);
            acc.valid_prompts += 1;
            acc.pairs += pairs;
            acc.correct += correct;
          } else {
            for (int64_t k = 0; k < K; ++k) grow[k] = 0.f;
          }
        }
        return acc;
      },
      [](const RankingSums& a, const RankingSums& b) { return a + b; });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ranking_loss_cpu(
    const at::Tensor& rewards, const at::Tensor& ranks, double margin) {
  check_ranking_inputs(rewards, ranks, margin);
  TORCH_CHECK(rewards.device().is_cpu(), "ranking_loss_cpu needs CPU tensors, got ", rewards.device());
  const auto r = rewards.contiguous();
  const auto rk = ranks.contiguous();
  const int64_t B = r.size(0), K = r.size(1);
  auto grad = at::empty({B, K}, r.options().dtype(at::kFloat));
  RankingSums sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "ranking_loss_cpu", [&] {
    sums = ranking_rows<scalar_t>(r.data_ptr<scalar_t>(), rk.data_ptr<int64_t>(),
                                  grad.data_ptr<float>(), B, K, static_cast<float>(margin));
  });
  auto opts = r.options().dtype(at::kFloat);
  auto loss = at::empty({}, opts);
  auto accuracy = at::empty({}, opts);
  loss.fill_(sums.valid_prompts > 0 ? sums.loss / sums.valid_prompts : 0.0);
  accuracy.fill_(sums.pairs > 0 ? static_cast<double>(sums.correct) / sums.pairs : 0.0);
  auto stats = at::empty({4}, r.options().dtype(at::kLong));
  int64_t* s = stats.data_ptr<int64_t>();
  s[0] = sums.valid_prompts;
  s[1] = sums.pairs;
  s[2] = sums.correct;
  s[3] = sums.nonfinite;
  return {loss, accuracy, grad, stats};
}

template <typename scalar_t>
void scale_grad(const float* grad, scalar_t* out, int64_t n, float scale) {
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<scalar_t>(grad[i] * scale);
  });
}

at::Tensor ranking_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad,
                                     const at::Tensor& stats, at::ScalarType dtype) {
  check_ranking_backward_inputs(grad_loss, grad, stats, dtype);
  const auto g = grad.contiguous();
  auto out = at::empty(g.sizes(), g.options().dtype(dtype));
  const int64_t valid_prompts = stats.data_ptr<int64_t>()[0];
  const float scale = valid_prompts > 0 ? grad_loss.item<float>() / static_cast<float>(valid_prompts) : 0.f;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ranking_loss_backward_cpu", [&] {
    scale_grad<scalar_t>(g.data_ptr<float>(), out.data_ptr<scalar_t>(), g.numel(), scale);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rlhf_fast, CPU, m) {
  m.impl("ranking_loss", &ranking_loss_cpu);
  m.impl("ranking_loss_backward", &ranking_loss_backward_cpu);
}

}  // namespace rlhf_fast
