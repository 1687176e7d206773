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

// InstructGPT ranking loss forward, one launch. rewards: (B, K) of `dtype`; ranks: (B, K) int64
// (negative = empty slot); grad: (B, K) fp32, d loss_b / d rewards / P_b; loss, accuracy: one fp32
// each; stats: 4 int64 (valid prompts, pairs, correct pairs, non-finite rewards at non-empty slots);
// workspace: kRankingWorkspaceBytes of scratch (the launcher zeroes it with cudaMemsetAsync).
constexpr int64_t kRankingWorkspaceBytes = 64;
cudaError_t launch_ranking_loss(DType dtype, const void* rewards, const int64_t* ranks, float* grad,
                                float* loss, float* accuracy, int64_t* stats, void* workspace,
                                int64_t B, int64_t K, float margin, cudaStream_t stream);

// Ranking loss backward: out = (grad * grad_loss / stats[0]) in `out_dtype`, n elements.
cudaError_t launch_ranking_loss_backward(DType out_dtype, const float* grad_loss, const float* grad,
                                         const int64_t* stats, void* out, int64_t n,
                                         cudaStream_t stream);

}  // namespace rlhf_fast

namespace rlhf_fast {

// Fused log-prob epilogues on one logits tile (csrc/cuda/logprobs.cu). logits: (n, v) of `dtype`
// with row stride ld; labels: (n,) int64 (negative = ignored); per-token (n,) fp32 vectors.
// Forward folds the tile into the running online-LSE state (run_max, run_sum, run_zsum) and
// writes target[r] when the label falls in [v_start, v_start + v).
cudaError_t launch_logprobs_fwd_tile(DType dtype, const void* logits, int64_t ld,
                                     const int64_t* labels, int64_t n, int64_t v, int64_t v_start,
                                     float inv_temp, float* run_max, float* run_sum,
                                     float* run_zsum, float* target, bool with_entropy,
                                     cudaStream_t stream);

// Backward overwrites the tile with dL/dlogits from the saved (row_max, log_sum, mean_rel).
cudaError_t launch_logprobs_bwd_tile(DType dtype, void* logits, int64_t ld, const int64_t* labels,
                                     int64_t n, int64_t v, int64_t v_start, float inv_temp,
                                     const float* row_max, const float* log_sum,
                                     const float* mean_rel, const float* g_lp, const float* g_ent,
                                     cudaStream_t stream);

}  // namespace rlhf_fast
