"""Checkpoints that a crash can never leave half-written: everything goes to `<dir>.tmp`, which is
renamed to its final name only when complete; `latest` is replaced atomically after that.

Layout of `<output_dir>/checkpoints/step_<N>/`: one `save_pretrained` folder per model (safetensors,
loadable by transformers) and `trainer_state.pt` (optimizer, scheduler, RNG states, step, data
position), loaded with `weights_only=True` (no pickle code execution).
"""

from __future__ import annotations

import os
import random
import shutil

import torch


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str, step: int, models: dict, trainer_state: dict, keep: int = 2) -> str:
    """Writes models (name -> object with save_pretrained) and trainer_state; returns the folder."""
    root = os.path.join(output_dir, "checkpoints")
    final = os.path.join(root, f"step_{step:07d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, model in models.items():
        model.save_pretrained(os.path.join(tmp, name))
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = os.path.join(root, "latest.tmp")
    with open(latest_tmp, "w") as f:
        f.write(os.path.basename(final))
    os.replace(latest_tmp, os.path.join(root, "latest"))
    _prune(root, keep)
    return final


def _prune(root: str, keep: int) -> None:
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def latest_checkpoint(output_dir: str) -> str | None:
    pointer = os.path.join(output_dir, "checkpoints", "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(output_dir, "checkpoints", f.read().strip())
    return path if os.path.isdir(path) else None


def load_trainer_state(checkpoint: str) -> dict:
    state = torch.load(os.path.join(checkpoint, "trainer_state.pt"), map_location="cpu", weights_only=True)
    set_rng_state(state["rng"])
    return state
