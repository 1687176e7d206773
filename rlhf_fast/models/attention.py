"""Which attention kernel the models use: flash-attn 2 when it is installed and the GPU supports it
(Ampere or newer, fp16/bf16), else PyTorch SDPA (whose flash backend is used on such GPUs)."""

from __future__ import annotations

import importlib.util

import torch

CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")


def flash_attn_status(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when flash_attention_2 can run, else why not."""
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install 'rlhf_fast[flash]')"
    if device.type != "cuda" or not torch.cuda.is_available():
        return "flash-attn needs a CUDA GPU"
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "flash-attn needs an Ampere (sm_80) or newer GPU"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs fp16/bf16 weights, got {dtype}"
    return None


def choose_attn_implementation(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    if requested not in CHOICES:
        raise ValueError(f"model.attn_implementation must be one of {CHOICES}, got {requested!r}")
    if requested == "flash_attention_2":
        why = flash_attn_status(device, dtype)
        if why:
            raise ValueError(f"attn_implementation='flash_attention_2' is unavailable: {why}")
        return requested
    if requested == "auto":
        return "flash_attention_2" if flash_attn_status(device, dtype) is None else "sdpa"
    return requested
