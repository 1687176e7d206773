"""`rlhf-fast pipeline`: SFT -> reward model -> PPO on one config (default: the tiny preset on the
shipped synthetic task), then a report: gold score of the untrained, SFT and PPO models on
held-out prompts, RM held-out accuracy, final KL to the SFT model, wall time per stage.

Overrides name the stage first: `--sft.optim.max_steps 50 --ppo.rollout.batch_size 32`;
`--seed N` and `--output-dir DIR` apply to every stage."""

from __future__ import annotations

import json
import os
import time

import torch

from rlhf_fast.config import ConfigError, PPOConfig, RMConfig, SFTConfig, load_config, parse_overrides
from rlhf_fast.trainers.metrics import read_metrics

STAGES = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig}


def _flatten(nested: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in nested.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out += [f"--{prefix}{k}", str(v)]
    return out


def stage_configs(config: str, overrides: list[str], output_dir: str, seed: int | None) -> dict:
    nested = parse_overrides(overrides)
    unknown = set(nested) - set(STAGES)
    if unknown:
        raise ConfigError(f"pipeline overrides must start with a stage ({', '.join(STAGES)}), got {sorted(unknown)}")
    cfgs = {name: load_config(cls, name, config, _flatten(nested.get(name, {}))) for name, cls in STAGES.items()}
    for name, cfg in cfgs.items():
        cfg.run.output_dir = os.path.join(output_dir, name)
        if seed is not None:
            cfg.run.seed = seed
    sft_policy = os.path.join(output_dir, "sft", "policy")
    cfgs["rm"].model.path = sft_policy
    cfgs["ppo"].model.path = sft_policy
    cfgs["ppo"].reward_model = os.path.join(output_dir, "rm", "reward_model")
    return cfgs


def untrained_gold_score(cfg) -> float:
    """Gold score of a freshly initialised model of the SFT stage's architecture."""
    from rlhf_fast.data.sources import load_rows
    from rlhf_fast.evaluation import gold_score
    from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for, resolve_device

    torch.manual_seed(cfg.run.seed)
    tok = load_tokenizer_for(cfg.model)
    model = build_or_load_causal_lm(cfg.model, tok, resolve_device(cfg.run.device))
    prompts = [r["prompt"] for r in load_rows(None, "prompt", cfg.data, "eval", cfg.run.seed)]
    return gold_score(model, tok, prompts, seed=cfg.run.seed)


def run_pipeline(config: str = "tiny", overrides: list[str] | None = None, output_dir: str = "outputs/pipeline",
                 seed: int | None = None) -> dict:
    from rlhf_fast.trainers.ppo import run_ppo
    from rlhf_fast.trainers.rm import run_rm
    from rlhf_fast.trainers.sft import run_sft

    cfgs = stage_configs(config, overrides or [], output_dir, seed)
    results: dict = {"config": config, "seed": cfgs["sft"].run.seed, "times_s": {}}
    synthetic = cfgs["sft"].data.eval_file is None and cfgs["sft"].model.path is None
    if synthetic:
        results["gold_untrained"] = untrained_gold_score(cfgs["sft"])
    for name, run in (("sft", run_sft), ("rm", run_rm), ("ppo", run_ppo)):
        t0 = time.perf_counter()
        final = run(cfgs[name])
        results["times_s"][name] = time.perf_counter() - t0
        results[name] = final
    ppo_rows = read_metrics(os.path.join(output_dir, "ppo", "metrics.jsonl"))
    train_rows = [r for r in ppo_rows if "ppo/kl_ref" in r]
    results["final_kl_to_sft"] = sum(r["ppo/kl_ref"] for r in train_rows[-5:]) / max(1, len(train_rows[-5:]))
    results["summary"] = {
        "gold score, untrained": results.get("gold_untrained"),
        "gold score, SFT": results["sft"].get("eval/gold_score"),
        "gold score, PPO": results["ppo"].get("eval/gold_score"),
        "RM held-out accuracy": results["rm"].get("eval/rm_accuracy"),
        "final KL to SFT (nats/episode)": results["final_kl_to_sft"],
        **{f"wall time {k} (s)": v for k, v in results["times_s"].items()},
    }
    write_report(results, output_dir, ppo_rows)
    return results


def format_summary(summary: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {'n/a' if v is None else (f'{v:.4g}' if isinstance(v, float) else v)} |")
    return "\n".join(lines)


def write_report(results: dict, output_dir: str, ppo_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ppo_rows if "reward/mean" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot([r["step"] for r in rows], [r["reward/mean"] for r in rows])
    axes[0].set_title("reward-model score (mean per iteration)")
    axes[1].plot([r["step"] for r in rows], [r["ppo/kl_ref"] for r in rows], color="tab:red")
    axes[1].set_title("KL to the SFT model (per episode)")
    for ax in axes:
        ax.set_xlabel("PPO iteration")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "ppo_reward_kl.png"), dpi=100)
    plt.close(fig)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(f"# rlhf_fast pipeline: {results['config']} (seed {results['seed']})\n\n")
        f.write(format_summary(results["summary"]) + "\n\n![reward and KL](ppo_reward_kl.png)\n")
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
