"""One whole PPO iteration, `PPOTrainer.train_step()`, with the rlhf_fast ops against the PyTorch
reference ops, side by side on the same trainer: tokens/s and peak memory.

One iteration: rollout (rollout.sample_responses: HF generate with the KV cache), experience (reference
and policy log-probs, per-token KL, reward-model scores, values, GAE, advantage whitening), then the
PPO epochs of clipped policy / value minibatch updates (AdamW). The two providers differ only in the
backend of the ops the trainer calls, chosen through RLHF_FAST_BACKEND for the duration of the call:

- torch:ref_ops   RLHF_FAST_BACKEND=torch: the references. fused_linear_logprobs_ref materialises the
                  full-vocabulary logits of the response positions, their fp32 log_softmax and a gather
                  (and the entropy from them); gae_ref is the per-timestep backward loop; masked_whiten_ref
                  the fp64 reduction.
- rlhf_fast:ops   the default ("auto": the fastest backend built for the device, e.g. the C++ kernels on
                  CPU): tiled log-probs / entropy / KL without a logits tensor, the scan GAE, the
                  one-pass whitening.

The reference takes the logits of the response positions only (what the op sees); a trainer that
calls model(...).logits on the whole prompt + response would hold more.

Comparable calls: every call first restores the same weights, optimizer (AdamW moments, written in
place, so no extra memory), schedule, KL controller and data position, and reseeds torch, so both
providers sample the very same rollout and run the very same updates. The trainer is warmed up by one
iteration before that snapshot, so the AdamW moments exist already (a steady-state iteration). The
iteration's metrics (losses, gradient norm, entropy, reward, explained variance, response length) of
each provider are checked against the reference's, error |x - ref| / max(|ref|, 0.05) (the "max abs err"
column): FAIL above the tolerance.

Reported per provider: the iteration's median time and whole-iteration tokens/s (response tokens of
the rollout per second of the iteration), the rollout's generated tokens/s (generate alone), the
experience time (scoring after generate), the training response tokens/s (the PPO epochs, as the trainer
logs them), and the peak memory one iteration allocates beyond the trainer's resident models and
optimizer (_common.peak_memory_mb: the profiler's allocations on CPU, max_memory_allocated on CUDA).
Restoring the snapshot is inside the timed call (a copy of the weights; tiny next to an iteration).

Models: the `tiny` preset with fresh random weights (model.path and reward_model None: the reference is
a copy of the policy, the value model a fresh reward model), the shipped tokenizer (a 659-token
vocabulary) and synthetic prompts, the demo's PPO settings (configs/tiny.yaml); `tiny-v32k` (CPU) /
`tiny-v128k` (GPU) resize the four models' vocabularies to an LLM's, where the full logits weigh.
Responses of those models, sampled from random embeddings, rarely end: they run to max_new_tokens.

    python -m benchmarks.bench_ppo_step [--device cuda] [--quick] [--threads 1]
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass

import torch

from benchmarks._common import (
    RESULTS_DIR,
    apply_threads,
    bench_case,
    device_slug,
    finish,
    pick_device,
    standard_args,
)
from rlhf_fast.ops import _backend

OP = "stage:ppo_step"
REFERENCE = "torch:ref_ops"
PROVIDERS = {REFERENCE: "torch", "rlhf_fast:ops": "auto"}  # provider -> RLHF_FAST_BACKEND during the call
# Metrics of train_step checked against the reference provider's: error |x - ref| / max(|ref|, FLOOR) each.
# They are means of O(1) terms (whitened advantages, unit-scale scores), so a mean that cancels to ~0
# (the policy loss: ~4e-3 here) is judged against the size of its terms, not relative to nothing. Left
# out: ppo/clipfrac (a count: one token crossing the clip edge flips it), ppo/approx_kl and ppo/kl_ref
# (~1e-4 and below on these models).
CHECKED = ("loss/policy", "loss/value", "optim/grad_norm", "policy/entropy", "reward/mean", "reward/total_mean",
           "value/explained_variance", "rollout/response_length")
FLOOR = 0.05
OPS = ("fused_linear_logprobs", "gae", "masked_whiten")  # what the trainer's PPO iteration calls


@dataclass
class Spec:
    """One model and PPO iteration size."""

    name: str
    batch: int  # rollout.batch_size: prompts per iteration
    new_tokens: int  # rollout.max_new_tokens
    minibatch: int  # ppo.minibatch_size
    epochs: int  # ppo.epochs
    vocab: int | None = None  # resize the four models' vocabularies to this (None: the shipped tokenizer's)

    @property
    def case(self) -> str:
        return f"{self.name} B={self.batch} R={self.new_tokens} mb={self.minibatch} ep={self.epochs}"


def specs(device: torch.device, quick: bool) -> list[Spec]:
    if quick:  # the CI gate: a few seconds on one CPU thread
        return [Spec("tiny", 8, 8, 4, 1)]
    demo = Spec("tiny", 64, 24, 16, 2)  # configs/tiny.yaml's ppo section
    if device.type == "cuda":
        return [demo, Spec("tiny-v128k", 128, 128, 32, 1, vocab=128256)]
    return [demo, Spec("tiny-v32k", 32, 24, 16, 1, vocab=32000)]


def tolerance(device: torch.device) -> float:
    # CPU fp32: only summation orders differ (measured ~1e-6 after a whole iteration); GPU: bf16 autocast.
    return 3e-2 if device.type == "cuda" else 1e-4


def make_trainer(spec: Spec, device: torch.device, out_dir: str, seed: int = 0):
    """A PPOTrainer on the tiny preset with fresh random models and synthetic prompts."""
    from rlhf_fast.config import PPOConfig, load_config
    from rlhf_fast.data.sources import synthetic_rows
    from rlhf_fast.trainers.ppo import PPOTrainer

    class Trainer(PPOTrainer):
        def setup_models(self):
            super().setup_models()
            if spec.vocab:  # before setup() builds the optimizer over the parameters
                for m in (self.model, self.ref, self.value.backbone, self.reward.backbone):
                    m.resize_token_embeddings(spec.vocab, mean_resizing=False)

    cfg = load_config(PPOConfig, "ppo", "tiny", [
        "--model.path", "none", "--reward_model", "none", "--model.attn_implementation", "sdpa",
        "--run.output_dir", out_dir, "--run.progress", "false", "--run.device", str(device),
        "--run.seed", str(seed), "--rollout.batch_size", str(spec.batch),
        "--rollout.max_new_tokens", str(spec.new_tokens), "--ppo.minibatch_size", str(spec.minibatch),
        "--ppo.epochs", str(spec.epochs), "--data.synthetic_eval", "4"])
    trainer = Trainer(cfg)
    trainer.setup(synthetic_rows("prompt", "train", max(4 * spec.batch, 64), seed=seed))
    return trainer


# ----------------------------------------------------------------------------- same state every call


def snapshot(t) -> dict:
    opt = t.optimizer
    return {"model": {k: v.detach().clone() for k, v in t.model.state_dict().items()},
            "value": {k: v.detach().clone() for k, v in t.value.state_dict().items()},
            "opt_state": [{k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in opt.state[p].items()}
                          for g in opt.param_groups for p in g["params"]],
            "opt_groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
            "scheduler": copy.deepcopy(t.scheduler.state_dict()),
            "extra": copy.deepcopy(t.extra_state()),
            "data_position": t.data_position}


@torch.no_grad()
def restore(t, s: dict) -> None:
    """Puts back the snapshot in place: weights copied into the parameters, AdamW moments into the
    optimizer's own tensors (load_state_dict would alias or reallocate them)."""
    t.model.load_state_dict(s["model"])
    t.value.load_state_dict(s["value"])
    opt = t.optimizer
    params = [p for g in opt.param_groups for p in g["params"]]
    for p, saved in zip(params, s["opt_state"]):
        state = opt.state[p]
        for k, v in saved.items():
            if torch.is_tensor(v) and torch.is_tensor(state.get(k)) and state[k].shape == v.shape:
                state[k].copy_(v)
            else:
                state[k] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
    for g, saved in zip(opt.param_groups, s["opt_groups"]):
        g.update(copy.deepcopy(saved))
    opt.zero_grad(set_to_none=True)
    t.scheduler.load_state_dict(copy.deepcopy(s["scheduler"]))
    t.load_extra_state(copy.deepcopy(s["extra"]))
    t.data_position = s["data_position"]


