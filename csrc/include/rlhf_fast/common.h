// Header-only helpers shared by the CPU (.cpp) and CUDA (.cu) kernels. No torch headers here,
// so nvcc can compile every .cu file on its own.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define RLHF_HD __host__ __device__ __forceinline__
#else
#define RLHF_HD inline
#endif

namespace rlhf_fast {

// Element types the kernels accept; math is always fp32.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// GAE's TD residual for one step: delta_t = r_t + gamma * V_{t+1} - V_t.
RLHF_HD float gae_delta(float reward, float value, float next_value, float gamma) {
  return reward + gamma * next_value - value;
}

}  // namespace rlhf_fast
