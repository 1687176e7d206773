import os
import subprocess
import sys

import pytest
import torch

from rlhf_fast.ops import _backend
from tests.conftest import DEVICE, runnable_backends


def test_required_backends_are_present():
    """CI sets RLHF_FAST_REQUIRE_BACKENDS=cpu,triton so a failed build or a missing Triton
    interpreter fails the run instead of silently skipping the kernel tests."""
    required = [b for b in os.environ.get("RLHF_FAST_REQUIRE_BACKENDS", "").split(",") if b]
    reasons = _backend.available_backends(DEVICE)
    missing = {b: reasons.get(b, "unknown backend") for b in required if b not in runnable_backends()}
    assert not missing, f"required backends unavailable: {missing}"


def test_auto_prefers_compiled_kernels_and_never_the_interpreter(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    expected = "cpu" if _backend.why_unavailable("cpu", cpu) is None else "torch"
    assert _backend.resolve("auto", cpu, "op") == expected
    monkeypatch.setattr(_backend, "why_unavailable", lambda b, d: None)  # pretend everything is built
    assert _backend.resolve("auto", cpu, "op", preference={"cpu": ("triton", "cpu")}) == "cpu"


def test_env_var_forces_and_argument_wins(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert _backend.resolve("auto", torch.device("cpu"), "op") == "torch"
    assert _backend.resolve(None, torch.device("cpu"), "op") == "torch"
    if "cpu" in runnable_backends():
        assert _backend.resolve("cpu", torch.device("cpu"), "op") == "cpu"


def test_unavailable_reasons_are_specific(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in _backend.why_unavailable("triton", cpu)
    if not torch.cuda.is_available():
        assert _backend.why_unavailable("cuda", cpu)  # not built or no GPU: some reason
    with pytest.raises(_backend.BackendUnavailable, match="op: backend 'triton' is unavailable"):
        _backend.resolve("triton", cpu, "op")


def test_info_command_lists_backends():
    out = subprocess.run([sys.executable, "-m", "rlhf_fast.info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "triton" in out and "backends for cpu tensors" in out
    for name in ("cpu", "cuda", "triton"):
        assert any(line.strip().startswith(name) for line in out.splitlines())


def test_cli_info():
    from rlhf_fast.cli import main

    assert main(["info"]) == 0
