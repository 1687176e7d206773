// InstructGPT K-way ranking loss on the GPU: one kernel launch for the forward (loss, accuracy,
// per-prompt gradient, batch counts) and one elementwise kernel for the backward.
//
// Forward layout: a prompt is handled by a group of G lanes (G = K rounded up to a power of 2,
// 2 <= G <= 32), so a warp holds 32 / G prompts. Lane `member` owns slots member, member + G, ...
// and, for each owned slot i, walks all j: the pair "i above j" (rank_i < rank_j) adds its loss,
// its count and its accuracy to lane i and -sigmoid(-x) to d/dr_i; the pair "j above i" adds
// +sigmoid(-x) to d/dr_i (recomputing the exp that lane j also computes, which avoids any
// cross-lane scatter of gradients). Each pair is counted once, by its upper slot, so group sums
// (xor shuffles within the group) give P_b, the loss sum and the correct count of the prompt.
// Blocks walk tiles of prompts grid-stride; each block reduces its sums (shuffles, then shared
// memory) and thread 0 adds them to a small global workspace with atomics. The last block to take
// a ticket (__threadfence + atomic counter, as in the CUDA threadFenceReduction sample) turns the
// sums into the mean loss, the accuracy and the stats. The workspace is zeroed by the launcher
// with cudaMemsetAsync (a memset, not a kernel).
//
// All control flow around shuffles is uniform per warp: lanes of prompts past the end of the
// batch stay in the loop and contribute zeros; nothing returns early.
#include <cuda_runtime.h>

#include "rlhf_fast/common.h"
#include "rlhf_fast/cuda_launchers.h"
#include "rlhf_fast/ranking_loss_math.h"
#include "type_utils.cuh"

