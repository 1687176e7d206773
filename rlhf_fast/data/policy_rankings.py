"""Reward-model rankings over the SFT policy's own samples, as InstructGPT collected them: K
responses per prompt, some sampled from the policy, ranked by a labeler (here the synthetic task's
gold labeler). A reward model that only saw hand-made candidates misjudges the mistakes the
policy actually makes, and PPO finds and exploits exactly those."""

from __future__ import annotations

import random

import torch

from rlhf_fast.data.synthetic import SyntheticTask
from rlhf_fast.rollout import sample_responses


@torch.no_grad()
def decoded_samples(model, tokenizer, prompts: list[str], n_per_prompt: int, max_new_tokens: int,
                    temperature: float = 1.0, batch_size: int = 256) -> list[list[str]]:
    """`n_per_prompt` sampled response texts for each prompt."""
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    texts: list[str] = []
    for i in range(0, len(flat), batch_size):
        rollout = sample_responses(model, tokenizer, flat[i : i + batch_size], max_new_tokens, temperature)
        texts += rollout.response_texts(tokenizer)
    return [texts[j * n_per_prompt : (j + 1) * n_per_prompt] for j in range(len(prompts))]


def policy_ranking_rows(model, tokenizer, examples: list[dict], k: int, n_sampled: int, *, seed: int,
                        max_new_tokens: int, temperature: float = 1.0) -> list[dict]:
    """Ranking rows {"prompt", "responses", "ranks"} with `n_sampled` of the K responses sampled from
    `model` and the other K - n_sampled drawn from the task's hand-made candidates (a perfect one,
    a near-miss, a poor one, in random order). Rows whose responses all tie are dropped: they hold
    no comparison."""
    if not 0 < n_sampled <= k:
        raise ValueError(f"data.synthetic_policy_samples must be in 1..synthetic_k={k}, got {n_sampled}")
    task = SyntheticTask(seed=seed)
    rng = random.Random(seed * 7919 + 17)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG stays put
        torch.manual_seed(seed)
        samples = decoded_samples(model, tokenizer, [ex["prompt"] for ex in examples], n_sampled, max_new_tokens,
                                  temperature)
    rows = []
    for ex, sampled in zip(examples, samples):
        responses = sampled + (task.candidates(ex, k - n_sampled, rng) if k > n_sampled else [])
        ranks, _ = task.rank(ex["prompt"], responses)
        if len(set(ranks)) >= 2:
            rows.append({"prompt": ex["prompt"], "responses": responses, "ranks": ranks})
    return rows
