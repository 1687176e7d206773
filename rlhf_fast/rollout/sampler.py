"""Batched sampling for PPO rollouts: Hugging Face `generate` with its KV cache, through the model's
attention implementation (flash-attn 2 when installed, else PyTorch SDPA, whose flash backend runs
on recent GPUs). Prompts are left-padded so every response starts at the same column."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlhf_fast.data.collate import encode_prompt


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P + R): left-padded prompt, then the response (right-padded)
    attention_mask: torch.Tensor  # (B, P + R)
    position_ids: torch.Tensor  # (B, P + R): positions counted over real tokens only
    prompt_len: int  # P: the column where responses start
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) bool: response tokens, up to and including EOS
    ended: torch.Tensor  # (B,) bool: the response ended with EOS (not cut at max_new_tokens)
    tokens_per_s: float

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def response_texts(self, tokenizer) -> list[str]:
        """The decoded responses (special tokens and surrounding whitespace dropped)."""
        ids = torch.where(self.response_mask, self.response_ids, tokenizer.pad_token_id)
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def last_token_index(self) -> torch.Tensor:
        """(B,) column of each sequence's last response token (the prompt's last token if empty)."""
        return self.prompt_len - 1 + self.response_lengths


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def response_mask_from_ids(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): tokens up to and including the first EOS; all tokens when there is none."""
    is_eos = response_ids == eos_id
    ended = is_eos.any(-1)
    before_or_at_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return before_or_at_first_eos, ended


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0) -> Rollout:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    t0 = time.perf_counter()
    gen = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                         do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    P = prompt_ids.shape[1]
    response_ids = gen[:, P:]
    if response_ids.shape[1] == 0:  # max_new_tokens = 0
        response_ids = torch.full((len(prompts), 1), tokenizer.eos_token_id, device=device)
    mask, ended = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(mask, response_ids, tokenizer.pad_token_id)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return Rollout(input_ids=torch.cat([prompt_ids, response_ids], dim=1), attention_mask=attention_mask,
                   position_ids=position_ids, prompt_len=P, response_ids=response_ids, response_mask=mask,
                   ended=ended, tokens_per_s=float(mask.sum()) / max(elapsed, 1e-9))
