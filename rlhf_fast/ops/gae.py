"""Generalized Advantage Estimation (Schulman et al. 2016) over response tokens.

    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95, backend="auto")

rewards, values: (B, T) float32/bfloat16/float16; mask: (B, T) bool or 0/1 marking response
tokens (right-padded rows; a row may be empty). Masked-out steps count as r = 0, V = 0, and

    delta_t = r_t + gamma * V_{t+1} - V_t,   V_T = 0
    A_t     = delta_t + gamma * lam * A_{t+1}
    returns = A + V

Both outputs are fp32 (B, T) and 0 where mask is 0. Not differentiable (advantages are targets).
"""

from __future__ import annotations

import torch

from rlhf_fast._ext import ext_available
from rlhf_fast.ops import _backend
from rlhf_fast.ops._checks import as_bool_mask, check_finite, check_float, check_same_device, check_same_shape


def gae_ref(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
            lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch reference: the per-timestep backward loop that PPO-for-LMs trainers use."""
    m = as_bool_mask(mask)
    r = torch.where(m, rewards.float(), 0.0)  # where, not multiply: padding may hold inf/NaN
    v = torch.where(m, values.float(), 0.0)
    B, T = r.shape
    running = torch.zeros(B, dtype=torch.float32, device=r.device)
    next_value = torch.zeros_like(running)
    reversed_adv = []
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = delta + gamma * lam * running
        reversed_adv.append(running)
        next_value = v[:, t]
    adv = torch.stack(reversed_adv[::-1], dim=1) if T else torch.zeros_like(r)
    return torch.where(m, adv, 0.0), torch.where(m, adv + v, 0.0)


def _prepare(rewards, values, mask, gamma, lam):
    check_float("rewards", rewards)
    check_float("values", values)
    mask = as_bool_mask(mask)
    names = ("rewards", "values", "mask")
    check_same_shape(names, (rewards, values, mask))
    if rewards.dim() != 2:
        raise ValueError(f"rewards, values and mask must be 2-D (B, T), got shape {tuple(rewards.shape)}")
    check_same_device(names, (rewards, values, mask))
    check_finite(gamma=gamma, lam=lam)
    if rewards.dtype != values.dtype:  # mixed precisions: compute from fp32 copies
        rewards, values = rewards.float(), values.float()
    return rewards.contiguous(), values.contiguous(), mask.contiguous()


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, both (B, T) fp32; see the module docstring for the math."""
    rewards, values, mask = _prepare(rewards, values, mask, gamma, lam)
    chosen = _backend.resolve(backend, rewards.device, "gae")
    if chosen == "torch":
        return gae_ref(rewards, values, mask, gamma, lam)
    if chosen == "triton":
        from rlhf_fast.ops._triton_gae import gae_triton

        return gae_triton(rewards, values, mask, float(gamma), float(lam))
    # "cpu" and "cuda" are the same dispatcher op; the tensor's device picks the kernel.
    return torch.ops.rlhf_fast.gae(rewards, values, mask, float(gamma), float(lam))


if ext_available():

    @torch.library.register_fake("rlhf_fast::gae")
    def _gae_fake(rewards, values, mask, gamma, lam):
        torch._check(rewards.dim() == 2)
        out = rewards.new_empty(rewards.shape, dtype=torch.float32)
        return out, torch.empty_like(out)
