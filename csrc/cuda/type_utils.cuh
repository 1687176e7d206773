// Loads of fp32/fp16/bf16 as fp32, and the DType -> C++ type switch used by every launcher.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "rlhf_fast/common.h"

namespace rlhf_fast {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Calls f(T{}) with T the C++ element type of `dtype`.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

constexpr unsigned kFullMask = 0xffffffffu;

}  // namespace rlhf_fast
