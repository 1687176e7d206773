// Masked whitening on the CPU: fp64 two-pass statistics (mean, then squared deviations), then
// one fused apply pass. Two passes instead of E[x^2] - E[x]^2 avoid cancellation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "rlhf_fast/torch_utils.h"

namespace rlhf_fast {
namespace {

constexpr int64_t kGrain = 32768;

template <typename scalar_t, typename F>
double masked_sum(const scalar_t* x, const bool* mask, int64_t n, F f) {
  return at::parallel_reduce(
      0, n, kGrain, 0.0,
      [&](int64_t begin, int64_t end, double acc) {
        for (int64_t i = begin; i < end; ++i) {
          if (mask[i]) acc += f(static_cast<double>(x[i]));
        }
        return acc;
      },
      std::plus<double>());
}

at::Tensor masked_whiten_cpu(const at::Tensor& x, const at::Tensor& mask, double eps,
                             bool shift_mean) {
  check_whiten_inputs(x, mask, eps);
  TORCH_CHECK(x.device().is_cpu(), "masked_whiten_cpu needs CPU tensors, got ", x.device());
  const auto xc = x.contiguous();
  const auto mc = mask.contiguous();
  auto out = at::empty(xc.sizes(), xc.options().dtype(at::kFloat));
  const int64_t n = xc.numel();
  const bool* m = mc.data_ptr<bool>();
  float* o = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "masked_whiten_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const double count = at::parallel_reduce(
        0, n, kGrain, 0.0,
        [&](int64_t b, int64_t e, double acc) {
          for (int64_t i = b; i < e; ++i) acc += m[i] ? 1.0 : 0.0;
          return acc;
        },
        std::plus<double>());
    if (count == 0) {  // nothing to whiten: all-zero output rather than NaN
      out.zero_();
      return;
    }
    const double mean = masked_sum(xp, m, n, [](double v) { return v; }) / count;
    const double var = masked_sum(xp, m, n, [&](double v) { return (v - mean) * (v - mean); }) / count;
    const float scale = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float fmean = static_cast<float>(mean);
    const float shift = shift_mean ? 0.f : fmean;
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        o[i] = m[i] ? (static_cast<float>(xp[i]) - fmean) * scale + shift : 0.f;
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rlhf_fast, CPU, m) { m.impl("masked_whiten", &masked_whiten_cpu); }

}  // namespace rlhf_fast