@contextlib.contextmanager
def forced_backend(name: str):
    """RLHF_FAST_BACKEND=name for the duration (ops.* read it on every call)."""
    old = os.environ.get(_backend.ENV_VAR)
    os.environ[_backend.ENV_VAR] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_backend.ENV_VAR, None)
        else:
            os.environ[_backend.ENV_VAR] = old


def resolved_backends(backend: str, device: torch.device) -> dict[str, str]:
    from rlhf_fast.ops.fused_linear_logprobs import _PREFERENCE

    with forced_backend(backend):
        return {op: _backend.resolve(None, device, op, _PREFERENCE if op == "fused_linear_logprobs" else None)
                for op in OPS}


def iteration(trainer, state: dict, backend: str, seed: int, record: list):
    """One provider: restore, reseed, train_step under the backend; returns the checked metrics."""
    def call():
        restore(trainer, state)
        torch.manual_seed(seed)  # the same rollout and minibatch order for every call
        with forced_backend(backend):
            metrics = trainer.train_step()
        if not torch.autograd._profiler_enabled():  # the peak-memory call runs under the profiler: not timed
            record.append(metrics)
        return torch.tensor([float(metrics.get(k, math.nan)) for k in CHECKED], dtype=torch.float64)
    return call


def scaled(call, scale: torch.Tensor):
    """The checked metrics divided by max(|reference|, FLOOR), and a constant 1: _common.errors' error
    relative to the largest |reference| entry (that 1) is then max |x - ref| / max(|ref|, FLOOR)."""
    return lambda: torch.cat([call() / scale, torch.ones(1, dtype=torch.float64)])


