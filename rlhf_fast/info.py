"""`python -m rlhf_fast.info` / `rlhf-fast info`: versions, and which backends can run and why not."""

from __future__ import annotations

import importlib
import platform

import torch


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install should be reported, not crash the report
        return f"import failed: {exc}"


def _attention_choice() -> str:
    """What model.attn_implementation=auto picks for bf16 models on this machine, and why."""
    from rlhf_fast.models.attention import choose_attn_implementation, flash_attn_status

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choice = choose_attn_implementation("auto", device, torch.bfloat16)
    why = flash_attn_status(device, torch.bfloat16)
    return choice + ("" if why is None else f" (flash_attention_2 unavailable: {why})")


def collect() -> dict:
    import rlhf_fast
    from rlhf_fast._ext import EXT_ERROR, cuda_built, ext_available
    from rlhf_fast.ops import available_backends

    devices = {"cpu": torch.device("cpu")}
    if torch.cuda.is_available():
        devices["cuda"] = torch.device("cuda")
    return {
        "versions": {
            "rlhf_fast": rlhf_fast.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch CUDA": torch.version.cuda or "none (CPU build)",
            "triton": _version("triton"),
            "transformers": _version("transformers"),
            "flash_attn": _version("flash_attn"),
        },
        "extension": "built" + (" with CUDA kernels" if cuda_built() else " (CPU kernels only)")
        if ext_available() else f"not available: {EXT_ERROR}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible",
        "attention": _attention_choice(),
        "backends": {name: available_backends(dev) for name, dev in devices.items()},
    }


def report() -> str:
    info = collect()
    lines = ["rlhf_fast environment", ""]
    lines += [f"  {k:<14} {v}" for k, v in info["versions"].items()]
    lines += ["", f"  extension      {info['extension']}", f"  GPU            {info['gpu']}",
              f"  attention      {info['attention']}", ""]
    for device, backends in info["backends"].items():
        lines.append(f"  backends for {device} tensors:")
        for name, why in backends.items():
            lines.append(f"    {name:<7} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
