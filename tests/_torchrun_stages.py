"""Run by tests/test_distributed.py under torchrun: `python -m torch.distributed.run ... _torchrun_stages.py
'<JSON list of rlhf-fast argument lists>'` runs those CLI commands one after the other in the same
processes. PPO samples through `fixed_rollouts`, so a PPO run depends on its prompts only and can be
compared with a single-process run."""

from __future__ import annotations

import json
import random
import sys
import zlib

import torch


def fixed_rollouts(model, tokenizer, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
    """Runs the real sampler (so generation under FSDP runs, for a number of steps that differs by
    rank), then replaces the responses with ones that depend on the prompt only: tokens from a
    generator seeded by the prompt, ended by EOS within R tokens, or (about one prompt in four) cut
    at R tokens without EOS."""
    from rlhf_fast.data.collate import encode_prompt
    from rlhf_fast.rollout.sampler import Rollout, left_pad, response_mask_from_ids, sample_responses

    sampled = sample_responses(model, tokenizer, prompts, max_new_tokens, temperature, top_p)
    device = sampled.input_ids.device
    R, eos, pad = max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id
    first_plain = 4  # after <pad> <bos> <eos> <unk>
    responses = []
    for p in prompts:
        rng = random.Random(zlib.crc32(p.encode()))
        cut = rng.random() < 0.25
        n = R if cut else rng.randint(1, R - 1)
        ids = [rng.randrange(first_plain, len(tokenizer)) for _ in range(n)]
        if not cut:
            ids = ids + [eos] + [pad] * (R - n - 1)
        responses.append(ids)
    prompt_ids, prompt_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], pad)
    response_ids = torch.tensor(responses, device=device)
    mask, ended = response_mask_from_ids(response_ids, eos)
    attention_mask = torch.cat([prompt_mask.to(device), mask.long()], dim=1)
    return Rollout(input_ids=torch.cat([prompt_ids.to(device), response_ids], dim=1), attention_mask=attention_mask,
                   position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0), prompt_len=prompt_ids.shape[1],
                   response_ids=response_ids, response_mask=mask, ended=ended, tokens_per_s=sampled.tokens_per_s)


def main() -> int:
    from rlhf_fast import cli, distributed
    from rlhf_fast.trainers import ppo

    ppo.sample_responses = fixed_rollouts
    shutdown, distributed.shutdown = distributed.shutdown, lambda: None  # one process group for every command
    try:
        for argv in json.loads(sys.argv[1]):
            rc = cli.main(argv)
            if rc:
                return rc
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
