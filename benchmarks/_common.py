"""What every kernel benchmark shares: side-by-side timing, peak memory, error against the fp32
reference, and the table / CSV / JSON / PNG writers.

Timings are interleaved (each repetition runs every provider once, in turn), so machine noise hits
all providers alike and the speed-up is a ratio measured in one run.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Dense peaks of known GPUs (SXM parts): memory GB/s and bf16 TFLOP/s. Override with
# RLHF_FAST_PEAK_GBPS / RLHF_FAST_PEAK_TFLOPS.
KNOWN_PEAKS = {
    "H100": {"gbps": 3350.0, "tflops": 989.0},
    "H200": {"gbps": 4800.0, "tflops": 989.0},
    "A100": {"gbps": 2039.0, "tflops": 312.0},
}


# torch.compile'd references: on by default; off with the suite's --no-compile, and on CPU under
# --quick (compiling costs ~10-40 s per op on a small CPU and proves nothing about the kernels).
COMPILE = True


def use_compile(device: torch.device, quick: bool) -> bool:
    return COMPILE and not (quick and device.type == "cpu")


COMPILE_SKIPPED = "torch.compile references: --no-compile, or --quick on CPU"


def compiled_reference(ref: Callable, device: torch.device, quick: bool, skipped: list[str], enabled: bool = True):
    """torch.compile(ref) where compiled references run (noting in `skipped` where not), else None."""
    if enabled and use_compile(device, quick):
        return torch.compile(ref)
    skipped.append(COMPILE_SKIPPED)
    return None

# Called as PROGRESS(op, case, mode) after each bench_case (the suite runner's progress bar).
PROGRESS: Callable[[str, str, str], None] | None = None


@dataclass
class Row:
    """One provider on one case."""

    op: str
    case: str
    dtype: str
    mode: str
    provider: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    speedup: float = float("nan")  # reference median / this median
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    peak_mem_mb: float = float("nan")
    mem_ratio: float = float("nan")  # this peak / reference peak
    gbps: float = float("nan")
    frac_of_peak: float = float("nan")
    status: str = "ok"  # ok | FAIL | skipped: <why>
    extra: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_providers(fns: dict[str, Callable[[], object]], device: torch.device, reps: int = 10,
                   warmup: int = 2, max_seconds: float = 20.0) -> dict[str, list[float]]:
    """Milliseconds per call for each provider, interleaved; stops early past max_seconds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds and len(times[name]) >= 3:
            break
    return times


