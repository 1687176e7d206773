"""Tokenisation and batching for the three stages.

Sequences are `[bos] prompt-text response [eos]`, right-padded. The prompt text is the tokenizer's
chat template applied to a user turn when it has one, else `prompt + "\\n"`. Rows longer than
max_length keep the end of the prompt and the start of the response, and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def prompt_text(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and not getattr(tokenizer, "chat_template", None):
        ids = [tokenizer.bos_token_id] + ids
    return ids


@dataclass
class Encoded:
    input_ids: list[int]
    prompt_len: int  # tokens before the response
    truncated: bool


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> Encoded:
    """prompt + response + eos, truncated to max_length (at least one response token kept)."""
    p = encode_prompt(tokenizer, prompt)
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(p) + len(r) > max_length
    if truncated:
        keep_prompt = min(len(p), max(1, max_length - len(r)), max_length - 1)
        p = p[len(p) - keep_prompt:]
        r = r[: max_length - len(p)]
    return Encoded(p + r, len(p), truncated)


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (N, max_len)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def sft_batch(tokenizer, rows: list[dict], max_length: int) -> tuple[dict, int]:
    """input_ids, attention_mask and labels (the next token, IGNORE_INDEX outside the response),
    so that position t predicts labels[t]; and how many rows were truncated."""
    encoded = [encode_pair(tokenizer, r["prompt"], r["response"], max_length) for r in rows]
    ids, mask = pad_right([e.input_ids for e in encoded], tokenizer.pad_token_id)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        # position t predicts token t + 1; response tokens are positions prompt_len .. n-1
        labels[i, e.prompt_len - 1 : n - 1] = ids[i, e.prompt_len : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, sum(e.truncated for e in encoded)


def ranking_batch(tokenizer, rows: list[dict], max_length: int) -> tuple[dict, int]:
    """All K responses of each prompt in one batch element: input_ids (B*K, L) with the K responses
    of prompt b at rows b*K .. b*K+K-1, last_index (B*K,) the last response token, ranks (B, K) with
    -1 for empty slots (prompts with fewer than the batch's largest K)."""
    K = max(len(r["responses"]) for r in rows)
    seqs, last, ranks, truncated = [], [], torch.full((len(rows), K), -1, dtype=torch.long), 0
    for b, row in enumerate(rows):
        for k in range(K):
            if k < len(row["responses"]):
                e = encode_pair(tokenizer, row["prompt"], row["responses"][k], max_length)
                truncated += e.truncated
                ranks[b, k] = row["ranks"][k]
                seqs.append(e.input_ids)
            else:
                seqs.append([tokenizer.eos_token_id])  # empty slot: a 1-token placeholder, rank -1
            last.append(len(seqs[-1]) - 1)
    ids, mask = pad_right(seqs, tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "last_index": torch.tensor(last), "ranks": ranks}, truncated


def packed_sft_batch(tokenizer, rows: list[dict], max_length: int) -> tuple[dict, int]:
    """SFT rows packed first-fit into sequences of at most max_length tokens, padding-free:
    position_ids restart at 0 for every row and there is no attention_mask, so transformers
    builds a block-diagonal causal mask (rows never attend to each other). The padding at the end
    of a sequence is one more block with ignored labels."""
    encoded = [encode_pair(tokenizer, r["prompt"], r["response"], max_length) for r in rows]
    bins: list[list] = []
    for e in sorted(encoded, key=lambda e: -len(e.input_ids)):
        for b in bins:
            if sum(len(x.input_ids) for x in b) + len(e.input_ids) <= max_length:
                b.append(e)
                break
        else:
            bins.append([e])
    width = max(sum(len(x.input_ids) for x in b) for b in bins)
    ids = torch.full((len(bins), width), tokenizer.pad_token_id, dtype=torch.long)
    positions = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, b in enumerate(bins):
        start = 0
        for e in b:
            n = len(e.input_ids)
            ids[i, start : start + n] = torch.tensor(e.input_ids)
            positions[i, start : start + n] = torch.arange(n)
            labels[i, start + e.prompt_len - 1 : start + n - 1] = ids[i, start + e.prompt_len : start + n]
            start += n
        positions[i, start:] = torch.arange(width - start)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}, sum(e.truncated for e in encoded)
