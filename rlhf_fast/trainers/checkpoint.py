"""Checkpoints that a crash can never leave half-written: everything goes to `<dir>.tmp`, which is
renamed to its final name only when complete; `latest` is replaced atomically after that.

Layout of `<output_dir>/checkpoints/step_<N>/`: one `save_pretrained` folder per model (safetensors,
loadable by transformers), `sharded/` (the trained models and the optimizer, written with
torch.distributed.checkpoint: each rank writes its own shards, and any world size, 1 included,
can load them) and `trainer_state.pt` (scheduler, RNG states, step, data position), loaded with
`weights_only=True` (no pickle code execution).

Every rank calls save_checkpoint. Rank 0 creates the temporary folder, writes the unsharded files
(the models gathered to it) and, after a barrier that follows every rank's shards, renames it.
Checkpoints of older versions keep the optimizer in `trainer_state.pt`; they still load.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings

import torch

from rlhf_fast import distributed

SHARDED = "sharded"


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


def save_checkpoint(output_dir: str, step: int, models: dict, trainer_state: dict, keep: int = 2,
                    sharded_state: dict | None = None, full_state_dicts: dict | None = None) -> str:
    """Writes models (name -> object with save_pretrained(path, state_dict=None)), the sharded state
    (a get_state_dict result, saved with DCP) and trainer_state; returns the folder. Every rank calls
    it. full_state_dicts: name -> the full state dict to save instead of the model's own tensors
    (the sharded models gathered to rank 0)."""
    root = os.path.join(output_dir, "checkpoints")
    final = os.path.join(root, f"step_{step:07d}")
    tmp = final + ".tmp"
    rngs = distributed.all_gather_object(rng_state())
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    distributed.barrier()
    if sharded_state is not None:
        import torch.distributed.checkpoint as dcp

        with _single_process_ok():
            dcp.save(sharded_state, checkpoint_id=os.path.join(tmp, SHARDED), no_dist=not distributed.enabled())
    if distributed.is_main():
        for name, model in models.items():
            full = (full_state_dicts or {}).get(name)
            if full is None:
                model.save_pretrained(os.path.join(tmp, name))
            else:
                model.save_pretrained(os.path.join(tmp, name), state_dict=dict(full))  # save_pretrained may pop keys
        state = {**trainer_state, "step": step, "rng": rngs[0]}
        if distributed.enabled():
            state["rng_per_rank"] = rngs
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    distributed.barrier()  # every rank's shards are written
    if distributed.is_main():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = os.path.join(root, "latest.tmp")
        with open(latest_tmp, "w") as f:
            f.write(os.path.basename(final))
        os.replace(latest_tmp, os.path.join(root, "latest"))
        _prune(root, keep)
    distributed.barrier()
    return final


def load_sharded_state(checkpoint: str, module, optimizer) -> None:
    """Loads the DCP model and optimizer state of `checkpoint` into module (the trained models, as
    when saved) and optimizer, resharding to this run's world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=os.path.join(checkpoint, SHARDED), no_dist=not distributed.enabled())
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns that it assumes a single process whenever no process group exists; that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


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
