// Per-element math of the fused LM-head log-prob epilogues, shared by csrc/cpu/logprobs.cpp and
// csrc/cuda/logprobs.cu. No torch headers (nvcc compiles the .cu files on their own).
//
// For one token with logits z (already divided by the temperature), label y:
//   lse = log sum_j exp(z_j)          p_j = exp(z_j - lse)          mu = sum_j p_j z_j
//   logprob = z_y - lse               entropy = lse - mu
//   d logprob / dz_j = [j == y] - p_j
//   d entropy / dz_j = -p_j (z_j - mu)
// so, with g_lp the (KL-adjusted) upstream gradient of the logprob and g_ent that of the entropy,
//   dL/dz_j = g_lp ([j == y] - p_j) - g_ent p_j (z_j - mu),
// and the gradient of the raw logit x_j (z = x / temperature) is that times 1 / temperature.
// Per token the forward saves m = max_j z_j, log_s = log sum_j exp(z_j - m) and c = mu - m, and the
// backward works with d_j = z_j - m (exact near the max): p_j = exp(d_j - log_s), z_j - mu = d_j - c.
// lse = m + log_s itself is never formed there: at |z| ~ 1e4 its fp32 rounding would cost ~1e-3.
#pragma once
#include <cmath>

#include "rlhf_fast/common.h"

namespace rlhf_fast {

// Rescale factor of an online-LSE running sum when the running max moves from m_old to m_new.
RLHF_HD float lp_rescale(float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : expf(m_old - m_new);
}

// dL/dz_j for one element from d = z_j - m (see the header comment); d = -inf (masked entry) gives
// p = 0 and exactly 0, never 0 * -inf.
RLHF_HD float lp_grad_logit(float d, bool is_label, float log_s, float c, float g_lp, float g_ent) {
  const float p = d == -INFINITY ? 0.f : expf(d - log_s);
  const float ent_term = p == 0.f ? 0.f : p * (d - c);
  return g_lp * ((is_label ? 1.f : 0.f) - p) - g_ent * ent_term;
}

}  // namespace rlhf_fast
