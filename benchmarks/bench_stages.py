"""The training stages end to end, rlhf_fast ops against the reference ops on the same model, side by
side: one timed call is one optimizer step (AdamW, forward + backward + step) or one batch of
generation.

- sft          tokens/s: trainers.sft.sft_loss (ops.fused_linear_cross_entropy on the hidden states)
               vs the model's full logits + F.cross_entropy
- rm           comparisons/s: a reward-model step with ops.ranking_loss vs ops.ranking_loss_ref on a
               data.collate.ranking_batch
- ppo_rollout  generated tokens/s: rollout.sample_responses (HF generate with the KV cache); one provider
- ppo_train    response tokens/s and peak memory of a PPO policy step (clipped surrogate + entropy
               bonus): trainers.ppo.response_logprobs (ops.fused_linear_logprobs) vs full logits +
               log_softmax + gather

Models: `tiny` (the preset, random weights, the shipped tokenizer and synthetic rows) everywhere; on a
GPU also the `1b` Llama-style preset with a 128k vocabulary (Llama-3 sized LM head) on random-token
batches, fp32 master weights under bf16 autocast as the trainers run. The optimizer's learning rate is
0, so every call does the full work and the weights (and losses) stay put: the loss of each provider
is checked against the fp32 reference one.

    python -m benchmarks.bench_stages [--device cuda] [--quick]
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks._common import (
    apply_threads,
    bench_case,
    finish,
    pick_device,
    standard_args,
)
from rlhf_fast import ops

STAGES = ("sft", "rm", "ppo_rollout", "ppo_train")


@dataclass
class Spec:
    """One model and its batch sizes."""

    name: str
    preset: str
    vocab: int | None  # None: the shipped tokenizer's vocabulary
    data: str  # "synthetic" (shipped tokenizer + synthetic rows) or "random" (random token ids)
    batch: int  # SFT / PPO rows per step, RM prompts per step
    seq: int  # synthetic: max_length; random: tokens per SFT row (RM rows: half)
    new_tokens: int  # PPO response length (max_new_tokens)
    k: int = 4  # RM responses per prompt


def specs(device: torch.device, quick: bool) -> list[Spec]:
    out = [Spec("tiny", "tiny", None, "synthetic", batch=16 if quick else 32, seq=128, new_tokens=16 if quick else 48)]
    if device.type == "cuda":
        out.append(Spec("1b-v128k", "1b", 128256, "random", batch=8, seq=1024 if quick else 2048,
                        new_tokens=128 if quick else 512))
    return out


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def tolerance(device: torch.device) -> float:
    return 3e-2 if device.type == "cuda" else 1e-4  # bf16 autocast on GPU vs the fp32 reference


_CACHE: dict = {}  # the last model built: the suite runs the stages one by one on the same models


def build(spec: Spec, device: torch.device):
    key = (spec.name, str(device))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _build(spec, device)
    return _CACHE[key]


def _build(spec: Spec, device: torch.device):
    from rlhf_fast.config import ModelConfig
    from rlhf_fast.data.tokenizer import load_tokenizer
    from rlhf_fast.models.loading import build_or_load_causal_lm

    torch.manual_seed(0)
    tok = load_tokenizer()
    model = build_or_load_causal_lm(ModelConfig(preset=spec.preset, attn_implementation="sdpa"), tok, device)
    if spec.vocab and spec.vocab > model.config.vocab_size:
        model.resize_token_embeddings(spec.vocab, mean_resizing=False)
    model.train()
    return model, tok


def sft_data(spec: Spec, tok, device: torch.device) -> dict:
    from rlhf_fast.data.collate import IGNORE_INDEX, sft_batch
    from rlhf_fast.data.sources import synthetic_rows

    if spec.data == "synthetic":
        batch, _ = sft_batch(tok, synthetic_rows("sft", "train", spec.batch), spec.seq)
    else:  # prompt = first half, response = second half
        g = torch.Generator().manual_seed(0)
        B, T = spec.batch, spec.seq
        ids = torch.randint(4, spec.vocab, (B, T), generator=g)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, T // 2 - 1 : T - 1] = ids[:, T // 2 :]
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def ranking_data(spec: Spec, tok, device: torch.device) -> dict:
    from rlhf_fast.data.collate import ranking_batch
    from rlhf_fast.data.sources import synthetic_rows

    if spec.data == "synthetic":
        batch, _ = ranking_batch(tok, synthetic_rows("ranking", "train", spec.batch, k=spec.k), spec.seq)
    else:
        g = torch.Generator().manual_seed(0)
        B, K, L = spec.batch, spec.k, spec.seq // 2
        ids = torch.randint(4, spec.vocab, (B * K, L), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "last_index": torch.full((B * K,), L - 1),
                 "ranks": torch.argsort(torch.rand(B, K, generator=g), dim=1)}
    return {k: v.to(device) for k, v in batch.items()}


def comparisons(ranks: torch.Tensor) -> int:
    """Pairs of one prompt's responses with different ranks (ties and empty slots hold none)."""
    valid = ranks >= 0
    pair = valid[:, :, None] & valid[:, None, :] & (ranks[:, :, None] != ranks[:, None, :])
    return int(pair.sum()) // 2


