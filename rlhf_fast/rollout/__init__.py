"""Rollouts for PPO: batched sampling with a KV cache."""

from rlhf_fast.rollout.sampler import Rollout, sample_responses

__all__ = ["Rollout", "sample_responses"]