def summarize(samples: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80) of the samples."""
    s = sorted(samples)
    q = lambda p: s[min(len(s) - 1, int(round(p * (len(s) - 1))))]
    return statistics.median(s), q(0.2), q(0.8)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated by one call of fn beyond what was allocated before it, in MB.

    CUDA: the caching allocator's peak. CPU: the profiler's allocation events replayed in order.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        del out
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def errors(out, ref) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|) over all tensors of out vs ref."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    max_abs = max_rel = 0.0
    for o, r in zip(outs, refs):
        if o is None or r is None:
            continue
        o, r = o.detach().double().cpu(), r.detach().double().cpu()
        if o.shape != r.shape:
            return float("inf"), float("inf")
        if o.numel() == 0:
            continue
        diff = (o - r).abs()
        diff = torch.where(torch.isnan(diff) & ~(torch.isnan(o) & torch.isnan(r)), torch.inf, diff.nan_to_num(0.0))
        abs_err = diff.max().item()
        scale = r.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).max().item()
        max_abs = max(max_abs, abs_err)
        max_rel = max(max_rel, abs_err / max(scale, 1e-30))
    return max_abs, max_rel


def device_peaks(device: torch.device) -> dict[str, float]:
    peaks = {"gbps": float("nan"), "tflops": float("nan")}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in KNOWN_PEAKS.items():
            if key in name:
                peaks = dict(val)
    for key, env in (("gbps", "RLHF_FAST_PEAK_GBPS"), ("tflops", "RLHF_FAST_PEAK_TFLOPS")):
        if os.environ.get(env):
            peaks[key] = float(os.environ[env])
    return peaks


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def device_slug(device: torch.device) -> str:
    return "".join(c if c.isalnum() else "-" for c in device_name(device)).strip("-").lower()


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metadata(device: torch.device) -> dict:
    import rlhf_fast

    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "rlhf_fast": rlhf_fast.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


def fill_ratios(rows: list[Row], reference: str) -> None:
    """Speed-up and memory ratio of each row against the `reference` provider of its case."""
    by_case = {}
    for r in rows:
        if r.provider == reference:
            by_case[(r.op, r.case, r.dtype, r.mode)] = r
    for r in rows:
        ref = by_case.get((r.op, r.case, r.dtype, r.mode))
        if ref is None:
            continue
        r.speedup = ref.median_ms / r.median_ms if r.median_ms > 0 else float("nan")
        if ref.peak_mem_mb and ref.peak_mem_mb == ref.peak_mem_mb and ref.peak_mem_mb > 0:
            r.mem_ratio = r.peak_mem_mb / ref.peak_mem_mb


def format_table(rows: list[Row]) -> str:
    head = ["op", "case", "dtype", "mode", "provider", "median ms", "p20-p80 ms", "speed-up",
            "max abs err", "peak MB", "mem ratio", "GB/s (%peak)", "status"]
    lines = [head]
    for r in rows:
        bw = "" if r.gbps != r.gbps else f"{r.gbps:.0f}" + ("" if r.frac_of_peak != r.frac_of_peak else f" ({100 * r.frac_of_peak:.0f}%)")
        lines.append([r.op, r.case, r.dtype, r.mode, r.provider, f"{r.median_ms:.4g}",
                      f"{r.p20_ms:.3g}-{r.p80_ms:.3g}", f"{r.speedup:.2f}x", f"{r.max_abs_err:.2e}",
                      "" if r.peak_mem_mb != r.peak_mem_mb else f"{r.peak_mem_mb:.1f}",
                      "" if r.mem_ratio != r.mem_ratio else f"{r.mem_ratio:.2f}", bw, r.status])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(lines[0]), sep] + [fmt(line) for line in lines[1:]])


def write_results(rows: list[Row], name: str, device: torch.device, out_dir: str | None = None,
                  plot: bool = True) -> dict[str, str]:
    """Writes <name>.csv, <name>.json, <name>.md and <name>.png; returns their paths."""
    out_dir = out_dir or os.path.join(RESULTS_DIR, device_slug(device))
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    records = [asdict(r) for r in rows]
    paths = {"csv": base + ".csv", "json": base + ".json", "md": base + ".md"}
    with open(paths["csv"], "w", newline="") as f:
        cols = list(records[0]) if records else []
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for rec in records:  # extra (throughputs, notes) as one JSON column, as the suite's results.csv
            writer.writerow(rec | {"extra": json.dumps(rec["extra"], default=str)})
    with open(paths["json"], "w") as f:
        json.dump({"meta": metadata(device), "rows": records}, f, indent=1, default=str)
    with open(paths["md"], "w") as f:
        meta = metadata(device)
        f.write(f"# {name}\n\n" + ", ".join(f"{k}: {v}" for k, v in meta.items()) + "\n\n")
        f.write(format_table(rows) + "\n")
    if plot and rows:
        paths["png"] = base + ".png"
        plot_speedups(rows, paths["png"], title=f"{name} on {device_name(device)}")
    return paths


def plot_speedups(rows: list[Row], path: str, title: str) -> None:
    """Grouped bars: speed-up over the reference per case and provider (log scale), one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r.mode for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        sub = [r for r in rows if r.mode == mode and r.status == "ok"]
        cases = list(dict.fromkeys(f"{r.op}\n{r.case}\n{r.dtype}" for r in sub))
        providers = list(dict.fromkeys(r.provider for r in sub))
        width = 0.8 / max(1, len(providers))
        for i, p in enumerate(providers):
            xs, ys = [], []
            for j, c in enumerate(cases):
                for r in sub:
                    if r.provider == p and f"{r.op}\n{r.case}\n{r.dtype}" == c:
                        xs.append(j + i * width)
                        ys.append(r.speedup)
            ax.bar(xs, ys, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, fontsize=7)
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("speed-up over reference (x)")
        ax.set_title(mode)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_case(op: str, case: str, dtype: torch.dtype, mode: str, providers: dict[str, Callable[[], object]],
               expected, device: torch.device, *, tol: float, reference: str, bytes_moved: float = 0.0,
               flops: float = 0.0, reps: int = 10, measure_memory: bool = True) -> list[Row]:
    """Runs each provider once for its output (checked against `expected`: FAIL above `tol`
    relative error), times them side by side, measures peak memory, and returns one Row each with
    speed-ups against the `reference` provider."""
    rows = []
    checked = {}
    for name, fn in list(providers.items()):
        try:
            out = fn()
        except torch.OutOfMemoryError:  # an LLM-sized case a provider cannot hold (the reference, usually)
            providers.pop(name)
            rows.append(Row(op=op, case=case, dtype=str(dtype).replace("torch.", ""), mode=mode, provider=name,
                            median_ms=float("nan"), p20_ms=float("nan"), p80_ms=float("nan"),
                            status="skipped: out of memory"))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        max_abs, max_rel = errors(out, expected)
        checked[name] = (max_abs, max_rel)
        del out
    times = time_providers(providers, device, reps=reps)
    peaks = device_peaks(device)
    for name in providers:
        med, p20, p80 = summarize(times[name])
        max_abs, max_rel = checked[name]
        row = Row(op=op, case=case, dtype=str(dtype).replace("torch.", ""), mode=mode, provider=name,
                  median_ms=med, p20_ms=p20, p80_ms=p80, max_abs_err=max_abs, max_rel_err=max_rel,
                  status="ok" if max_rel <= tol else f"FAIL (rel err {max_rel:.2e} > {tol:.0e})")
        if measure_memory:
            row.peak_mem_mb = peak_memory_mb(providers[name], device)
        if bytes_moved:
            row.gbps = bytes_moved / (med * 1e-3) / 1e9
            row.frac_of_peak = row.gbps / peaks["gbps"]
        if flops:
            row.extra["tflops"] = flops / (med * 1e-3) / 1e12
            row.frac_of_peak = row.extra["tflops"] / peaks["tflops"]
        rows.append(row)
    fill_ratios(rows, reference)
    if PROGRESS is not None:
        PROGRESS(op, case, mode)
    return rows


