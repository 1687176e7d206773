// Pair math of the K-way ranking loss (host/device). The CUDA kernel uses it; the CPU kernel has a
// branch-free, vectorizable variant of the same formulas (csrc/cpu/ranking_loss.cpp). No torch
// headers, so nvcc compiles it on its own.
#pragma once
#include <cmath>

#include "rlhf_fast/common.h"

namespace rlhf_fast {

// One ordered pair "i above j" with x = r_i - r_j - margin contributes
//   loss  = -log sigmoid(x) = softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
//   dloss/dx = -sigmoid(-x)
// Both come from one exp(-|x|) in (0, 1], so nothing overflows however large |x| is.
struct PairTerms {
  float softplus_neg;  // -log sigmoid(x) >= 0
  float sigmoid_neg;   // sigmoid(-x) in [0, 1]: d loss / d r_j = +sigmoid_neg, d / d r_i = -sigmoid_neg
};

RLHF_HD PairTerms ranking_pair_terms(float x) {
#if defined(__CUDA_ARCH__)
  const float e = expf(-fabsf(x));
  const float l = log1pf(e);
#else
  const float e = std::exp(-std::fabs(x));
  const float l = std::log1p(e);
#endif
  const float inv = 1.f / (1.f + e);
  PairTerms t;
  t.softplus_neg = (x < 0.f ? -x : 0.f) + l;
  t.sigmoid_neg = x >= 0.f ? e * inv : inv;  // sigmoid(-x) = e/(1+e) for x >= 0, 1/(1+e) for x < 0
  return t;
}

}  // namespace rlhf_fast
