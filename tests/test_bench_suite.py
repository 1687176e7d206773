"""The benchmark suite's own logic: error measurement, FAIL on a wrong kernel (exit status 1), the
filter, the files it writes, and `rlhf-fast bench` finding the suite from the source checkout."""

import json
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import _common, bench_gae, suite  # noqa: E402
from benchmarks._common import errors  # noqa: E402
from rlhf_fast import ops  # noqa: E402

TINY_GAE = [(4, 8), (3, 5)]


@pytest.fixture
def tiny_gae(monkeypatch):
    """GAE on two tiny shapes, so a suite run takes well under a second."""
    monkeypatch.setattr(bench_gae, "shapes", lambda device, quick: TINY_GAE)


def run_cli(argv):
    return suite.main(argv + ["--device", "cpu", "--no-progress", "--reps", "2", "--no-compile"])


def test_errors_known_tensors():
    ref = torch.tensor([1.0, -4.0, 2.0])
    out = torch.tensor([1.0, -4.5, 2.25])
    abs_err, rel_err = errors(out, ref)
    assert abs_err == pytest.approx(0.5)
    assert rel_err == pytest.approx(0.5 / 4.0)  # relative to max |ref|
    # tuples: the worst tensor; None entries skipped
    abs_err, rel_err = errors((out, None, torch.zeros(2)), (ref, torch.ones(3), torch.full((2,), 0.1)))
    assert abs_err == pytest.approx(0.5) and rel_err == pytest.approx(1.0)
    assert errors(torch.ones(3), torch.ones(4)) == (math.inf, math.inf)  # shape mismatch


def test_errors_nan_handling():
    ref = torch.tensor([1.0, float("nan"), 2.0])
    assert errors(ref.clone(), ref) == (0.0, 0.0)  # NaN where the reference has NaN: agreement
    abs_err, rel_err = errors(torch.tensor([1.0, 0.0, float("nan")]), ref)
    assert math.isinf(abs_err) and math.isinf(rel_err)  # NaN where the reference has a number: a failure


def test_select_filter():
    assert suite.select("gae", stages=True) == ["gae"]
    assert suite.select("STAGE:", stages=True) == [n for n in suite.BENCHMARKS if n.startswith("stage:")]
    assert suite.select("stage", stages=False) == []
    assert suite.select("whiten,ranking", stages=True) == ["masked_whiten", "ranking_loss"]
    assert suite.select(None, stages=False) == [n for n in suite.BENCHMARKS if not n.startswith("stage:")]
    assert run_cli(["--filter", "no-such-kernel"]) == 2


