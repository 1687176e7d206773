// InstructGPT K-way ranking loss on the CPU: one pass over each prompt's ordered pairs computes the
// prompt's loss and d loss_b / d rewards (already divided by P_b); prompts run in parallel
// (at::parallel_reduce), and the batch sums are reduced in a fixed order (deterministic for a given
// thread count). The backward op only scales the saved gradient by grad_loss / num_valid_prompts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

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

// exp(t) for t <= 0 without a libm call, so the pair loop below vectorizes: t = n ln2 + f with
// |f| <= ln2 / 2 (Cody-Waite split of ln2), exp(f) by its degree-7 Taylor polynomial (truncation
// error < 1e-8 relative), 2^n written into the exponent bits. A few ulp; below -87 (where exp
// underflows) it returns exp(-87) ~ 1.6e-38 instead of 0, which changes no result in fp32.
inline float exp_nonpositive(float t) {
  t = t > -87.f ? t : -87.f;
  const float magic = 12582912.f;                        // 1.5 * 2^23: adding it rounds to an integer
  const float n = (t * 1.44269504f + magic) - magic;     // round(t / ln2), in [-126, 0]
  const float f = (t - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.f / 5040.f;
  p = p * f + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, a normal float
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename scalar_t>
RankingSums ranking_rows(const scalar_t* rewards, const int64_t* ranks, float* grad, int64_t B,
                         int64_t K, float margin) {
  // ~64k pair checks per task: the per-pair work is a few ns, and on a busy machine an OpenMP
  // region costs more than it saves on small batches.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(K * K, 1));
  // The K (K - 1) / 2 unordered slot pairs {i < j}, flattened: the pair loop then runs over one
  // long, fully vectorizable range instead of K short triangle rows.
  std::vector<int32_t> pair_i, pair_j;
  pair_i.reserve(K * (K - 1) / 2);
  pair_j.reserve(K * (K - 1) / 2);
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = i + 1; j < K; ++j) {
      pair_i.push_back(static_cast<int32_t>(i));
      pair_j.push_back(static_cast<int32_t>(j));
    }
  }
  const int64_t T = static_cast<int64_t>(pair_i.size());
  const int32_t* pi = pair_i.data();
  const int32_t* pj = pair_j.data();
  return at::parallel_reduce(
      0, B, grain, RankingSums{},
      [&](int64_t begin, int64_t end, RankingSums acc) {
        std::vector<float> r(K), g(K);  // one prompt's rewards (fp32) and gradient
        std::vector<int32_t> rk(K);     // its ranks; every negative rank becomes -1 (empty slot)
        std::vector<float> sbuf(T);     // per pair: sign * sigmoid(-x), 0 for non-pairs
        for (int64_t b = begin; b < end; ++b) {
          const int64_t off = b * K;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t rank = ranks[off + k];
            rk[k] = rank < 0 ? -1 : static_cast<int32_t>(std::min<int64_t>(rank, INT32_MAX));
            const float v = static_cast<float>(rewards[off + k]);
            // Empty slots may hold garbage (NaN padding): they never enter the math.
            r[k] = rank >= 0 ? v : 0.f;
            acc.nonfinite += (rank >= 0 && !std::isfinite(v)) ? 1 : 0;
            g[k] = 0.f;
          }
          float loss = 0.f;
          int64_t pairs = 0, correct = 0;
          float* gp = g.data();
          const float* rp = r.data();
          const int32_t* kp = rk.data();
          float* sp = sbuf.data();
          // Each unordered pair {i, j} once, branch-free: it is a pair iff both slots are non-empty
          // and the ranks differ; sign = +1 when i is above j, -1 when j is above i, so
          // x = sign * (r_i - r_j) - margin is "upper minus lower". softplus(-x) = max(-x, 0) +
          // log1p(e), e = exp(-|x|): the log1p terms are summed as log(prod (1 + e)), one log per
          // 64 pairs instead of one per pair (each factor is in (1, 2], so 64 of them stay finite).
          for (int64_t t0 = 0; t0 < T; t0 += 64) {
            const int64_t t1 = std::min<int64_t>(T, t0 + 64);
            float lin = 0.f, prod = 1.f;
            int32_t cnt = 0, corr = 0;
#pragma omp simd reduction(+ : lin, cnt, corr) reduction(* : prod)
            for (int64_t t = t0; t < t1; ++t) {
              const int32_t ki = kp[pi[t]], kj = kp[pj[t]];
              const bool m = ki >= 0 && kj >= 0 && ki != kj;
              const float sign = kj > ki ? 1.f : -1.f;
              const float d = sign * (rp[pi[t]] - rp[pj[t]]);  // upper minus lower
              const float x = d - margin;
              const float e = exp_nonpositive(-std::fabs(x));
              const float one_plus_e = 1.f + e;
              const float s = (x >= 0.f ? e : 1.f) / one_plus_e;  // sigmoid(-x) = -d loss / d x
              sp[t] = m ? sign * s : 0.f;  // d/dr_i = -sign * s, d/dr_j = +sign * s
              lin += m ? (x < 0.f ? -x : 0.f) : 0.f;
              prod *= m ? one_plus_e : 1.f;
              cnt += m ? 1 : 0;
              corr += (m && d > 0.f) ? 1 : 0;
            }
            loss += lin + std::log(prod);
            pairs += cnt;
            correct += corr;
          }
          for (int64_t t = 0; t < T; ++t) {  // scatter the pair gradients to their two slots
            gp[pi[t]] -= sp[t];
            gp[pj[t]] += sp[t];
          }
          float* grow = grad + off;
          if (pairs > 0) {
            const float inv = 1.f / static_cast<float>(pairs);
            for (int64_t k = 0; k < K; ++k) grow[k] = gp[k] * inv;
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
  // A multiply per element: threads only pay off on large gradients.
  at::parallel_for(0, n, 1 << 18, [&](int64_t begin, int64_t end) {
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