def optimizer(params):
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=0.0)  # lr 0: full work, weights stay


def step_fn(model, opt, loss_fn, device):
    def call():
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            out = loss_fn()
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        opt.step()
        return tuple(o.detach().float() for o in out) if isinstance(out, tuple) else loss.detach().float()
    return call


def throughput(rows, units: float, unit: str):
    for r in rows:
        if r.median_ms == r.median_ms and r.median_ms > 0:
            r.extra["throughput"] = units / (r.median_ms * 1e-3)
            r.extra["unit"] = unit
    return rows


def bench_sft(spec, model, tok, device, reps):
    from rlhf_fast.trainers.sft import sft_loss

    batch = sft_data(spec, tok, device)
    labels = batch["labels"]
    keep = labels != -100

    def ref_loss():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[keep].float(), labels[keep])

    with torch.no_grad():
        expected = ref_loss()  # fp32, no autocast
    opt = optimizer(model.parameters())
    providers = {"torch:logits+F.cross_entropy": step_fn(model, opt, ref_loss, device),
                 "rlhf_fast:sft_loss": step_fn(model, opt, lambda: sft_loss(model, batch)[0], device)}
    rows = bench_case("stage:sft", spec.name, torch.float32, "train_step", providers, expected, device,
                      tol=tolerance(device), reference="torch:logits+F.cross_entropy", reps=reps)
    return throughput(rows, float(keep.sum()), "tokens/s")


def bench_rm(spec, model, tok, device, reps):
    from rlhf_fast.models.reward import RewardModel

    rm = RewardModel.from_causal_lm(model)
    batch = ranking_data(spec, tok, device)
    ranks = batch["ranks"]

    def loss_with(fn):
        def loss():
            rewards = rm(batch["input_ids"], batch["attention_mask"], batch["last_index"]).view(ranks.shape)
            return fn(rewards, ranks)
        return loss

    ref = loss_with(lambda r, rk: ops.ranking_loss_ref(r.float(), rk, 0.0))
    with torch.no_grad():
        expected = ref()
    opt = optimizer(rm.parameters())
    providers = {"torch:ranking_loss_ref": step_fn(rm, opt, ref, device),
                 "rlhf_fast:ranking_loss": step_fn(rm, opt, loss_with(lambda r, rk: ops.ranking_loss(r, rk)), device)}
    rows = bench_case("stage:rm", spec.name, torch.float32, "train_step", providers, expected, device,
                      tol=tolerance(device), reference="torch:ranking_loss_ref", reps=reps)
    return throughput(rows, comparisons(ranks), "comparisons/s")


def prompts(spec: Spec) -> list[str]:
    from rlhf_fast.data.sources import synthetic_rows

    return [r["prompt"] for r in synthetic_rows("prompt", "train", spec.batch)]


