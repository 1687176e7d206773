"""Evaluation: greedy generations scored by the synthetic task's gold labeler, and reward-model
pairwise accuracy on held-out rankings."""

from __future__ import annotations

import torch

from rlhf_fast.data.collate import encode_prompt, ranking_batch


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy responses (HF generate with a KV cache, left-padded prompts)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        seqs = [encode_prompt(tokenizer, p) for p in prompts[i : i + batch_size]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):
            ids[j, width - len(s):] = torch.tensor(s)
            mask[j, width - len(s):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return [o.strip() for o in out]


def gold_score(model, tokenizer, prompts: list[str], seed: int = 0, max_new_tokens: int = 32) -> float:
    """Mean gold-labeler score of the model's greedy responses."""
    from rlhf_fast.data.synthetic import SyntheticTask

    task = SyntheticTask(seed=seed)
    responses = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return sum(task.score(p, r) for p, r in zip(prompts, responses)) / max(1, len(prompts))


@torch.no_grad()
def ranking_accuracy(reward_model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 32) -> float:
    """Fraction of all ordered pairs (ties excluded) that the reward model orders correctly."""
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    correct = total = 0
    for i in range(0, len(rows), batch_size):
        batch, _ = ranking_batch(tokenizer, rows[i : i + batch_size], max_length)
        ranks = batch["ranks"].to(device)
        rewards = reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                               batch["last_index"].to(device)).view(ranks.shape)
        valid = (ranks[:, :, None] >= 0) & (ranks[:, None, :] >= 0) & (ranks[:, :, None] < ranks[:, None, :])
        correct += ((rewards[:, :, None] > rewards[:, None, :]) & valid).sum().item()
        total += valid.sum().item()
    reward_model.train(was_training)
    return correct / max(1, total)
