"""Triton masked whitening: per-block partial sums (sum, count; then squared deviations) reduced
in fp64 on the device, then one fused apply pass. Statistics stay on the device: no host sync."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _partial_sums_kernel(partials_ptr, x_ptr, mask_ptr, stats_ptr, n, SQUARED_DEV: tl.constexpr,
                         BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    m = (tl.load(mask_ptr + offs, mask=inside, other=0) != 0) & inside
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if SQUARED_DEV:
        mean = tl.load(stats_ptr)  # stats = [mean, rstd, shift]
        d = tl.where(m, x - mean, 0.0)
        tl.store(partials_ptr + pid * 2, tl.sum(d * d, axis=0))
        tl.store(partials_ptr + pid * 2 + 1, 0.0)
    else:
        tl.store(partials_ptr + pid * 2, tl.sum(x, axis=0))
        tl.store(partials_ptr + pid * 2 + 1, tl.sum(m.to(tl.float32), axis=0))


@triton.jit
def _apply_kernel(out_ptr, x_ptr, mask_ptr, stats_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    m = (tl.load(mask_ptr + offs, mask=inside, other=0) != 0) & inside
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    mean = tl.load(stats_ptr)
    rstd = tl.load(stats_ptr + 1)
    shift = tl.load(stats_ptr + 2)
    tl.store(out_ptr + offs, tl.where(m, (x - mean) * rstd + shift, 0.0), mask=inside)


def masked_whiten_triton(x: torch.Tensor, mask: torch.Tensor, eps: float, shift_mean: bool) -> torch.Tensor:
    n = x.numel()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if n == 0:
        return out
    xf, mf = x.reshape(-1), mask.reshape(-1).view(torch.uint8)
    grid = (triton.cdiv(n, BLOCK),)
    partials = torch.empty(grid[0], 2, dtype=torch.float32, device=x.device)
    stats = torch.zeros(3, dtype=torch.float32, device=x.device)
    _partial_sums_kernel[grid](partials, xf, mf, stats, n, SQUARED_DEV=False, BLOCK=BLOCK)
    sums = partials.double().sum(0)  # fp64 across blocks
    count = sums[1]
    has_any = count > 0
    mean = torch.where(has_any, sums[0] / count.clamp_min(1), 0.0)
    stats[0] = mean.float()
    _partial_sums_kernel[grid](partials, xf, mf, stats, n, SQUARED_DEV=True, BLOCK=BLOCK)
    var = partials[:, 0].double().sum() / count.clamp_min(1)
    # An empty mask makes every output 0 (the kernel zeroes masked-out elements anyway).
    stats[1] = torch.where(has_any, torch.rsqrt(var + eps), 0.0).float()
    stats[2] = 0.0 if shift_mean else stats[0]
    _apply_kernel[grid](out.view(-1), xf, mf, stats, n, BLOCK=BLOCK)
    return out