def median_of(records: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in records if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else math.nan


def bench_spec(spec: Spec, device: torch.device, reps: int, seed: int = 0):
    tmp = tempfile.mkdtemp(prefix="bench_ppo_step-")
    trainer = None
    try:
        torch.manual_seed(seed)
        trainer = make_trainer(spec, device, tmp, seed)
        with forced_backend("torch"):
            trainer.train_step()  # warm-up iteration: AdamW moments exist from here on
        state = snapshot(trainer)
        records = {name: [] for name in PROVIDERS}
        calls = {name: iteration(trainer, state, backend, seed, records[name]) for name, backend in PROVIDERS.items()}
        reference = calls[REFERENCE]()
        scale = reference.abs().nan_to_num(1.0).clamp_min(FLOOR)
        providers = {name: scaled(call, scale) for name, call in calls.items()}
        expected = scaled(lambda: reference, scale)()
        rows = bench_case(OP, spec.case, torch.float32, "train_step", providers, expected, device,
                          tol=tolerance(device), reference=REFERENCE, reps=reps)
        for row in rows:
            recs = records.get(row.provider) or []
            if not recs or row.median_ms != row.median_ms:
                continue
            tokens = median_of(recs, "rollout/response_length") * spec.batch  # response tokens of the rollout
            gen_tps = median_of(recs, "perf/rollout_tokens_per_s")
            experience_s = median_of(recs, "perf/rollout_s") - tokens / gen_tps if gen_tps > 0 else math.nan
            row.extra.update({
                "throughput": tokens / (row.median_ms * 1e-3), "unit": "tokens/s",  # the suite's stage table
                "iteration_tokens_per_s": tokens / (row.median_ms * 1e-3),
                "rollout_tokens_per_s": gen_tps,
                "experience_ms": 1e3 * experience_s,
                "train_tokens_per_s": median_of(recs, "perf/train_tokens_per_s"),
                "response_tokens": tokens,
                "backends": resolved_backends(PROVIDERS[row.provider], device),
                "metrics": {k: median_of(recs, k) for k in CHECKED + ("ppo/clipfrac", "ppo/approx_kl", "ppo/kl_ref")},
            })
        ref = next((r for r in rows if r.provider == REFERENCE), None)
        for row in rows:  # ratios of the throughputs against the reference
            for key in ("rollout_tokens_per_s", "train_tokens_per_s", "iteration_tokens_per_s"):
                if ref is not None and ref.extra.get(key) and key in row.extra:
                    row.extra[key.replace("_tokens_per_s", "_ratio")] = row.extra[key] / ref.extra[key]
        return rows
    finally:
        if trainer is not None and getattr(trainer, "metrics", None) is not None:
            trainer.metrics.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None):
    """Rows of one PPO iteration per spec; dtype is not used (fp32 weights, bf16 autocast on GPU, as the
    trainer runs)."""
    rows, skipped = [], []
    for spec in specs(device, quick):
        rows += bench_spec(spec, device, reps or (3 if quick else 10))
    if device.type != "cuda":
        skipped.append("tiny-v128k (larger batch, longer responses): GPU only")
    return rows, skipped


