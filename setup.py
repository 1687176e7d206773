"""Builds rlhf_fast._C with ninja through torch.utils.cpp_extension.

CPU kernels are always built. CUDA kernels are built when torch is a CUDA build and a CUDA
toolkit is found, unless RLHF_FAST_SKIP_CUDA_BUILD=1. MAX_JOBS limits parallel compile jobs;
RLHF_FAST_CUDA_ARCHS (default "80;90") picks the GPU architectures.
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cuda_build_status():
    """(build CUDA?, reason when not)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("RLHF_FAST_SKIP_CUDA_BUILD", "0") == "1":
        return False, "RLHF_FAST_SKIP_CUDA_BUILD=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, ""


def gencode_flags():
    archs = os.environ.get("RLHF_FAST_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
    # PTX of the newest arch too, so newer GPUs can JIT the kernels.
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def extensions():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/ops.cpp") + rel("csrc/cpu/*.cpp")
    # at::parallel_for is OpenMP inside its headers; torch picks the C++ standard. -fno-trapping-math
    # lets gcc if-convert the branch-free select chains of the kernels' inner loops and vectorize
    # them (nothing here relies on floating-point traps).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    with_cuda, reason = cuda_build_status()
    if not with_cuda:
        print(f"rlhf_fast: building CPU kernels only ({reason})")
        return [CppExtension("rlhf_fast._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    sources += rel("csrc/cuda_ops.cpp") + rel("csrc/cuda/*.cu")
    nvcc = ["-O3", "-lineinfo", *gencode_flags()]
    return [CUDAExtension("rlhf_fast._C", sources, include_dirs=include_dirs,
                          define_macros=[("RLHF_FAST_WITH_CUDA", None)],
                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
