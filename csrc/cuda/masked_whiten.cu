// Masked whitening on the GPU in three grid-stride passes: (1) masked sum and count,
// (2) masked sum of squared deviations from the mean, (3) the fused apply. Statistics are
// accumulated in fp64 (per-thread, then warp shuffles, then one atomicAdd per warp), so the
// two-pass variance keeps full precision at tens of millions of elements.
#include <cuda_runtime.h>

#include "rlhf_fast/common.h"
#include "rlhf_fast/cuda_launchers.h"
#include "type_utils.cuh"

namespace rlhf_fast {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

// PASS 0: stats[0] += sum(x), stats[1] += count. PASS 1: stats[2] += sum((x - mean)^2).
template <typename scalar_t, int PASS>
__global__ void masked_stats_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask,
                                    double* __restrict__ stats, int64_t n) {
  double acc = 0.0, count = 0.0;
  const double mean = PASS == 1 ? stats[0] / stats[1] : 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (!mask[i]) continue;
    const double v = static_cast<double>(to_float(x[i]));
    if (PASS == 0) {
      acc += v;
      count += 1.0;
    } else {
      acc += (v - mean) * (v - mean);
    }
  }
  acc = warp_sum(acc);
  if (PASS == 0) count = warp_sum(count);
  if (threadIdx.x % 32 == 0) {
    if (PASS == 0) {
      atomicAdd(&stats[0], acc);
      atomicAdd(&stats[1], count);
    } else {
      atomicAdd(&stats[2], acc);
    }
  }
}

template <typename scalar_t>
__global__ void whiten_apply_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ mask,
                                    const double* __restrict__ stats, float* __restrict__ out,
                                    int64_t n, float eps, bool shift_mean) {
  const double count = stats[1];
  const float mean = count > 0 ? static_cast<float>(stats[0] / count) : 0.f;
  const float scale = count > 0 ? static_cast<float>(rsqrt(stats[2] / count + eps)) : 0.f;
  const float shift = shift_mean ? 0.f : mean;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = (mask[i] && count > 0) ? (to_float(x[i]) - mean) * scale + shift : 0.f;
  }
}

}  // namespace

cudaError_t launch_masked_whiten(DType dtype, const void* x, const bool* mask, float* out,
                                 double* stats, int64_t n, float eps, bool shift_mean,
                                 cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  // Enough blocks to fill any current GPU several times over; the loops are grid-stride.
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(wanted < 4096 ? wanted : 4096);
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* xp = static_cast<const scalar_t*>(x);
    masked_stats_kernel<scalar_t, 0><<<blocks, kThreads, 0, stream>>>(xp, mask, stats, n);
    masked_stats_kernel<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(xp, mask, stats, n);
    whiten_apply_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(xp, mask, stats, out, n, eps,
                                                                   shift_mean);
  });
}

}  // namespace rlhf_fast
