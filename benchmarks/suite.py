"""The benchmark suite: every kernel against its PyTorch reference, then the training stages, in one
run; a FAIL (an output off the fp32 reference by more than the case's tolerance, or a benchmark that
raised) makes the exit status 1.

    python -m benchmarks [--quick] [--filter SUBSTR] [--device cuda] [--dtype bfloat16] [--out DIR] [--no-stages]
    rlhf-fast bench ...   (the same, from a source checkout)

Every entry of BENCHMARKS is a module with `run(device, dtype, quick, reps=None) -> (rows, skipped)`
(bench_stages also takes `only=` to run one stage). Writes results.csv, results.json (rows, skipped
providers, device / versions / commit / date), report.md and one PNG per op (speed-up and memory
ratio against the reference vs problem size) to benchmarks/results/<device>/ or --out.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import asdict

import torch

from benchmarks import _common
from benchmarks._common import Row, device_name, device_slug, format_table, metadata, pick_device

# name -> (module, keyword arguments of its run()). --filter matches these names.
BENCHMARKS: dict[str, tuple[str, dict]] = {
    "gae": ("benchmarks.bench_gae", {}),
    "masked_whiten": ("benchmarks.bench_masked_whiten", {}),
    "fused_linear_logprobs": ("benchmarks.bench_logprob", {}),
    "fused_linear_cross_entropy": ("benchmarks.bench_cross_entropy", {}),
    "ranking_loss": ("benchmarks.bench_ranking_loss", {}),
    "stage:sft": ("benchmarks.bench_stages", {"only": ("sft",)}),
    "stage:rm": ("benchmarks.bench_stages", {"only": ("rm",)}),
    "stage:ppo_rollout": ("benchmarks.bench_stages", {"only": ("ppo_rollout",)}),
    "stage:ppo_train": ("benchmarks.bench_stages", {"only": ("ppo_train",)}),
    "stage:ppo_step": ("benchmarks.bench_ppo_step", {}),
}


def select(filter_: str | None, stages: bool) -> list[str]:
    """Benchmark names to run: those containing one of the comma-separated substrings of filter_."""
    names = [n for n in BENCHMARKS if stages or not n.startswith("stage:")]
    if filter_:
        subs = [s.strip().lower() for s in filter_.split(",") if s.strip()]
        names = [n for n in names if any(s in n.lower() for s in subs)]
    return names


def error_row(name: str, dtype: torch.dtype, exc: BaseException) -> Row:
    """A benchmark that raised: FAIL, except running out of memory on a big case (skipped)."""
    oom = isinstance(exc, torch.OutOfMemoryError)
    status = "skipped: out of memory" if oom else f"FAIL (error: {type(exc).__name__}: {str(exc)[:200]})"
    nan = float("nan")
    return Row(op=name, case="-", dtype=str(dtype).replace("torch.", ""), mode="-", provider="-",
               median_ms=nan, p20_ms=nan, p80_ms=nan, max_abs_err=nan, max_rel_err=nan, status=status)


def run_benchmark(name: str, device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None):
    """(rows, skipped notes) of one registered benchmark; an exception becomes an error row."""
    module, kwargs = BENCHMARKS[name]
    try:
        return importlib.import_module(module).run(device, dtype, quick, reps, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as a row, the suite goes on
        traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return [error_row(name, dtype, exc)], []


def run_suite(names: list[str], device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None,
              progress: bool = True) -> tuple[list[Row], list[str]]:
    from tqdm import tqdm

    rows, skipped = [], []
    bar = tqdm(names, desc="bench", unit="benchmark", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    _common.PROGRESS = lambda op, case, mode: bar.set_postfix_str(f"{op} {case} {mode}", refresh=True)
    try:
        for name in bar:
            bar.set_postfix_str(name, refresh=True)
            r, s = run_benchmark(name, device, dtype, quick, reps)
            rows += r
            skipped += [f"{name}: {note}" for note in s]
    finally:
        _common.PROGRESS = None
        bar.close()
    return rows, sorted(set(skipped))


# ----------------------------------------------------------------------------- outputs


def case_size(case: str) -> float:
    """The problem size a case label stands for: the product of its numbers ("B=16 T=128" -> 2048)."""
    nums = [int(x) for x in re.findall(r"=(\d+)", case)]
    return float(math.prod(nums)) if nums else float("nan")


def is_stage(row: Row) -> bool:
    return row.op.startswith("stage:")


def stage_table(rows: list[Row]) -> str:
    head = ["stage", "model", "provider", "median ms", "p20-p80 ms", "throughput", "speed-up", "peak MB",
            "mem ratio", "max rel err", "status"]
    lines = [head]
    for r in rows:
        tput = r.extra.get("throughput")
        lines.append([r.op, r.case, r.provider, f"{r.median_ms:.4g}", f"{r.p20_ms:.3g}-{r.p80_ms:.3g}",
                      "" if tput is None else f"{tput:.4g} {r.extra.get('unit', '')}", f"{r.speedup:.2f}x",
                      "" if r.peak_mem_mb != r.peak_mem_mb else f"{r.peak_mem_mb:.1f}",
                      "" if r.mem_ratio != r.mem_ratio else f"{r.mem_ratio:.2f}", f"{r.max_rel_err:.2e}", r.status])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(lines[0]), sep] + [fmt(line) for line in lines[1:]])


def plot_op(rows: list[Row], op: str, path: str, title: str) -> bool:
    """Speed-up and memory ratio against the reference vs problem size, one line per provider and
    mode (the reference, 1.0 by definition, left out). False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = [r for r in rows if r.op == op and r.status == "ok" and r.speedup == r.speedup and r.speedup != 1.0]
    if not sub:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (key, label), ax in zip((("speedup", "speed-up over reference (x)"),
                                 ("mem_ratio", "peak memory / reference's")), axes):
        for series in dict.fromkeys((r.provider, r.mode) for r in sub):
            pts = sorted((case_size(r.case), getattr(r, key), r.case) for r in sub if (r.provider, r.mode) == series)
            pts = [p for p in pts if p[1] == p[1]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{series[0]} ({series[1]})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("problem size (product of the case's dimensions)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(rows: list[Row], skipped: list[str], device: torch.device, out_dir: str, args_dict: dict,
                  elapsed_s: float, plot: bool = True) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    meta = metadata(device) | {"dtype": args_dict.get("dtype"), "quick": args_dict.get("quick"),
                               "elapsed_s": round(elapsed_s, 1), "command": args_dict.get("command")}
    records = [asdict(r) for r in rows]
    paths = {"csv": os.path.join(out_dir, "results.csv"), "json": os.path.join(out_dir, "results.json"),
             "md": os.path.join(out_dir, "report.md")}
    with open(paths["csv"], "w", newline="") as f:
        cols = list(Row.__dataclass_fields__) if not records else list(records[0])
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for rec in records:
            writer.writerow(rec | {"extra": json.dumps(rec["extra"], default=str)})
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "rows": records, "skipped": skipped}, f, indent=1, default=str)
    failed = [r for r in rows if r.status.startswith("FAIL")]
    with open(paths["md"], "w") as f:
        f.write(f"# rlhf_fast benchmark report: {device_name(device)}\n\n")
        f.write("\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n\n")
        f.write(f"**{'FAIL' if failed else 'PASS'}**: {len(rows)} rows, {len(failed)} FAIL. Errors are against the "
                "fp32 reference; speed-up and memory ratio against the eager PyTorch reference of the same case.\n\n")
        for op in dict.fromkeys(r.op for r in rows if not is_stage(r)):
            f.write(f"## {op}\n\n" + format_table([r for r in rows if r.op == op]) + "\n\n")
            png = f"{op}.png"
            if plot and plot_op(rows, op, os.path.join(out_dir, png), f"{op} on {device_name(device)}"):
                paths[op] = os.path.join(out_dir, png)
                f.write(f"![{op}]({png})\n\n")
        stage_rows = [r for r in rows if is_stage(r)]
        if stage_rows:
            f.write("## Training stages\n\nOne timed call = one optimizer step (SFT, RM, PPO training), one "
                    "batch of generation (PPO rollout) or one whole PPO iteration (ppo_step: rollout, experience, "
                    "updates; throughput = response tokens / iteration time); rlhf_fast ops against the "
                    "full-logits / reference ops.\n\n")
            f.write(stage_table(stage_rows) + "\n\n")
        if skipped:
            f.write("## Not run\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n")
    return paths


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Every rlhf_fast kernel against its PyTorch reference "
                                "(errors, time, memory), then the training stages. Exit status 1 on any FAIL.")
    p.add_argument("--filter", default=None, metavar="SUBSTR",
                   help="run only benchmarks whose name contains SUBSTR (comma-separated: any of them); "
                        "names: " + ", ".join(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="small sweep, few repetitions (the CI correctness gate)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="kernel input dtype (stages: fp32 weights, bf16 autocast on GPU)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>)")
    p.add_argument("--no-stages", action="store_true", help="kernels only")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per provider (default: per benchmark)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile references "
                   "(they are left out on CPU under --quick anyway: compile time)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is much steadier on a loaded small machine)")
    p.add_argument("--no-plot", action="store_true", help="no PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the benchmarks the options select, run nothing")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    args = build_parser(prog).parse_args(argv)
    names = select(args.filter, not args.no_stages)
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        print(f"{prog}: --filter {args.filter!r} matches none of: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    _common.COMPILE = not args.no_compile
    t0 = time.perf_counter()
    try:
        rows, skipped = run_suite(names, device, dtype, args.quick, args.reps, progress=not args.no_progress)
    finally:
        _common.COMPILE = True
    elapsed = time.perf_counter() - t0
    kernel_rows = [r for r in rows if not is_stage(r)]
    stage_rows = [r for r in rows if is_stage(r)]
    if kernel_rows:
        print(format_table(kernel_rows))
    if stage_rows:
        print(stage_table(stage_rows))
    for note in skipped:
        print(f"not run: {note}")
    out_dir = args.out or os.path.join(_common.RESULTS_DIR, device_slug(device))
    paths = write_outputs(rows, skipped, device, out_dir, vars(args) | {"command": " ".join([prog] + (argv or sys.argv[1:]))},
                          elapsed, plot=not args.no_plot)
    print(f"wrote {out_dir}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    failed = [r for r in rows if r.status.startswith("FAIL")]
    print(f"{len(rows)} rows in {elapsed:.0f} s: " + (f"{len(failed)} FAILED" if failed else "all within tolerance"))
    return 1 if failed else 0