namespace rlhf_fast {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarp * kWarpsPerBlock;
constexpr int64_t kMaxBlocks = 1024;  // grid-stride beyond this: bounds the number of atomics

struct RankingWorkspace {
  double loss_sum;                    // sum of loss_b over prompts with P_b > 0
  unsigned long long counts[4];       // valid prompts, pairs, correct pairs, non-finite rewards
  unsigned int ticket;                // blocks done
};
static_assert(sizeof(RankingWorkspace) <= kRankingWorkspaceBytes, "workspace too small");

// Sum over the G lanes of this lane's group (G a power of 2), result in every lane of the group.
template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over all 32 lanes, result in every lane.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ void store_float(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_float(__half* p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void store_float(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

template <typename scalar_t, int G>
__global__ void __launch_bounds__(kThreads)
ranking_loss_kernel(const scalar_t* __restrict__ rewards, const int64_t* __restrict__ ranks,
                    float* __restrict__ grad, float* __restrict__ loss_out,
                    float* __restrict__ accuracy_out, int64_t* __restrict__ stats_out,
                    RankingWorkspace* __restrict__ ws, int64_t B, int64_t K, float margin) {
  constexpr int kGroupsPerWarp = kWarp / G;
  constexpr int kPromptsPerBlock = kWarpsPerBlock * kGroupsPerWarp;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int member = lane % G;
  const int group = lane / G;
  const int64_t num_tiles = (B + kPromptsPerBlock - 1) / kPromptsPerBlock;

  double loss_acc = 0.0;  // group leaders only: sum of loss_b
  unsigned long long valid_acc = 0, pairs_acc = 0, correct_acc = 0;  // group leaders only
  unsigned long long nonfinite_acc = 0;  // every lane, over its own slots

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {  // uniform per block
    const int64_t b = tile * kPromptsPerBlock + warp * kGroupsPerWarp + group;
    const bool live = b < B;
    const int64_t off = b * K;  // int64: B * K may pass 2^31
    float loss = 0.f;
    unsigned int pairs = 0, correct = 0;
    if (live) {  // divergent, but no shuffles inside
      for (int64_t i = member; i < K; i += G) {
        const int64_t rank_i = ranks[off + i];
        float gi = 0.f;
        if (rank_i >= 0) {
          const float ri = to_float(rewards[off + i]);
          nonfinite_acc += isfinite(ri) ? 0 : 1;
          for (int64_t j = 0; j < K; ++j) {  // same address across the group: broadcast loads
            const int64_t rank_j = ranks[off + j];
            if (rank_j < 0 || rank_j == rank_i) continue;  // empty slot or tie
            const float rj = to_float(rewards[off + j]);
            if (rank_i < rank_j) {  // i above j: this lane counts the pair
              const PairTerms t = ranking_pair_terms(ri - rj - margin);
              loss += t.softplus_neg;
              gi -= t.sigmoid_neg;
              pairs += 1;
              correct += ri > rj ? 1u : 0u;
            } else {  // j above i: only d/dr_i of that pair
              gi += ranking_pair_terms(rj - ri - margin).sigmoid_neg;
            }
          }
        }
        grad[off + i] = gi;  // not yet divided by P_b: rescaled below by this same thread
      }
    }
    // Uniform again: every lane of the warp takes part in the group sums.
    const unsigned int P = group_sum<G>(pairs);
    const unsigned int C = group_sum<G>(correct);
    const float L = group_sum<G>(loss);
    if (live) {
      const float inv = P > 0 ? 1.f / static_cast<float>(P) : 0.f;
      for (int64_t i = member; i < K; i += G) grad[off + i] *= inv;  // 0 for rows without pairs
      if (member == 0 && P > 0) {
        loss_acc += static_cast<double>(L * inv);
        valid_acc += 1;
        pairs_acc += P;
        correct_acc += C;
      }
    }
  }

  // Block reduction: warp shuffles, then one shared-memory slot per warp, then thread 0.
  __shared__ double s_loss[kWarpsPerBlock];
  __shared__ unsigned long long s_counts[4][kWarpsPerBlock];
  loss_acc = warp_sum(loss_acc);
  valid_acc = warp_sum(valid_acc);
  pairs_acc = warp_sum(pairs_acc);
  correct_acc = warp_sum(correct_acc);
  nonfinite_acc = warp_sum(nonfinite_acc);
  if (lane == 0) {
    s_loss[warp] = loss_acc;
    s_counts[0][warp] = valid_acc;
    s_counts[1][warp] = pairs_acc;
    s_counts[2][warp] = correct_acc;
    s_counts[3][warp] = nonfinite_acc;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;  // only thread 0 talks to the workspace from here on

  double block_loss = 0.0;
  unsigned long long block_counts[4] = {0, 0, 0, 0};
#pragma unroll
  for (int w = 0; w < kWarpsPerBlock; ++w) {
    block_loss += s_loss[w];
#pragma unroll
    for (int c = 0; c < 4; ++c) block_counts[c] += s_counts[c][w];
  }
  atomicAdd(&ws->loss_sum, block_loss);
#pragma unroll
  for (int c = 0; c < 4; ++c) atomicAdd(&ws->counts[c], block_counts[c]);
  __threadfence();  // this block's sums are visible device-wide before its ticket
  const unsigned int ticket = atomicAdd(&ws->ticket, 1u);
  if (ticket != gridDim.x - 1) return;

  // The last block: every other block's sums landed before its ticket. Read them through atomics
  // (served by L2, so no stale L1 line).
  __threadfence();
  const double loss_sum = atomicAdd(&ws->loss_sum, 0.0);
  unsigned long long counts[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) counts[c] = atomicAdd(&ws->counts[c], 0ull);
  loss_out[0] = counts[0] > 0 ? static_cast<float>(loss_sum / static_cast<double>(counts[0])) : 0.f;
  accuracy_out[0] = counts[1] > 0
                        ? static_cast<float>(static_cast<double>(counts[2]) / static_cast<double>(counts[1]))
                        : 0.f;
#pragma unroll
  for (int c = 0; c < 4; ++c) stats_out[c] = static_cast<int64_t>(counts[c]);
}

template <typename out_t>
__global__ void ranking_loss_backward_kernel(const float* __restrict__ grad_loss,
                                             const float* __restrict__ grad,
                                             const int64_t* __restrict__ stats,
                                             out_t* __restrict__ out, int64_t n) {
  const int64_t valid_prompts = stats[0];
  const float scale = valid_prompts > 0 ? grad_loss[0] / static_cast<float>(valid_prompts) : 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    store_float(out + i, grad[i] * scale);
  }
}

template <typename scalar_t, int G>
void launch_forward(const scalar_t* rewards, const int64_t* ranks, float* grad, float* loss,
                    float* accuracy, int64_t* stats, RankingWorkspace* ws, int64_t B, int64_t K,
                    float margin, cudaStream_t stream) {
  constexpr int64_t kPromptsPerBlock = kWarpsPerBlock * (kWarp / G);
  const int64_t tiles = (B + kPromptsPerBlock - 1) / kPromptsPerBlock;
  // At least one block, so an empty batch still writes its (zero) outputs.
  const unsigned blocks = static_cast<unsigned>(tiles < 1 ? 1 : (tiles < kMaxBlocks ? tiles : kMaxBlocks));
  ranking_loss_kernel<scalar_t, G><<<blocks, kThreads, 0, stream>>>(
      rewards, ranks, grad, loss, accuracy, stats, ws, B, K, margin);
}

}  // namespace

cudaError_t launch_ranking_loss(DType dtype, const void* rewards, const int64_t* ranks, float* grad,
                                float* loss, float* accuracy, int64_t* stats, void* workspace,
                                int64_t B, int64_t K, float margin, cudaStream_t stream) {
  const cudaError_t zeroed = cudaMemsetAsync(workspace, 0, sizeof(RankingWorkspace), stream);
  if (zeroed != cudaSuccess) return zeroed;
  auto* ws = static_cast<RankingWorkspace*>(workspace);
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* r = static_cast<const scalar_t*>(rewards);
    if (K <= 2) launch_forward<scalar_t, 2>(r, ranks, grad, loss, accuracy, stats, ws, B, K, margin, stream);
    else if (K <= 4) launch_forward<scalar_t, 4>(r, ranks, grad, loss, accuracy, stats, ws, B, K, margin, stream);
    else if (K <= 8) launch_forward<scalar_t, 8>(r, ranks, grad, loss, accuracy, stats, ws, B, K, margin, stream);
    else if (K <= 16) launch_forward<scalar_t, 16>(r, ranks, grad, loss, accuracy, stats, ws, B, K, margin, stream);
    else launch_forward<scalar_t, 32>(r, ranks, grad, loss, accuracy, stats, ws, B, K, margin, stream);
  });
}

cudaError_t launch_ranking_loss_backward(DType out_dtype, const float* grad_loss, const float* grad,
                                         const int64_t* stats, void* out, int64_t n,
                                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(wanted < 4096 ? wanted : 4096);
  return dispatch_dtype(out_dtype, [&](auto tag) {
    using out_t = decltype(tag);
    ranking_loss_backward_kernel<out_t><<<blocks, kThreads, 0, stream>>>(
        grad_loss, grad, stats, static_cast<out_t*>(out), n);
  });
}

}  // namespace rlhf_fast
