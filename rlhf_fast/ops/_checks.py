"""Input checks shared by the ops' Python entry points: ValueErrors that name argument and shape."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype} (shape {tuple(t.shape)})")


def check_same_shape(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if any(s != shapes[0] for s in shapes):
        listed = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise ValueError(f"{', '.join(names)} must have the same shape, got {listed}")


def check_same_device(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    devices = [t.device for t in tensors]
    if any(d != devices[0] for d in devices):
        listed = ", ".join(f"{n} on {d}" for n, d in zip(names, devices))
        raise ValueError(f"{', '.join(names)} must be on one device, got {listed}")


def check_finite(**scalars: float) -> None:
    for name, value in scalars.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def as_bool_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """bool as is; integer or float masks mean `mask != 0`."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_complex:
        raise ValueError(f"{name} must be bool or 0/1 numbers, got {mask.dtype}")
    return mask != 0
