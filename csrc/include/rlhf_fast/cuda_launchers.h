// Launchers of the CUDA kernels: plain pointers and a stream, no torch types, so the .cu files
// compile with nvcc alone. Each returns the launch status for the caller to check.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "rlhf_fast/common.h"

namespace rlhf_fast {

// rewards, values: (B, T) of `dtype`; mask: (B, T) bool; advantages, returns: (B, T) fp32.
cudaError_t launch_gae(DType dtype, const void* rewards, const void* values, const bool* mask,
                       float* advantages, float* returns, int64_t B, int64_t T, float gamma,
                       float lam, cudaStream_t stream);

// x: (n,) of `dtype`; mask: (n,) bool; out: (n,) fp32; stats: 3 doubles of scratch, zeroed by
// the caller (sum, count, sum of squared deviations).
cudaError_t launch_masked_whiten(DType dtype, const void* x, const bool* mask, float* out,
                                 double* stats, int64_t n, float eps, bool shift_mean,
                                 cudaStream_t stream);

}  // namespace rlhf_fast
