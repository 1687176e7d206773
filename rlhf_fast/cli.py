"""The `rlhf-fast` command: pipeline (the default demo), sft, rm, ppo, eval, info, bench.

Stage commands take `--config <file or preset name>` and `--section.field value` overrides,
e.g. `rlhf-fast sft --config tiny --optim.lr 3e-4 --run.output_dir outputs/sft`.

On several GPUs or nodes, launch a stage with torchrun (see rlhf_fast.distributed):
`torchrun --nproc_per_node=8 -m rlhf_fast.cli sft --config 1b ...`; only rank 0 prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _stage(args, rest, cls, section, run):
    from rlhf_fast.config import ConfigError, field_docs, load_config

    if args.help_config:
        for key, text in field_docs(cls).items():
            print(f"--{key:<28} {text}")
        return 0
    try:
        cfg = load_config(cls, section, args.config, rest)
    except ConfigError as exc:
        print(f"rlhf-fast {section}: {exc}", file=sys.stderr)
        return 2
    from rlhf_fast import distributed

    try:
        final = run(cfg)
        if distributed.is_main():
            print(json.dumps(final, indent=1, default=float))
    finally:
        distributed.shutdown()
    return 0


def _pipeline(args, rest) -> int:
    from rlhf_fast.config import ConfigError
    from rlhf_fast.pipeline import format_summary, run_pipeline

    try:
        results = run_pipeline(args.config, rest, output_dir=args.output_dir, seed=args.seed)
    except ConfigError as exc:
        print(f"rlhf-fast pipeline: {exc}", file=sys.stderr)
        return 2
    print(format_summary(results["summary"]))
    print(f"report: {args.output_dir}/report.md")
    return 0


def _eval(args) -> int:
    import torch

    from rlhf_fast.config import ModelConfig
    from rlhf_fast.data.sources import synthetic_rows
    from rlhf_fast.evaluation import gold_score, ranking_accuracy
    from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for, resolve_device
    from rlhf_fast.trainers.rm import build_reward_model

    if args.task != "synthetic":
        print(f"rlhf-fast eval: unknown task {args.task!r} (available: synthetic)", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    results = {}
    if args.model:
        cfg = ModelConfig(path=args.model)
        tok = load_tokenizer_for(cfg)
        model = build_or_load_causal_lm(cfg, tok, device)
        prompts = [r["prompt"] for r in synthetic_rows("prompt", "eval", args.n, seed=args.seed)]
        results["gold_score"] = gold_score(model, tok, prompts, seed=args.seed)
    if args.reward_model:
        cfg = ModelConfig(path=args.reward_model)
        tok = load_tokenizer_for(cfg)
        rm = build_reward_model(cfg, tok, device)
        rows = synthetic_rows("ranking", "eval", args.n, seed=args.seed)
        results["rm_accuracy"] = ranking_accuracy(rm, tok, rows, max_length=args.max_length)
    if not results:
        print("rlhf-fast eval: give --model and/or --reward-model", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1))
    return 0


def _bench(rest) -> int:
    """The benchmark suite lives in the source checkout's benchmarks/ (next to the rlhf_fast/ of an
    editable install), not in the package: put the checkout on sys.path and run benchmarks.suite."""
    import importlib
    import os

    import rlhf_fast

    root = os.path.dirname(os.path.dirname(os.path.abspath(rlhf_fast.__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "suite.py")):
        print(f"rlhf-fast bench: no benchmarks/ folder next to the rlhf_fast package ({root}). The suite ships with "
              "the source tree, not the wheel: clone the repository, `pip install --no-build-isolation -e .` in it, "
              "and run `rlhf-fast bench` (or `python -m benchmarks`) from there.", file=sys.stderr)
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and os.path.dirname(os.path.abspath(getattr(loaded, "__file__", "") or "")) != os.path.join(root, "benchmarks"):
        print(f"rlhf-fast bench: another module named 'benchmarks' is already imported ({loaded!r})", file=sys.stderr)
        return 2
    suite = importlib.import_module("benchmarks.suite")
    return suite.main(rest, prog="rlhf-fast bench")


def main(argv: list[str] | None = None) -> int:
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, the other ranks log warnings only
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="rlhf-fast", description="Fast RLHF (InstructGPT) trainer")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions and available kernel backends")
    p = sub.add_parser("pipeline", help="SFT -> RM -> PPO on the tiny preset and synthetic task, then a report",
                       description="SFT -> RM -> PPO, evaluated with the gold labeler. Extra --<stage>.<section>.<field> "
                                   "value pairs override single fields, e.g. --ppo.rollout.batch_size 32.")
    p.add_argument("--config", default="tiny", help="YAML file or preset name with sft / rm / ppo sections")
    p.add_argument("--output-dir", default="outputs/pipeline")
    p.add_argument("--seed", type=int, default=None, help="seed for every stage (default: the config's)")
    for name, text in (("sft", "stage 1: supervised fine-tuning"), ("rm", "stage 2: reward model on K-way rankings"),
                       ("ppo", "stage 3: PPO against the reward model with a per-token KL penalty")):
        p = sub.add_parser(name, help=text, description=text + ". Extra --section.field value pairs override the config.")
        p.add_argument("--config", default=None, help="YAML file or preset name in configs/ (e.g. tiny)")
        p.add_argument("--help-config", action="store_true", help="list every config key with its description")
    sub.add_parser("bench", add_help=False,
                   help="every kernel and training stage against its PyTorch reference (see `rlhf-fast bench --help`)")
    p = sub.add_parser("eval", help="gold score of a policy / RM accuracy on held-out data")
    p.add_argument("--model", help="policy folder (save_pretrained)")
    p.add_argument("--reward-model", help="reward model folder")
    p.add_argument("--task", default="synthetic")
    p.add_argument("--n", type=int, default=200, help="held-out prompts / rankings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-length", type=int, default=128)
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv or ["pipeline"])  # no command: the embedded demo
    if args.command == "bench":  # its own options, parsed by benchmarks.suite
        return _bench(argv[argv.index("bench") + 1 :])
    if args.command not in ("sft", "rm", "ppo", "pipeline") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        from rlhf_fast.info import main as info_main

        return info_main()
    if args.command == "sft":
        from rlhf_fast.config import SFTConfig
        from rlhf_fast.trainers.sft import run_sft

        return _stage(args, rest, SFTConfig, "sft", run_sft)
    if args.command == "rm":
        from rlhf_fast.config import RMConfig
        from rlhf_fast.trainers.rm import run_rm

        return _stage(args, rest, RMConfig, "rm", run_rm)
    if args.command == "ppo":
        from rlhf_fast.config import PPOConfig
        from rlhf_fast.trainers.ppo import run_ppo

        return _stage(args, rest, PPOConfig, "ppo", run_ppo)
    if args.command == "pipeline":
        return _pipeline(args, rest)
    if args.command == "eval":
        return _eval(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
