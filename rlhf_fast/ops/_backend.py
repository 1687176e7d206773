"""The one place that chooses a kernel backend for every op.

Backends: "torch" (the pure-PyTorch reference), "cpu" (C++), "cuda" (CUDA C++), "triton".
`backend="auto"` takes the first available backend of the op's preference list for the tensor's
device, falling back quietly to "torch". The RLHF_FAST_BACKEND environment variable, or an explicit
`backend=`, forces one; a forced backend that cannot run raises BackendUnavailable saying why.
Triton runs CPU tensors only under TRITON_INTERPRET=1 (how the tests check Triton kernels); auto
never picks the interpreter.
"""

from __future__ import annotations

import functools
import os

import torch

from rlhf_fast._ext import EXT_ERROR, cuda_built, ext_available

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
ENV_VAR = "RLHF_FAST_BACKEND"

# Fastest first. Ops with other measurements can pass their own order.
DEFAULT_PREFERENCE = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}


class BackendUnavailable(RuntimeError):
    """A backend was asked for explicitly and cannot run here."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


def why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run ops on tensors of `device`, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "cpu":
        if not ext_available():
            return EXT_ERROR
        if device.type != "cpu":
            return f"the 'cpu' backend runs CPU tensors, got a tensor on {device}"
        return None
    if backend == "cuda":
        if not ext_available():
            return EXT_ERROR
        if not cuda_built():
            return "rlhf_fast._C was built without CUDA kernels (CPU-only torch, no CUDA toolkit, or RLHF_FAST_SKIP_CUDA_BUILD=1)"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch"
        if device.type != "cuda":
            return f"the 'cuda' backend runs CUDA tensors, got a tensor on {device}"
        return None
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return err
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA GPU is visible to torch"
        if device.type == "cpu":
            return None if triton_interpret() else "triton runs CPU tensors only under TRITON_INTERPRET=1"
        return f"triton does not run tensors on {device}"
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def resolve(backend: str | None, device: torch.device, op: str, preference: dict | None = None) -> str:
    """The concrete backend to run `op` with on `device`."""
    requested = backend or "auto"
    if requested not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {requested!r}; choose one of {BACKENDS}")
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
        if requested not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={requested!r} is not a backend; choose one of {BACKENDS}")
    if requested != "auto":
        reason = why_unavailable(requested, device)
        if reason:
            raise BackendUnavailable(f"{op}: backend {requested!r} is unavailable: {reason}")
        return requested
    order = (preference or DEFAULT_PREFERENCE).get(device.type, ("torch",))
    for candidate in order:
        if candidate == "triton" and device.type == "cpu":
            continue  # the interpreter is for tests, never a quiet default
        if why_unavailable(candidate, device) is None:
            return candidate
    return "torch"


def available_backends(device: torch.device) -> dict[str, str | None]:
    """Every concrete backend mapped to None (available) or the reason it is not."""
    return {b: why_unavailable(b, device) for b in BACKENDS if b != "auto"}
