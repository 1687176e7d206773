"""Data-parallel training on many GPUs (one node or several) with torchrun and FSDP2.

    torchrun --nproc_per_node=8 -m rlhf_fast.cli sft --config 1b ...

Without torchrun's environment (or with WORLD_SIZE=1) no process group is created and every helper
here is the identity, so a single-process run is exactly what it was before this module existed.

With WORLD_SIZE > 1:

- Each process joins the process group torchrun describes (NCCL for CUDA tensors plus gloo for
  CPU ones; gloo alone on CPU machines) and uses GPU LOCAL_RANK.
- Models are sharded with FSDP2 (`fully_shard`): every transformer block (the classes in the
  Hugging Face model's `_no_split_modules`) is one unit, the model is the root unit (embeddings,
  final norm, LM head or reward head). On GPU the all-gathered parameters are bf16 and gradients
  are reduced in fp32 (`MixedPrecisionPolicy`); the sharded master weights and Adam states stay
  fp32. On CPU (gloo; used by the tests) everything is fp32. Frozen models (PPO's reference and
  reward model) are sharded the same way, stored in bf16 on GPU (what their forward computes in
  anyway), and kept in CPU memory with FSDP2's `CPUOffloadPolicy` when `ppo.offload_frozen` is set.
- The data is sharded by rank: each rank takes its contiguous slice of the global batch, so the
  global batch (`optim.batch_size`, `rollout.batch_size`, `ppo.minibatch_size`) means the same at
  any world size and must be divisible by it. Means over tokens (or prompts) are taken over the
  global batch: a rank scales its local mean by `global_share(count)`, because FSDP averages the
  gradients over ranks.
- Every rank builds the same initial weights (same seed), then ranks r > 0 reseed (seed + 7919 r)
  so that their samples and dropout differ. Evaluation runs on every rank over the whole held-out
  set (the same numbers everywhere: every rank must run the same sharded forwards anyway).
- Metrics are averaged over ranks; only rank 0 logs, shows progress and writes files. Checkpoints:
  see rlhf_fast.trainers.checkpoint (DCP shards from every rank, HF folders gathered to rank 0).

The fused log-prob path and FSDP2. `sft_loss` and PPO's `response_logprobs` run
`model.get_decoder()` and then use `model.get_output_embeddings().weight` directly (so the
(tokens x vocabulary) logits never exist). That bypasses the root module's forward, so FSDP would
neither gather the root's own parameters (embeddings, final norm, LM head) nor reduce their
gradients. `root_forward` (a decorator on those functions) runs the whole function as a forward of
the root module instead (`register_fsdp_forward_method` on a one-line method): FSDP's pre-forward
gathers the root's parameters, the LM head weight seen by the fused op is the full (V, H) matrix,
the blocks run under the same iteration as in a plain `model(...)` call, and the backward
reduce-scatters the head's gradient like any other. One all-gather of the head per call; the
vocabulary-parallel alternative (a cross-rank log-sum-exp on the head's shard) would avoid
materialising the full head but needs a second fused kernel contract; not done.

Generation under FSDP2. `generate` is registered as a forward method too, and while it runs the
blocks are not resharded after their forward: the first decoding step gathers every unit once,
the remaining steps run on full parameters without any collective, and everything is resharded
when `generate` returns. So ranks may stop decoding after different numbers of steps (their
prompts differ) without deadlocking, and decoding does not all-gather the model once per token.
The price is the full (bf16) model resident on each GPU during the rollout.

Forward passes without gradients (rollout scoring, evaluation) reshard the root afterwards, so no
gathered copy outlives them and in-place edits of parameters after them (the reward model's bias
offset) reach the sharded weights.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
import warnings

import torch
from torch import nn

_STATE = {"world": 1, "rank": 0, "local_rank": 0, "mesh": None, "owns_group": False}


# ---- process group ----

def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher setting its variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Joins torchrun's process group (once per process) and returns this rank's device; returns
    `device` untouched, creating nothing, in a single process."""
    if not launched_by_torchrun():
        return device
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {var} is not set: launch with torchrun "
                               "(torchrun --nproc_per_node=N -m rlhf_fast.cli <stage> ...)")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: "
                               "--nproc_per_node must not exceed the GPUs per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo")
        _STATE["owns_group"] = True
    world = dist.get_world_size()
    if _STATE["mesh"] is None or _STATE["mesh"].device_type != device.type:
        _STATE["mesh"] = init_device_mesh(device.type, (world,))
    _STATE.update(world=world, rank=dist.get_rank(), local_rank=local_rank)
    return device


