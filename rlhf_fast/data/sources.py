"""Where a stage's rows come from: a JSONL file / `datasets` source named in the config, or the
shipped synthetic task (generated from the run's seed; nothing is downloaded)."""

from __future__ import annotations

import logging
import random

from rlhf_fast.data.jsonl import read_rows

log = logging.getLogger("rlhf_fast")


def synthetic_rows(kind: str, split: str, n: int, k: int = 4, seed: int = 0, verbose_demos: float = 0.0) -> list[dict]:
    """Rows of the synthetic task: sft (with demonstrations, `verbose_demos` of them with a
    preamble), ranking (K candidates ranked by the gold labeler; ties share a rank) or prompt rows,
    from the train or the held-out eval split."""
    from rlhf_fast.data.synthetic import SyntheticTask

    task = SyntheticTask(seed=seed, verbose_demos=verbose_demos)
    examples = task.sample(n, split=split)
    if kind == "prompt":
        return [{"prompt": ex["prompt"]} for ex in examples]
    if kind == "sft":
        return [{"prompt": ex["prompt"], "response": task.sft_demonstration(ex)} for ex in examples]
    if kind == "ranking":
        rng = random.Random(seed * 7919 + (0 if split == "train" else 1))
        rows = []
        for ex in examples:
            responses = task.candidates(ex, k, rng)
            ranks, _ = task.rank(ex["prompt"], responses)  # ties share a rank
            if len(set(ranks)) >= 2:  # all-equal rankings hold no comparison
                rows.append({"prompt": ex["prompt"], "responses": responses, "ranks": ranks})
        return rows
    raise ValueError(f"unknown row kind {kind!r}")


def load_rows(path: str | None, kind: str, data_cfg, split: str, seed: int) -> list[dict]:
    """Rows from `path`, or from the synthetic task when path is None."""
    if path is None:
        n = data_cfg.synthetic_train if split == "train" else data_cfg.synthetic_eval
        return synthetic_rows(kind, split, n, k=data_cfg.synthetic_k, seed=seed, verbose_demos=data_cfg.synthetic_verbose_demos)
    report = read_rows(path, kind, skip_bad_rows=data_cfg.skip_bad_rows)
    if report.skipped:
        log.warning("%s: skipped %d bad rows; first: %s", path, report.skipped, "; ".join(report.first_errors))
    return report.rows
