// CPU builds of torch ship c10/cuda headers without this generated file; the compile check of
// csrc/cuda_ops.cpp on a machine with no CUDA torch uses this stand-in (syntax check only).
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
