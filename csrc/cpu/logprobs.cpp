// Fused LM-head log-probs on the CPU: the epilogues that run on one logits tile (the GEMM that
// makes the tile stays in torch). Rows (tokens) in parallel; within a row, branch-free loops that
// the compiler vectorizes (`omp simd`) around a polynomial expf, so one pass over the tile costs
// about as much as reading it. See rlhf_fast/logprobs_math.h for the math.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "rlhf_fast/logprobs_checks.h"
#include "rlhf_fast/logprobs_math.h"

namespace rlhf_fast {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (every caller subtracts a max or the log-sum-exp), vectorizable: Cody-Waite
// range reduction x = n ln2 + f, |f| <= ln2/2, a degree-6 polynomial for e^f (Cephes expf, ~1 ulp),
// and 2^n put into the exponent bits. x < -87.3 (incl. -inf) underflows to exactly 0.
inline float exp_nonpos(float x) {
  const bool under = x < -87.3f;
  x = under ? -87.3f : x;
  x = x > 0.f ? 0.f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float f = x - n * 0.693359375f;  // ln2 split in a short high part and a correction
  f = f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  const float e = p * f * f + f + 1.f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? 0.f : e * scale;
}

inline int64_t row_grain(int64_t v) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(v, 1)); }

// Folds rows [begin, end) of one logits tile (row stride ld) into the online-LSE state
// (m = running max, s = sum exp(z - m), t = sum exp(z - m) (z - m)).
template <typename scalar_t>
void fwd_rows(const scalar_t* base, int64_t ld, int64_t v, int64_t begin, int64_t end, const int64_t* y,
              int64_t v_start, float it, bool with_entropy, float* M, float* S, float* T, float* tgt) {
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* x = base + r * ld;
    float tile_max = kNegInf;
#pragma omp simd reduction(max : tile_max)
    for (int64_t j = 0; j < v; ++j) tile_max = std::max(tile_max, static_cast<float>(x[j]));
    const float m_new = std::max(M[r], tile_max * it);  // inv_temp > 0: max commutes with it
    if (m_new != kNegInf) {  // all -inf so far: the state stays (m = -inf, s = 0, t = 0)
      float s = 0.f, t = 0.f;
      if (with_entropy) {
#pragma omp simd reduction(+ : s, t)
        for (int64_t j = 0; j < v; ++j) {
          const float d = static_cast<float>(x[j]) * it - m_new;
          const float e = exp_nonpos(d);
          s += e;
          t += e == 0.f ? 0.f : e * d;  // 0 * -inf would be NaN: masked entries add nothing
        }
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < v; ++j) s += exp_nonpos(static_cast<float>(x[j]) * it - m_new);
      }
      const float m_old = M[r], scale = lp_rescale(m_old, m_new);
      // t is centered on the running max (sum e (z - m)), so entropy = log s - t / s has no
      // cancellation even for logits near -1e4; moving the max shifts it by (m_old - m_new) s.
      T[r] = !with_entropy ? 0.f : (m_old == kNegInf ? t : scale * (T[r] + (m_old - m_new) * S[r]) + t);
      S[r] = S[r] * scale + s;
      M[r] = m_new;
    }
    const int64_t col = y[r] - v_start;  // ignored tokens carry a negative label
    if (y[r] >= 0 && col >= 0 && col < v) tgt[r] = static_cast<float>(x[col]) * it;
  }
}