def bench_ppo_rollout(spec, model, tok, device, reps):
    from rlhf_fast.rollout import sample_responses

    ps, counts = prompts(spec), []

    def call():
        torch.manual_seed(0)
        with autocast(device):
            rollout = sample_responses(model, tok, ps, spec.new_tokens)
        counts.append(int(rollout.response_mask.sum()))
        return None  # sampling has no reference output to check against

    rows = bench_case("stage:ppo_rollout", spec.name, torch.float32, "generate", {"rlhf_fast:sample_responses": call},
                      None, device, tol=tolerance(device), reference="rlhf_fast:sample_responses", reps=reps)
    counts.sort()
    return throughput(rows, counts[len(counts) // 2], "tokens/s")


def bench_ppo_train(spec, model, tok, device, reps):
    from rlhf_fast.rollout import sample_responses
    from rlhf_fast.trainers.ppo import response_logprobs
    from rlhf_fast.trainers.ppo_math import masked_mean, policy_loss

    torch.manual_seed(0)
    with autocast(device):
        rollout = sample_responses(model, tok, prompts(spec), spec.new_tokens)
    mask = rollout.response_mask
    P, R = rollout.prompt_len, rollout.response_ids.shape[1]
    advantages = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)).to(device)

    def ref_logprobs():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=rollout.position_ids).logits[:, P - 1 : P - 1 + R]
        logp = torch.log_softmax(logits.float(), dim=-1)
        lp = logp.gather(-1, rollout.response_ids[..., None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return lp, entropy

    def fast_logprobs():
        lp, entropy, _ = response_logprobs(model, rollout, compute_entropy=True)
        return lp, entropy

    with torch.no_grad():
        old = ref_logprobs()[0].detach()

    def loss_with(fn):
        def loss():
            lp, entropy = fn()
            pg, _, _ = policy_loss(lp, old, advantages, mask, 0.2)
            return pg - 0.01 * masked_mean(entropy, mask), masked_mean(lp.detach(), mask)
        return loss

    with torch.no_grad():
        expected = loss_with(ref_logprobs)()
    opt = optimizer(model.parameters())
    providers = {"torch:logits+log_softmax": step_fn(model, opt, loss_with(ref_logprobs), device),
                 "rlhf_fast:response_logprobs": step_fn(model, opt, loss_with(fast_logprobs), device)}
    rows = bench_case("stage:ppo_train", spec.name, torch.float32, "train_step", providers, expected, device,
                      tol=tolerance(device), reference="torch:logits+log_softmax", reps=reps)
    return throughput(rows, float(mask.sum()), "tokens/s")


BENCHES = {"sft": bench_sft, "rm": bench_rm, "ppo_rollout": bench_ppo_rollout, "ppo_train": bench_ppo_train}


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None, only=STAGES,
        spec_list: list[Spec] | None = None):
    """Rows of the stages in `only` for every model of specs(); dtype is not used (fp32 weights,
    bf16 autocast on GPU, as the trainers run)."""
    rows, skipped = [], []
    for spec in spec_list or specs(device, quick):
        model, tok = build(spec, device)
        for stage in only:
            rows += BENCHES[stage](spec, model, tok, device, reps or (3 if quick else 10))
        del model
        if len(spec_list or specs(device, quick)) > 1:  # several models: keep one in memory at a time
            _CACHE.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type != "cuda":
        skipped.append("the 1b model: GPU only")
    return rows, skipped


def main(argv=None) -> int:
    p = standard_args(__doc__)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ", ".join(STAGES))
    args = p.parse_args(argv)
    apply_threads(args)
    device = pick_device(args.device)
    rows, skipped = run(device, getattr(torch, args.dtype), args.quick, args.reps, only=tuple(args.stages.split(",")))
    return finish(rows, "bench_stages", device, args, skipped)


if __name__ == "__main__":
    sys.exit(main())
