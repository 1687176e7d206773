"""Per-GPU memory estimate of SFT, RM and PPO under FSDP2 (rlhf_fast.memory: the accounting is in
its docstring), per model size and GPU count, as a markdown table; and, on CPU, the measured peak
of one single-process SFT step of the tiny model next to the same formula's estimate.

    python -m benchmarks.memory_estimate [--models tiny,1b,7b,13b,34b,70b] [--gpus 1,8,16,64]
        [--config path/to/config.json ...] [--micro-batch 1] [--seq 2048] [--gen-batch 8]
        [--no-checkpointing] [--no-fused] [--no-measure] [--out benchmarks/results/memory_estimate.md]

Models: the presets tiny (the shipped tokenizer's vocabulary), 1b (Llama-3's 128k vocabulary), 7b
(Llama-2's 32k), and Llama-2-13B, CodeLlama-34B, Llama-2-70B shapes; --config adds any local HF
config.json. Parameters are counted on the `meta` device: nothing is allocated or downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks._common import RESULTS_DIR
from rlhf_fast import memory as M

MODELS = ("tiny", "1b", "7b", "13b", "34b", "70b")
GPUS = (1, 8, 16, 64)


def measure_tiny_sft(checkpointing: bool, batch_rows: int = 32, max_length: int = 64) -> tuple[float, float, int]:
    """(measured MB, estimated MB, tokens) of one fp32 SFT step (fused loss + backward + AdamW) of the
    tiny model on the CPU, beyond the resident weights and AdamW moments (one step first)."""
    import torch

    from benchmarks._common import peak_memory_mb
    from rlhf_fast.config import ModelConfig
    from rlhf_fast.data.collate import sft_batch
    from rlhf_fast.data.sources import synthetic_rows
    from rlhf_fast.data.tokenizer import load_tokenizer
    from rlhf_fast.models.loading import build_or_load_causal_lm
    from rlhf_fast.trainers.sft import sft_loss

    torch.manual_seed(0)
    tok = load_tokenizer()
    cfg = ModelConfig(preset="tiny", attn_implementation="sdpa", gradient_checkpointing=checkpointing)
    model = build_or_load_causal_lm(cfg, tok, torch.device("cpu")).train()
    batch, _ = sft_batch(tok, synthetic_rows("sft", "train", batch_rows), max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss, _ = sft_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    measured = peak_memory_mb(step, torch.device("cpu"))
    s = M.model_shapes("tiny")
    B, T = batch["input_ids"].shape
    # single process, fp32: the gradients (4 B per parameter) and fp32 activations, no FSDP units
    est = 4 * s.params + M.activation_bytes(s, B * T, checkpointing, act_bytes=4, seq=T) + M.logits_bytes(s, B * T, True)
    return measured, est / 2**20, B * T


def report(models: list[M.Shapes], gpus: list[int], st: M.Setting, measure: bool) -> str:
    toks = st.micro_batch * st.seq
    out = ["# Memory estimate per GPU (FSDP2)", "",
           (f"Estimated by `python -m benchmarks.memory_estimate` (rlhf_fast/memory.py) from the model configs: "
           f"micro-batch {st.micro_batch} x {st.seq} tokens per GPU, activation checkpointing "
           f"{'on' if st.checkpointing else 'off'}, {'fused log-prob / cross-entropy ops' if st.fused else 'full-vocabulary logits'}, "
           f"flash attention, PPO generating {st.gen_batch} sequences of {st.seq} tokens per GPU at a time. "
           "FSDP2 with bf16 compute and fp32 reduce, AdamW: trained models 16 B per parameter / N (fp32 "
           "parameters, gradients, m, v), frozen ones 2 B / N (bf16), two all-gathered bf16 units and one "
           "unit's gradients unsharded, activations, and (PPO) the larger of the training phase (policy + value "
           "activations) and the KV cache. PPO: policy + value trained, reference + reward model frozen; "
           "'frozen offloaded' keeps those in CPU memory (FSDP2 CPUOffloadPolicy); 'shared backbone' puts the "
           "value head on the policy. Not included: CUDA context and NCCL buffers (~0.5-1 GB), fragmentation, "
           "optimizer-step temporaries. An estimate: expect the real peak within some tens of percent. "
           "Under torchrun the trainers shard this way (rlhf_fast/distributed.py); the shared-backbone layout is not a trainer option yet."), "",
           "## GB per GPU", "", M.table(models, gpus, st), "",
           "## Models", "",
           "| model | params (policy) | params (RM / value) | layers | hidden | vocab | largest FSDP unit |",
           "|---|---|---|---|---|---|---|"]
    for s in models:
        out.append(f"| {s.name} | {s.params:,} | {s.params_rm:,} | {s.layers} | {s.hidden} | {s.vocab:,} | "
                   f"{M.human(s.largest_unit)} |")
    out += ["", f"## Activations of one micro-batch ({st.micro_batch} x {st.seq} tokens), GB per trained model", "",
            "| model | no checkpointing | checkpointing | full-vocab log-probs the fused op avoids (B x T x V x 4 B) |",
            "|---|---|---|---|"]
    for s in models:
        out.append(f"| {s.name} | {M.gb(M.activation_bytes(s, toks, False))} | {M.gb(M.activation_bytes(s, toks, True))} | "
                   f"{M.gb(M.logits_bytes(s, toks, False) - M.logits_bytes(s, toks, True))} |")
    big = next((s for s in models if s.name == "7b"), models[-1])
    n = 8 if 8 in gpus else gpus[-1]
    out += ["", f"## PPO breakdown: {big.name} on {n} GPUs, GB per GPU", "", "| part | PPO | frozen offloaded | shared backbone |",
            "|---|---|---|---|"]
    parts = {stage: M.stage_bytes(big, n, stage, st) for stage in ("ppo", "ppo_offload", "ppo_shared")}
    labels = {"states": "trained models: fp32 params + grads + AdamW (sharded)", "frozen": "frozen models: bf16 (sharded)",
              "units": "unsharded bf16 units + one unit's grads", "activations": "max(training activations + log-probs, KV cache)"}
    for key, label in labels.items():
        out.append(f"| {label} | " + " | ".join(M.gb(parts[stage].get(key, 0.0)) for stage in parts) + " |")
    if measure:
        out += ["", "## Check: the tiny model, one SFT step on the CPU, measured vs estimated", "",
                ("Single process, fp32 (no FSDP, no bf16): what one step (fused loss, backward, AdamW) allocates beyond "
                "the resident weights and AdamW moments, measured by benchmarks/_common.peak_memory_mb (the "
                "profiler's allocations), vs the same formula: gradients 4 B per parameter + fp32 activations. "
                "A check of the activation accounting on a real model (the FSDP terms need GPUs)."), "",
                "| activation checkpointing | tokens (B x T) | measured MB | estimated MB | estimate / measured |",
                "|---|---|---|---|---|"]
        for ckpt in (False, True):
            measured, est, tokens = measure_tiny_sft(ckpt)
            out.append(f"| {'on' if ckpt else 'off'} | {tokens} | {measured:.2f} | {est:.2f} | {est / measured:.2f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    p.add_argument("--config", action="append", default=[], help="a local HF config.json to add (repeatable)")
    p.add_argument("--gpus", default=",".join(map(str, GPUS)), help="comma-separated GPU counts")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per forward/backward")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--gen-batch", type=int, default=8, help="PPO: sequences generated at once per GPU")
    p.add_argument("--no-checkpointing", action="store_true", help="activations without checkpointing")
    p.add_argument("--no-fused", action="store_true", help="full-vocabulary logits instead of the fused ops")
    p.add_argument("--no-measure", action="store_true", help="skip the tiny model's measured CPU step")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the measured step")
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "memory_estimate.md"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    models = [M.model_shapes(name) for name in args.models.split(",") if name]
    models += [M.shapes_from_config(M.config_from_json(path), os.path.basename(os.path.dirname(os.path.abspath(path))))
               for path in args.config]
    st = M.Setting(micro_batch=args.micro_batch, seq=args.seq, gen_batch=args.gen_batch,
                   checkpointing=not args.no_checkpointing, fused=not args.no_fused)
    text = report(models, [int(g) for g in args.gpus.split(",")], st, measure=not args.no_measure)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
