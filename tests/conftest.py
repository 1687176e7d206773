"""Test setup: without a CUDA GPU, Triton kernels run on CPU tensors under the interpreter, which
must be switched on before any Triton kernel is defined."""

import os


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