// Overwrites rows [begin, end) of one logits tile with dL/dx (see logprobs_math.h).
template <typename scalar_t>
void bwd_rows(scalar_t* base, int64_t ld, int64_t v, int64_t begin, int64_t end, const int64_t* y,
              int64_t v_start, float it, const float* M, const float* LS, const float* C,
              const float* G1, const float* G2) {
  for (int64_t r = begin; r < end; ++r) {
    scalar_t* x = base + r * ld;
    const float g1 = G1[r] * it, g2 = G2[r] * it;  // fold d z / d x = 1 / temperature in
    if (g1 == 0.f && g2 == 0.f) {  // ignored token, or no gradient reaches it
      for (int64_t j = 0; j < v; ++j) x[j] = scalar_t(0);
      continue;
    }
    const float m = M[r], log_s = LS[r], c = C[r];
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) {
      const float d = static_cast<float>(x[j]) * it - m;  // z - max: exact near the max
      const float p = exp_nonpos(d - log_s);
      const float ent = p == 0.f ? 0.f : p * (d - c);  // p = 0 at z = -inf: no NaN
      x[j] = static_cast<scalar_t>(-g1 * p - g2 * ent);
    }
    const int64_t col = y[r] - v_start;
    if (y[r] >= 0 && col >= 0 && col < v) x[col] = static_cast<scalar_t>(static_cast<float>(x[col]) + g1);
  }
}

void logprobs_fwd_tile_cpu(const at::Tensor& logits, const at::Tensor& labels, int64_t v_start,
                           double inv_temp, const at::Tensor& run_max, const at::Tensor& run_sum,
                           const at::Tensor& run_zsum, const at::Tensor& target, bool with_entropy) {
  check_logprobs_tile(logits, labels, inv_temp, {{&run_max, "run_max"}, {&run_sum, "run_sum"},
                                                 {&run_zsum, "run_zsum"}, {&target, "target"}});
  TORCH_CHECK(logits.device().is_cpu(), "logprobs_fwd_tile_ (CPU) needs CPU tensors, got ",
              logits.device());
  const int64_t n = logits.size(0), v = logits.size(1), ld = logits.stride(0);
  if (n == 0 || v == 0) return;
  const auto lab = labels.contiguous();
  const int64_t* y = lab.data_ptr<int64_t>();
  float* M = run_max.data_ptr<float>();
  float* S = run_sum.data_ptr<float>();
  float* T = run_zsum.data_ptr<float>();
  float* tgt = target.data_ptr<float>();
  const float it = static_cast<float>(inv_temp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "logprobs_fwd_tile_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, row_grain(v), [&](int64_t begin, int64_t end) {
      fwd_rows<scalar_t>(base, ld, v, begin, end, y, v_start, it, with_entropy, M, S, T, tgt);
    });
  });
}

void logprobs_bwd_tile_cpu(const at::Tensor& logits, const at::Tensor& labels, int64_t v_start,
                           double inv_temp, const at::Tensor& row_max, const at::Tensor& log_sum,
                           const at::Tensor& mean_rel, const at::Tensor& g_lp, const at::Tensor& g_ent) {
  check_logprobs_tile(logits, labels, inv_temp, {{&row_max, "row_max"}, {&log_sum, "log_sum"},
                                                 {&mean_rel, "mean_rel"}, {&g_lp, "g_lp"}, {&g_ent, "g_ent"}});
  TORCH_CHECK(logits.device().is_cpu(), "logprobs_bwd_tile_ (CPU) needs CPU tensors, got ",
              logits.device());
  const int64_t n = logits.size(0), v = logits.size(1), ld = logits.stride(0);
  if (n == 0 || v == 0) return;
  const auto lab = labels.contiguous();
  const int64_t* y = lab.data_ptr<int64_t>();
  const float* M = row_max.const_data_ptr<float>();
  const float* LS = log_sum.const_data_ptr<float>();
  const float* C = mean_rel.const_data_ptr<float>();
  const float* G1 = g_lp.const_data_ptr<float>();
  const float* G2 = g_ent.const_data_ptr<float>();
  const float it = static_cast<float>(inv_temp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "logprobs_bwd_tile_cpu", [&] {
    scalar_t* base = logits.data_ptr<scalar_t>();
    at::parallel_for(0, n, row_grain(v), [&](int64_t begin, int64_t end) {
      bwd_rows<scalar_t>(base, ld, v, begin, end, y, v_start, it, M, LS, C, G1, G2);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(rlhf_fast, CPU, m) {
  m.impl("logprobs_fwd_tile_", &logprobs_fwd_tile_cpu);
  m.impl("logprobs_bwd_tile_", &logprobs_bwd_tile_cpu);
}

}  // namespace rlhf_fast
