"""Triton GAE: one program per row, walking the row from its end in chunks of BLOCK steps.

Within a chunk, A_t = delta_t + c * A_{t+1} (c = gamma * lam) is a first-order linear recurrence,
computed with tl.associative_scan over pairs (a, m) -> (a2 + m2 * a1, m1 * m2); the carry from the
later chunk enters as A_t += c^(j+1) * carry. The chunk is loaded latest-step-first (reversed
indices), so the scan runs forward: `reverse=True` scans are known to be wrong on some GPUs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _linear_combine(a_later, m_later, a_earlier, m_earlier):
    # Compose two stretches of A_t = a + m * A_{t+1}: the earlier one reads the later one's result.
    return a_earlier + m_earlier * a_later, m_later * m_earlier


@triton.jit
def _gae_kernel(adv_ptr, ret_ptr, rewards_ptr, values_ptr, mask_ptr, T, gamma, c, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * T
    j = tl.arange(0, BLOCK)
    carry = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # A at the step after this chunk
    for k in range(0, tl.cdiv(T, BLOCK)):
        t = T - 1 - (k * BLOCK + j)  # scan position j = time t, latest first
        valid = t >= 0
        m = tl.load(mask_ptr + base + t, mask=valid, other=0) != 0
        r = tl.where(m, tl.load(rewards_ptr + base + t, mask=valid, other=0.0).to(tl.float32), 0.0)
        v = tl.where(m, tl.load(values_ptr + base + t, mask=valid, other=0.0).to(tl.float32), 0.0)
        has_next = valid & (t + 1 < T)  # V_T = 0
        m_next = tl.load(mask_ptr + base + t + 1, mask=has_next, other=0) != 0
        v_next = tl.where(m_next, tl.load(values_ptr + base + t + 1, mask=has_next, other=0.0).to(tl.float32), 0.0)
        delta = r + gamma * v_next - v
        coef = tl.zeros([BLOCK], tl.float32) + c
        a, c_pow = tl.associative_scan((delta, coef), 0, _linear_combine)
        adv = a + c_pow * carry  # c_pow = c^(j+1)
        tl.store(adv_ptr + base + t, tl.where(m, adv, 0.0), mask=valid)
        tl.store(ret_ptr + base + t, tl.where(m, adv + v, 0.0), mask=valid)
        carry = tl.sum(tl.where(j == BLOCK - 1, adv, 0.0), axis=0)


def gae_triton(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """rewards, values: (B, T) contiguous, one float dtype; mask: (B, T) bool."""
    B, T = rewards.shape
    adv = torch.empty(B, T, dtype=torch.float32, device=rewards.device)
    ret = torch.empty_like(adv)
    if B == 0 or T == 0:
        return adv, ret
    block = min(1024, triton.next_power_of_2(T))
    _gae_kernel[(B,)](adv, ret, rewards, values, mask.view(torch.uint8), T, gamma, gamma * lam,
                      BLOCK=block, num_warps=4 if block <= 512 else 8)
    return adv, ret
