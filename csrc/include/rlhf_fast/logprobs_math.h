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
#pragma once
#include <cmath>

#include "rlhf_fast/common.h"

namespace rlhf_fast {

// exp(z - m) where a -inf logit (masked vocabulary entry) gives 0 even when m is -inf too.
RLHF_HD float lp_exp_shift(float z, float m) { return z == -INFINITY ? 0.f : expf(z - m); }

// Rescale factor of an online-LSE running sum when the running max moves from m_old to m_new.
RLHF_HD float lp_rescale(float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : expf(m_old - m_new);
}

// dL/dz_j for one element (see the header comment); p == 0 entries (z = -inf) give exactly 0.
RLHF_HD float lp_grad_logit(float z, bool is_label, float lse, float mu, float g_lp, float g_ent) {
  const float p = z == -INFINITY ? 0.f : expf(z - lse);
  const float ent_term = p == 0.f ? 0.f : p * (z - mu);
  return g_lp * ((is_label ? 1.f : 0.f) - p) - g_ent * ent_term;
}

}  // namespace rlhf_fast
