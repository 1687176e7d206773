// Fused LM-head log-probs on the GPU: the epilogues on one logits tile (the tile GEMM stays in
// cuBLAS, called from Python). See rlhf_fast/logprobs_math.h for the math.
//
// Forward: one block per token row. Each thread folds its strided columns into an online
// log-sum-exp state (m, s = sum e^(z-m), t = sum e^(z-m) (z-m)) with one expf per element, the
// block merges the thread states (warp shuffles, then shared memory), and thread 0 merges the
// result into the running per-token state and picks up the label's logit.
// Backward: one block per row, elementwise dL/dx overwriting the tile in place.
#include <cuda_runtime.h>

#include "rlhf_fast/common.h"
#include "rlhf_fast/cuda_launchers.h"
#include "rlhf_fast/logprobs_math.h"
#include "type_utils.cuh"

namespace rlhf_fast {
namespace {

constexpr int kLpThreads = 256;

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

struct Lse {
  float m, s, t;
};

// Merges two online-LSE states; a state with m = -inf (nothing but -inf logits yet) is empty.
__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  const float M = fmaxf(a.m, b.m);
  if (M == -INFINITY) return {M, 0.f, 0.f};
  const float da = a.m == -INFINITY ? 0.f : a.m - M;  // shifts <= 0
  const float db = b.m == -INFINITY ? 0.f : b.m - M;
  const float wa = a.m == -INFINITY ? 0.f : __expf(da);
  const float wb = b.m == -INFINITY ? 0.f : __expf(db);
  // t is centered on the max: moving the max from m to M adds (m - M) s.
  return {M, a.s * wa + b.s * wb, wa * (a.t + da * a.s) + wb * (b.t + db * b.s)};
}

__device__ __forceinline__ Lse warp_merge(Lse v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Lse o{__shfl_down_sync(kFullMask, v.m, offset), __shfl_down_sync(kFullMask, v.s, offset),
          __shfl_down_sync(kFullMask, v.t, offset)};
    v = lse_merge(v, o);
  }
  return v;
}

template <typename scalar_t>
__global__ void logprobs_fwd_tile_kernel(const scalar_t* __restrict__ logits, int64_t ld,
                                         const int64_t* __restrict__ labels, int64_t v,
                                         int64_t v_start, float inv_temp, float* __restrict__ run_max,
                                         float* __restrict__ run_sum, float* __restrict__ run_zsum,
                                         float* __restrict__ target, bool with_entropy) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * ld;
  Lse st{-INFINITY, 0.f, 0.f};
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    const float z = to_float(x[j]) * inv_temp;
    if (z == -INFINITY) continue;  // masked vocabulary entry: adds nothing
    if (z <= st.m) {
      const float d = z - st.m;
      const float e = __expf(d);
      st.s += e;
      st.t += e * d;
    } else {  // new max: rescale the sums once, the new element contributes e = 1, d = 0
      const float w = st.m == -INFINITY ? 0.f : __expf(st.m - z);
      st.t = st.m == -INFINITY ? 0.f : w * (st.t + (st.m - z) * st.s);
      st.s = st.s * w + 1.f;
      st.m = z;
    }
  }
  __shared__ float sm[kLpThreads / 32], ss[kLpThreads / 32], stt[kLpThreads / 32];
  st = warp_merge(st);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
    stt[warp] = st.t;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Lse total{run_max[row], run_sum[row], run_zsum[row]};
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total = lse_merge(total, {sm[w], ss[w], stt[w]});
    run_max[row] = total.m;
    run_sum[row] = total.s;
    run_zsum[row] = with_entropy ? total.t : 0.f;
    const int64_t y = labels[row];
    const int64_t col = y - v_start;  // ignored tokens carry a negative label
    if (y >= 0 && col >= 0 && col < v) target[row] = to_float(x[col]) * inv_temp;
  }
}

template <typename scalar_t>
__global__ void logprobs_bwd_tile_kernel(scalar_t* __restrict__ logits, int64_t ld,
                                         const int64_t* __restrict__ labels, int64_t v,
                                         int64_t v_start, float inv_temp,
                                         const float* __restrict__ row_max,
                                         const float* __restrict__ log_sum,
                                         const float* __restrict__ mean_rel,
                                         const float* __restrict__ g_lp,
                                         const float* __restrict__ g_ent) {
  const int64_t row = blockIdx.x;
  scalar_t* x = logits + row * ld;
  const float g1 = g_lp[row] * inv_temp, g2 = g_ent[row] * inv_temp;  // d z / d x = 1 / T folded in
  const float m = row_max[row], log_s = log_sum[row], c = mean_rel[row];
  const int64_t y = labels[row];
  const int64_t col = y >= 0 ? y - v_start : -1;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    float g = 0.f;
    if (g1 != 0.f || g2 != 0.f) {  // ignored tokens (both 0) get exactly 0
      const float d = to_float(x[j]) * inv_temp - m;
      g = lp_grad_logit(d, j == col, log_s, c, g1, g2);
    }
    x[j] = from_float<scalar_t>(g);
  }
}

}  // namespace

cudaError_t launch_logprobs_fwd_tile(DType dtype, const void* logits, int64_t ld,
                                     const int64_t* labels, int64_t n, int64_t v, int64_t v_start,
                                     float inv_temp, float* run_max, float* run_sum,
                                     float* run_zsum, float* target, bool with_entropy,
                                     cudaStream_t stream) {
  if (n == 0 || v == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    logprobs_fwd_tile_kernel<scalar_t><<<static_cast<unsigned>(n), kLpThreads, 0, stream>>>(
        static_cast<const scalar_t*>(logits), ld, labels, v, v_start, inv_temp, run_max, run_sum,
        run_zsum, target, with_entropy);
  });
}

cudaError_t launch_logprobs_bwd_tile(DType dtype, void* logits, int64_t ld, const int64_t* labels,
                                     int64_t n, int64_t v, int64_t v_start, float inv_temp,
                                     const float* row_max, const float* log_sum,
                                     const float* mean_rel, const float* g_lp, const float* g_ent,
                                     cudaStream_t stream) {
  if (n == 0 || v == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    logprobs_bwd_tile_kernel<scalar_t><<<static_cast<unsigned>(n), kLpThreads, 0, stream>>>(
        static_cast<scalar_t*>(logits), ld, labels, v, v_start, inv_temp, row_max, log_sum,
        mean_rel, g_lp, g_ent);
  });
}

}  // namespace rlhf_fast
