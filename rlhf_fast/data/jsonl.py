"""Reading and validating dataset rows. Every bad row gets an error naming the file, the line and
the field; with skip_bad_rows the row is dropped and counted instead.

Row kinds:
  sft      {"prompt": str, "response": str}
  ranking  {"prompt": str, "responses": [str] * K, "ranks": [int] * K}   (0 = best; ties allowed; K >= 2)
           or {"prompt": str, "chosen": str, "rejected": str}           (read as K = 2)
  prompt   {"prompt": str}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

KINDS = ("sft", "ranking", "prompt")


class DataError(ValueError):
    """A malformed dataset row or file."""


@dataclass
class ReadReport:
    rows: list = field(default_factory=list)
    skipped: int = 0
    first_errors: list = field(default_factory=list)  # up to 5 messages of skipped rows


def _text(row: dict, name: str) -> str:
    if name not in row:
        raise DataError(f"field {name!r} is missing")
    value = row[name]
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _nonempty(row: dict, name: str) -> str:
    value = _text(row, name)
    if not value.strip():
        raise DataError(f"field {name!r} is empty")
    return value


def validate_row(row, kind: str) -> dict:
    """The normalised row, or DataError saying which field is wrong."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    prompt = _nonempty(row, "prompt")
    if kind == "prompt":
        return {"prompt": prompt}
    if kind == "sft":
        return {"prompt": prompt, "response": _nonempty(row, "response")}
    if kind != "ranking":
        raise ValueError(f"unknown row kind {kind!r}; choose one of {KINDS}")
    if "responses" not in row and "chosen" in row:
        return {"prompt": prompt, "responses": [_nonempty(row, "chosen"), _nonempty(row, "rejected")], "ranks": [0, 1]}
    if "responses" not in row:
        raise DataError("field 'responses' is missing (or give 'chosen' and 'rejected')")
    responses, ranks = row["responses"], row.get("ranks")
    if not isinstance(responses, list):
        raise DataError(f"field 'responses' must be a list, got {type(responses).__name__}")
    if len(responses) < 2:
        raise DataError(f"field 'responses' needs K >= 2 responses, got {len(responses)}")
    for i, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise DataError(f"field 'responses[{i}]' must be a non-empty string, got {r!r}")
    if ranks is None:
        raise DataError("field 'ranks' is missing")
    if not isinstance(ranks, list) or len(ranks) != len(responses):
        got = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
        raise DataError(f"field 'ranks' must list one rank per response ({len(responses)}), got {got}")
    for i, r in enumerate(ranks):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise DataError(f"field 'ranks[{i}]' must be an integer >= 0 (0 = best), got {r!r}")
    if len(set(ranks)) < 2:
        raise DataError("field 'ranks' ranks every response equal: the row has no comparison")
    return {"prompt": prompt, "responses": list(responses), "ranks": list(ranks)}


def _numbered_rows(path: str):
    """(line number, parsed object or DataError) for a JSONL file or a `datasets` source."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield lineno, DataError(f"invalid JSON ({exc.msg} at column {exc.colno})")
        return
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: no such file (and the `datasets` package, which could load it, is not installed)") from None
    try:
        ds = datasets.load_dataset(path, split="train")
    except Exception as exc:  # datasets raises many types; report the source and the reason
        raise DataError(f"{path}: not a file, and `datasets` could not load it: {exc}") from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def read_rows(path: str, kind: str, skip_bad_rows: bool = False) -> ReadReport:
    """All valid rows of `path` as dicts; bad rows raise DataError('<file>:<line>: ...') or are skipped."""
    report = ReadReport()
    for lineno, obj in _numbered_rows(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            report.rows.append(validate_row(obj, kind))
        except DataError as exc:
            message = f"{path}:{lineno}: {exc}"
            if not skip_bad_rows:
                raise DataError(message + " (set data.skip_bad_rows=true to skip bad rows)") from None
            report.skipped += 1
            if len(report.first_errors) < 5:
                report.first_errors.append(message)
    if not report.rows:
        raise DataError(f"{path}: no valid {kind} rows" + (f" ({report.skipped} bad rows skipped)" if report.skipped else ""))
    return report
