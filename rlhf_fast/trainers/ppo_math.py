"""PPO for language models: per-token rewards, the clipped losses and the KL controllers.
Pure functions of tensors, so each can be checked against hand-computed cases.

Shapes: (B, T) over response positions, with `mask` marking real response tokens (right-padded)."""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last set position per row (0 for empty rows)."""
    return (mask.long().sum(-1) - 1).clamp_min(0)


def assemble_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """InstructGPT's reward per token: -beta * KL_t on every response token, plus the reward model's
    score on the last one. kl: (B, T); scores: (B,); returns (B, T) fp32, 0 outside the mask."""
    m = mask.bool()
    rewards = torch.where(m, -beta * kl.float(), 0.0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = m.any(-1)
    rewards[rows, last_index(m)] += torch.where(has_tokens, scores.float(), 0.0)
    return rewards


def policy_loss(logprobs, old_logprobs, advantages, mask, clip: float):
    """Clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-e, 1+e)), r = exp(lp - old).
    Returns (loss, clipfrac: the fraction of tokens with |r - 1| > clip, approx_kl: the k3 estimate
    of KL(old || new))."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(values, old_values, returns, mask, clip: float):
    """0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2), V_clipped within clip of the
    rollout's values. Returns (loss, clipfrac)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens (nan when Var(R) = 0)."""
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    var_r = r.var(unbiased=False)
    if r.numel() < 2 or var_r == 0:
        return float("nan")
    return float(1 - (r - v).var(unbiased=False) / var_r)


class FixedKLController:
    def __init__(self, beta: float):
        self.beta = beta

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon."""

    def __init__(self, beta: float, target: float, horizon: int):
        super().__init__(beta)
        self.target, self.horizon = target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if not math.isfinite(kl):
            return
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.beta *= 1.0 + error * n_steps / self.horizon