def test_suite_passes_and_writes_outputs(tiny_gae, tmp_path, capsys):
    assert run_cli(["--filter", "gae", "--out", str(tmp_path)]) == 0
    for name in ("results.csv", "results.json", "report.md", "gae.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "results.json").read_text())
    assert {"device", "torch", "git_commit", "date"} <= set(data["meta"])
    assert {r["op"] for r in data["rows"]} == {"gae"}  # the filter ran GAE only
    assert {r["case"] for r in data["rows"]} == {f"B={b} T={t}" for b, t in TINY_GAE}
    assert all(r["status"] == "ok" for r in data["rows"])
    assert "PASS" in (tmp_path / "report.md").read_text()
    assert "all within tolerance" in capsys.readouterr().out


def test_wrong_kernel_fails(tiny_gae, tmp_path, monkeypatch, capsys):
    real = ops.gae

    def perturbed(*args, backend="auto", **kwargs):
        adv, ret = real(*args, backend=backend, **kwargs)
        if backend != "torch":  # the kernel backends only: the reference stays right
            adv = adv + 1e-3
        return adv, ret

    monkeypatch.setattr(ops, "gae", perturbed)
    assert run_cli(["--filter", "gae", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    bad = [r for r in rows if r["provider"].startswith("rlhf_fast:")]
    assert bad and all(r["status"].startswith("FAIL") for r in bad)
    assert all(r["status"] == "ok" for r in rows if r["provider"].startswith("torch:"))
    assert "FAIL" in (tmp_path / "report.md").read_text()
    assert "FAILED" in capsys.readouterr().out


def test_benchmark_that_raises_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(bench_gae, "run", broken)
    assert run_cli(["--filter", "gae", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows[0]["status"].startswith("FAIL (error: RuntimeError: kernel exploded")


def test_every_benchmark_has_the_uniform_run_signature():
    import importlib
    import inspect

    for name, (module, kwargs) in suite.BENCHMARKS.items():
        params = inspect.signature(importlib.import_module(module).run).parameters
        assert list(params)[:4] == ["device", "dtype", "quick", "reps"], name
        assert set(kwargs) <= set(params), name


def test_progress_hook_reset(tiny_gae, tmp_path):
    run_cli(["--filter", "gae", "--out", str(tmp_path)])
    assert _common.PROGRESS is None


def test_cli_bench_finds_the_suite(tiny_gae, tmp_path, monkeypatch):
    from rlhf_fast import cli

    monkeypatch.chdir(tmp_path)  # not the checkout: the suite is found next to the package
    assert cli.main(["bench", "--filter", "gae", "--device", "cpu", "--no-progress", "--reps", "2",
                     "--no-compile", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").exists()


def test_cli_bench_without_source_tree(tmp_path, monkeypatch, capsys):
    import rlhf_fast
    from rlhf_fast import cli

    fake_pkg = tmp_path / "site-packages" / "rlhf_fast"
    fake_pkg.mkdir(parents=True)
    monkeypatch.setattr(rlhf_fast, "__file__", str(fake_pkg / "__init__.py"))
    assert cli.main(["bench", "--quick"]) == 2
    assert "clone the repository" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one PPO iteration


@pytest.fixture
def tiny_ppo_step(monkeypatch):
    """bench_ppo_step on a 4-prompt, 4-token rollout: a suite run takes a few seconds."""
    from benchmarks import bench_ppo_step

    monkeypatch.setattr(bench_ppo_step, "specs", lambda device, quick: [bench_ppo_step.Spec("tiny", 4, 4, 2, 1)])
    return bench_ppo_step


def test_ppo_step_reference_is_the_reference_and_agrees(tiny_ppo_step, tmp_path, monkeypatch):
    """The torch provider runs the naive references (full-logits log-probs, loop GAE, fp64 whitening),
    the rlhf_fast one none of them, and both iterations give the same metrics."""
    import importlib

    from rlhf_fast.ops import _backend

    calls = []
    for module, name in (("rlhf_fast.ops.fused_linear_logprobs", "fused_linear_logprobs_ref"),
                         ("rlhf_fast.ops.gae", "gae_ref"), ("rlhf_fast.ops.masked_whiten", "masked_whiten_ref")):
        mod = importlib.import_module(module)
        real = getattr(mod, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, os.environ.get(_backend.ENV_VAR)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(mod, name, counted)
    assert run_cli(["--filter", "ppo_step", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["provider"] for r in rows} == set(tiny_ppo_step.PROVIDERS)
    assert all(r["op"] == "stage:ppo_step" and r["status"] == "ok" for r in rows)
    for r in rows:
        e = r["extra"]
        assert e["iteration_tokens_per_s"] > 0 and e["rollout_tokens_per_s"] > 0 and e["train_tokens_per_s"] > 0
        assert r["peak_mem_mb"] > 0
    assert {name for name, _ in calls} == {"fused_linear_logprobs_ref", "gae_ref", "masked_whiten_ref"}
    assert {env for _, env in calls} == {"torch"}  # never under the rlhf_fast provider ("auto")
    fast = next(r for r in rows if r["provider"] == "rlhf_fast:ops")
    assert set(fast["extra"]["backends"].values()) != {"torch"}


def test_ppo_step_wrong_op_fails(tiny_ppo_step, tmp_path, monkeypatch):
    """A GAE kernel that ignores lambda (the reference stays right) makes the iteration FAIL."""
    from rlhf_fast.ops import _backend

    real = ops.gae

    def wrong_lambda(rewards, values, mask, gamma=1.0, lam=0.95, backend="auto"):
        if _backend.resolve(backend, rewards.device, "gae") != "torch":
            lam = 0.5
        return real(rewards, values, mask, gamma=gamma, lam=lam, backend=backend)

    monkeypatch.setattr(ops, "gae", wrong_lambda)
    assert run_cli(["--filter", "ppo_step", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert next(r for r in rows if r["provider"] == "rlhf_fast:ops")["status"].startswith("FAIL")
    assert next(r for r in rows if r["provider"] == "torch:ref_ops")["status"] == "ok"