def throughput_table(rows) -> str:
    head = ["case", "provider", "iteration ms (p20-p80)", "iteration tokens/s", "rollout gen tokens/s",
            "experience ms", "train tokens/s", "peak MB", "mem ratio", "speed-up", "status"]
    lines = [head]
    f = lambda x, r=None: "" if x is None or math.isnan(x) else (
        f"{x:.4g}" + ("" if r is None or math.isnan(r) else f" ({r:.2f}x)"))
    for r in rows:
        e = r.extra
        lines.append([r.case, r.provider, f"{r.median_ms:.4g} ({r.p20_ms:.3g}-{r.p80_ms:.3g})",
                      f(e.get("iteration_tokens_per_s"), e.get("iteration_ratio")),
                      f(e.get("rollout_tokens_per_s"), e.get("rollout_ratio")), f(e.get("experience_ms")),
                      f(e.get("train_tokens_per_s"), e.get("train_ratio")), f(r.peak_mem_mb), f(r.mem_ratio),
                      f"{r.speedup:.2f}x", r.status])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |"
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(x) for x in lines[1:]])


NOTES = """Columns: iteration = one PPOTrainer.train_step() (rollout + experience + PPO epochs); iteration
tokens/s = response tokens of the rollout / iteration time; rollout gen tokens/s = generate alone (no op of
rlhf_fast runs there: equal work for both providers); experience ms = scoring after generate (reference and
policy log-probs, KL, RM, values, GAE, whitening); train tokens/s = response tokens through the PPO epochs /
their time, as the trainer logs it; peak MB = memory one iteration allocates beyond the resident models and
optimizer. Ratios in brackets: against torch:ref_ops, measured side by side (interleaved) in one run."""


def main(argv=None) -> int:
    p = standard_args(__doc__.split("\n\n")[0])
    p.add_argument("--note", default="", help="a line for the markdown file (e.g. how loaded the machine was)")
    args = p.parse_args(argv)
    apply_threads(args)
    device = pick_device(args.device)
    rows, skipped = run(device, torch.float32, args.quick, args.reps)
    status = finish(rows, "bench_ppo_step", device, args, skipped)
    table = throughput_table(rows)
    print(table)
    md = os.path.join(args.out or os.path.join(RESULTS_DIR, device_slug(device)), "bench_ppo_step.md")
    backends = "; ".join(f"{r.provider}: {r.extra.get('backends')}" for r in rows if r.case == rows[0].case)
    with open(md, "a") as fh:
        fh.write("\n## Tokens/s per phase\n\n" + table + "\n\n" + NOTES + "\n\nBackends: " + backends + "\n")
        if args.note:
            fh.write("\n" + args.note + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
