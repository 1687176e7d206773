// GAE on the GPU: one warp per row, walking the row from its end in rounds of 32 steps.
//
// A_t = delta_t + c * A_{t+1} (c = gamma * lam) is a linear recurrence. Within a round, lane l
// holds delta at t = 32k + l; a Kogge-Stone suffix scan over the warp (shuffle down by
// 1, 2, 4, 8, 16, weighting the partner by c^offset) gives sum_{j>=0} c^j delta_{t+j} over the
// round, and the carry from the later round enters as c^(32-l) * A_{32(k+1)}. Loads are
// coalesced (32 consecutive elements per round) and kRounds rounds are loaded before they are
// scanned, so the memory latency overlaps.
#include <cuda_runtime.h>

#include "rlhf_fast/common.h"
#include "rlhf_fast/cuda_launchers.h"
#include "type_utils.cuh"

namespace rlhf_fast {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kRounds = 4;

template <typename scalar_t>
__global__ void gae_warp_kernel(const scalar_t* __restrict__ rewards,
                                const scalar_t* __restrict__ values,
                                const bool* __restrict__ mask, float* __restrict__ advantages,
                                float* __restrict__ returns, int64_t B, int64_t T, float gamma,
                                float c) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B) return;  // uniform per warp: the shuffles below always see 32 live lanes
  const int64_t base = row * T;

  // c^1, c^2, c^4, c^8, c^16 for the scan steps; c^(32 - lane) weights the carry-in.
  float step_pow[5];
  step_pow[0] = c;
#pragma unroll
  for (int s = 1; s < 5; ++s) step_pow[s] = step_pow[s - 1] * step_pow[s - 1];
  const float carry_weight = powf(c, static_cast<float>(kWarp - lane));

  float carry = 0.f;       // A at the first step after the current round
  float next_value = 0.f;  // masked V at that step (V_T = 0)
  const int64_t num_rounds = (T + kWarp - 1) / kWarp;
  for (int64_t first = num_rounds - 1; first >= 0; first -= kRounds) {
    float r[kRounds], v[kRounds];
    bool m[kRounds];
#pragma unroll
    for (int i = 0; i < kRounds; ++i) {
      const int64_t t = (first - i) * kWarp + lane;
      m[i] = (first - i >= 0) && t < T && mask[base + t];
      r[i] = m[i] ? to_float(rewards[base + t]) : 0.f;
      v[i] = m[i] ? to_float(values[base + t]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kRounds; ++i) {
      if (first - i < 0) break;  // uniform per warp
      float v_next = __shfl_down_sync(kFullMask, v[i], 1);
      if (lane == kWarp - 1) v_next = next_value;
      float a = gae_delta(r[i], v[i], v_next, gamma);
#pragma unroll
      for (int s = 0, offset = 1; offset < kWarp; ++s, offset <<= 1) {
        const float partner = __shfl_down_sync(kFullMask, a, offset);
        if (lane + offset < kWarp) a += step_pow[s] * partner;
      }
      a += carry_weight * carry;
      const int64_t t = (first - i) * kWarp + lane;
      if (t < T) {
        advantages[base + t] = m[i] ? a : 0.f;
        returns[base + t] = m[i] ? a + v[i] : 0.f;
      }
      carry = __shfl_sync(kFullMask, a, 0);
      next_value = __shfl_sync(kFullMask, v[i], 0);
    }
  }
}

}  // namespace

cudaError_t launch_gae(DType dtype, const void* rewards, const void* values, const bool* mask,
                       float* advantages, float* returns, int64_t B, int64_t T, float gamma,
                       float lam, cudaStream_t stream) {
  if (B == 0 || T == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    gae_warp_kernel<scalar_t><<<blocks, kWarp * kWarpsPerBlock, 0, stream>>>(
        static_cast<const scalar_t*>(rewards), static_cast<const scalar_t*>(values), mask,
        advantages, returns, B, T, gamma, gamma * lam);
  });
}

}  // namespace rlhf_fast