def shutdown() -> None:
    """Destroys the process group this module created (at the end of a command)."""
    if _STATE["owns_group"]:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _STATE.update(world=1, rank=0, local_rank=0, mesh=None, owns_group=False)


def enabled() -> bool:
    return _STATE["world"] > 1


def world_size() -> int:
    return _STATE["world"]


def rank() -> int:
    return _STATE["rank"]


def is_main() -> bool:
    """Rank 0 (the only process in a single-process run): logs, shows progress, writes files."""
    return _STATE["rank"] == 0


def barrier() -> None:
    if enabled():
        import torch.distributed as dist

        dist.barrier()


# ---- data sharding ----

def per_rank(n: int, field: str) -> int:
    """n / world_size, with an error naming the config field when it does not divide."""
    w = world_size()
    if n % w:
        raise ValueError(f"{field}={n} is not divisible by the world size {w}: each rank takes {field} / world size "
                         f"rows of the global batch; use a multiple of {w}")
    return n // w


def rank_slice(items: list, field: str) -> list:
    """This rank's contiguous slice of a global batch (the whole batch in a single process)."""
    if not enabled():
        return items
    n = per_rank(len(items), field)
    return items[rank() * n : (rank() + 1) * n]


class RankSlice:
    """Wraps a batch order: `indices(i)` is this rank's slice of global batch i."""

    def __init__(self, order, field: str):
        self.order, self.field = order, field
        per_rank(order.bs, field)  # fail at set-up, not at the first step

    def indices(self, i: int) -> list[int]:
        return rank_slice(self.order.indices(i), self.field)


# ---- reductions ----

def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_sum(value: float) -> float:
    return _all_reduce([float(value)])[0] if enabled() else value


def global_share(count: float) -> float:
    """Factor that turns this rank's mean over `count` items into its part of the mean over the
    global batch (all ranks' items), given that FSDP averages gradients over ranks:
    world_size * count / total_count. Exactly 1.0 in a single process."""
    if not enabled():
        return 1.0
    total = all_reduce_sum(float(count))
    return world_size() * float(count) / total if total > 0 else 0.0


SUMMED_METRICS = ("tokens", "data/truncated_rows")


def reduce_metrics(metrics: dict) -> dict:
    """Means over ranks (sums for token counts and throughputs); the same on every rank. Every rank
    must pass the same keys."""
    if not enabled():
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) or torch.is_tensor(v))
    summed = [k in SUMMED_METRICS or k.endswith("tokens_per_s") for k in keys]
    check = _all_reduce([float(len(keys)), -float(len(keys))], op="max")
    if check[0] != -check[1]:
        raise RuntimeError(f"ranks log different metric keys (this rank: {keys})")
    totals = _all_reduce([float(metrics[k]) for k in keys])
    out = dict(metrics)
    for k, s, v in zip(keys, summed, totals):
        out[k] = v if s else v / world_size()
    return out


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks (in rank order) along dim 0 of same-shaped tensors; x itself in a
    single process."""
    if not enabled():
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_object(obj) -> list:
    if not enabled():
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ops.masked_whiten over the global batch: mean and biased variance over the masked elements
    of every rank (one all-reduce of sum, sum of squares and count, in fp64). In a single process
    it is ops.masked_whiten itself."""
    from rlhf_fast import ops

    if not enabled():
        return ops.masked_whiten(x, mask, eps=eps)
    m = mask.bool()
    xd = torch.where(m, x.double(), 0.0)
    s, ss, n = _all_reduce([float(xd.sum()), float((xd * xd).sum()), float(m.sum())])
    if n == 0:
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    mean = s / n
    var = max(ss / n - mean * mean, 0.0)
    return torch.where(m, (xd - mean) / (var + eps) ** 0.5, 0.0).float()


# ---- FSDP2 ----

_CALL = "_rlhf_fast_fsdp_call"


def root_forward(fn):
    """Decorator for functions `fn(model, ...)` that use a model's submodules and parameters
    directly instead of calling `model(...)` (the fused log-prob path). On an FSDP2-sharded model
    `fn` runs as a forward of the root module (see the module docstring); otherwise it is called
    as is."""

    @functools.wraps(fn)
    def run(model, *args, **kwargs):
        call = getattr(model, _CALL, None)
        if call is None:
            return fn(model, *args, **kwargs)
        with warnings.catch_warnings():
            # FSDP warns about view outputs (an in-place op on them would skip its backward hook);
            # the callers here only read them.
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
            return call(fn, *args, **kwargs)

    return run