def kernel_providers(available: dict[str, str | None], make: Callable[[str], Callable[[], object]],
                     device: torch.device) -> tuple[dict[str, Callable[[], object]], list[str]]:
    """rlhf_fast backends that can run on `device` (Triton under the CPU interpreter excluded: it
    is a correctness tool, not a speed one), and a note for each one left out."""
    providers, skipped = {}, []
    for backend, reason in available.items():
        if backend == "torch":
            continue
        if reason is None and backend == "triton" and device.type == "cpu":
            reason = "Triton interpreter (correctness only)"
        if reason is None:
            providers[f"rlhf_fast:{backend}"] = make(backend)
        else:
            skipped.append(f"{backend}: {reason}")
    return providers, skipped


def standard_args(description: str):
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quick", action="store_true", help="small sweep, few repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per provider")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is much steadier on a loaded small machine)")
    return p


def apply_threads(args) -> None:
    """torch.set_num_threads(--threads) when given."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def finish(rows: list[Row], name: str, device: torch.device, args, skipped: list[str]) -> int:
    """Prints the table, writes the results; exit status 1 when any case FAILs."""
    print(format_table(rows))
    for note in sorted(set(skipped)):
        print(f"skipped {note}")
    paths = write_results(rows, name, device, out_dir=args.out, plot=not args.no_plot)
    print("wrote " + ", ".join(paths.values()))
    failed = [r for r in rows if r.status.startswith("FAIL")]
    if failed:
        print(f"{len(failed)} case(s) FAILED")
    return 1 if failed else 0


def simple_main(run, name: str, description: str, argv=None) -> int:
    """The command line of a kernel benchmark whose run(device, dtype, quick, reps) takes no extra options."""
    args = standard_args(description).parse_args(argv)
    apply_threads(args)
    device = pick_device(args.device)
    rows, skipped = run(device, getattr(torch, args.dtype), args.quick, args.reps)
    return finish(rows, name, device, args, skipped)
