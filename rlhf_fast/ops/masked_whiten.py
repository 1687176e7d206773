"""Whitening over masked elements (used on advantages):

    out = (x - mean) / sqrt(var + eps) [+ mean if not shift_mean],  0 where mask is 0

mean and var (biased, divided by the count) are taken over all elements where mask is set, across
the whole tensor. An all-false mask gives an all-zero output instead of NaN. Output is fp32.
Not differentiable (advantages are targets).
"""

from __future__ import annotations

import torch

from rlhf_fast._ext import ext_available
from rlhf_fast.ops import _backend
from rlhf_fast.ops._checks import as_bool_mask, check_finite, check_float, check_same_device, check_same_shape


def masked_whiten_ref(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, shift_mean: bool = True) -> torch.Tensor:
    """The PyTorch reference, in fp64."""
    m = as_bool_mask(mask)
    xd = torch.where(m, x.double(), 0.0)
    count = m.sum()
    if count == 0:
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    mean = xd.sum() / count
    var = torch.where(m, (xd - mean) ** 2, 0.0).sum() / count
    out = (xd - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0).float()


@torch.no_grad()
def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, shift_mean: bool = True,
                  backend: str = "auto") -> torch.Tensor:
    """x: any shape, float32/bfloat16/float16; mask: same shape, bool or 0/1. Returns fp32, x's shape."""
    check_float("x", x)
    mask = as_bool_mask(mask)
    check_same_shape(("x", "mask"), (x, mask))
    check_same_device(("x", "mask"), (x, mask))
    check_finite(eps=eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x, mask = x.contiguous(), mask.contiguous()
    chosen = _backend.resolve(backend, x.device, "masked_whiten")
    if chosen == "torch":
        return masked_whiten_ref(x, mask, eps, shift_mean)
    if chosen == "triton":
        from rlhf_fast.ops._triton_masked_whiten import masked_whiten_triton

        return masked_whiten_triton(x, mask, float(eps), bool(shift_mean))
    return torch.ops.rlhf_fast.masked_whiten(x, mask, float(eps), bool(shift_mean))


if ext_available():

    @torch.library.register_fake("rlhf_fast::masked_whiten")
    def _masked_whiten_fake(x, mask, eps, shift_mean):
        return x.new_empty(x.shape, dtype=torch.float32)