def _block_classes(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks: Hugging Face's `_no_split_modules` of every
    PreTrainedModel inside `model` (e.g. LlamaDecoderLayer)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard_model(model: nn.Module, device: torch.device, frozen: bool = False, offload: bool = False) -> nn.Module:
    """FSDP2: one unit per transformer block, then the root; bf16 compute / fp32 reduction on GPU.
    A frozen model is stored in bf16 on GPU (its forward computes in bf16 either way) and, with
    offload, kept in CPU memory. Registers `generate`, `token_scores` and the `root_forward` entry
    as forward methods. In place; returns the model. A no-op in a single process."""
    if not enabled():
        return model
    from torch.distributed.fsdp import (CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy,
                                        fully_shard, register_fsdp_forward_method)

    gpu = device.type == "cuda"
    # fp32 master weights (model.dtype=auto): gathered and computed in bf16 on GPU; fp32 on CPU
    param_dtype = torch.bfloat16 if gpu and next(model.parameters()).dtype == torch.float32 else None
    if frozen and param_dtype is not None:  # no master weights to keep: store what the forward uses
        model.to(param_dtype)
        param_dtype = None
    kw = {"mesh": _STATE["mesh"], "offload_policy": CPUOffloadPolicy() if offload and gpu else OffloadPolicy()}
    blocks = _block_classes(model)
    units = [m for m in model.modules() if type(m).__name__ in blocks]
    if not units:
        warnings.warn(f"{type(model).__name__}: no transformer block classes found (_no_split_modules); "
                      "sharding the whole model as one FSDP unit")
    for unit in units:
        fully_shard(unit, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32), **kw)
    # The root's inputs are token ids and fp32 targets such as the reference log-probs: never cast them.
    fully_shard(model, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                      cast_forward_inputs=False), **kw)

    # forward entries besides forward(): the root_forward functions, the value model's per-token scores
    setattr(model, _CALL, types.MethodType(lambda self, fn, *a, **k: fn(self, *a, **k), model))
    for name in (_CALL, "token_scores"):
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
            _reshard_root_after_no_grad(model, name)
    model.register_forward_hook(lambda module, args, out: _reshard_root_if_no_grad(module))
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
        inner = model.generate
        subunits = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]

        @functools.wraps(inner)
        def generate(*args, **kwargs):
            model._rlhf_fast_generating = True  # keep the root gathered between decoding steps too
            for m in subunits:  # gather each block once, at the first decoding step
                m.set_reshard_after_forward(False, recurse=False)
            try:
                return inner(*args, **kwargs)
            finally:
                model._rlhf_fast_generating = False
                for m in subunits:
                    m.set_reshard_after_forward(True, recurse=False)
                    m.reshard()
                model.reshard()

        model.generate = generate
    return model


def _reshard_root_if_no_grad(model) -> None:
    # FSDP keeps the root gathered after its forward, for the backward; without gradients there is none
    if not torch.is_grad_enabled() and not getattr(model, "_rlhf_fast_generating", False):
        model.reshard()


def _reshard_root_after_no_grad(model, name: str) -> None:
    inner = getattr(model, name)

    @functools.wraps(inner)
    def method(*args, **kwargs):
        out = inner(*args, **kwargs)
        _reshard_root_if_no_grad(model)
        return out

    setattr(model, name, method)


@contextlib.contextmanager
def gradient_sync(models: list[nn.Module], sync: bool):
    """Gradient accumulation without redundant communication: with sync=False, FSDP keeps the
    micro-batch's gradients unsharded and local instead of reduce-scattering them. That costs one
    full-size fp32 gradient per model until the last micro-batch (optim.grad_reduce_every_micro_batch
    trades it back for communication)."""
    if not enabled() or sync:
        yield
        return
    for m in models:
        m.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for m in models:
            m.set_requires_gradient_sync(True)


def full_state_dict(model: nn.Module) -> dict | None:
    """Every rank calls it; rank 0 gets the full (unsharded) state dict on the CPU, the others an
    empty dict. None in a single process (save the model's own tensors)."""
    if not enabled():
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
