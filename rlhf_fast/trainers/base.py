"""What the stage trainers share: set-up (device, seed, threads), the optimizer and schedule, the
deterministic data order, the step loop with gradient accumulation and clipping, metrics, progress,
and checkpoint / resume. A stage subclasses Trainer and fills in setup_models, micro_step, evaluate
and models_to_save.

Under torchrun (see rlhf_fast.distributed) the same loop runs on every rank: the models are
FSDP2-sharded right after setup_models, each rank takes its slice of every global batch, metrics are
averaged over ranks, and only rank 0 logs, shows progress and writes files."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time

import torch
from torch import nn

from rlhf_fast import distributed
from rlhf_fast.config import to_dict
from rlhf_fast.models.loading import resolve_device
from rlhf_fast.trainers.checkpoint import (latest_checkpoint, load_sharded_state, load_trainer_state, save_checkpoint,
                                           set_rng_state)
from rlhf_fast.trainers.metrics import MetricsLogger, plot_metrics

log = logging.getLogger("rlhf_fast")


class BatchOrder:
    """Micro-batch i of a run over n rows: a fresh seeded permutation each epoch, so the data
    position (a single integer) is enough to resume exactly."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        if n_rows < batch_size:
            batch_size = n_rows
        self.n, self.bs, self.seed = n_rows, batch_size, seed
        self.per_epoch = n_rows // batch_size  # drop the ragged tail: every batch has bs rows
        self._perm_epoch, self._perm = -1, None

    def indices(self, i: int) -> list[int]:
        epoch, j = divmod(i, self.per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[j * self.bs : (j + 1) * self.bs]


def cosine_schedule(optimizer, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class _NoMetrics:
    """The metrics logger of ranks other than 0."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    stage = "base"
    progress_keys = ("perf/tokens_per_s",)  # metrics shown on the progress bar
    # global batch sizes (config fields) that each rank takes a slice of; the first is rows_per_batch()
    per_rank_fields = ("optim.batch_size",)

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = distributed.init(resolve_device(cfg.run.device))
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        self.step = 0
        self.data_position = 0
        self.truncated_rows = 0
        self.output_dir = cfg.run.output_dir
        os.makedirs(self.output_dir, exist_ok=True)

    # ---- to be filled in by a stage ----
    def setup_models(self) -> None:
        """Builds self.model (from self.resume_from's weights when resuming)."""
        raise NotImplementedError

    def micro_step(self, rows: list[dict]) -> tuple[torch.Tensor, dict]:
        """Loss (already divided by grad_accum) and metrics of one micro-batch."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def models_to_save(self) -> dict:
        raise NotImplementedError

    def finish(self) -> dict:
        """Work after the last step (e.g. the RM's normalisation); returns final metrics."""
        return {}

    def frozen_models(self) -> list:
        """Models used but not trained (sharded too under torchrun)."""
        return []

    # ---- shared ----
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def setup(self, train_rows: list[dict]) -> None:
        self.train_rows = train_rows
        for field in self.per_rank_fields if distributed.enabled() else ():  # fail before building models
            section, name = field.split(".")
            distributed.per_rank(getattr(getattr(self.cfg, section), name), field)
        self.resume_from = latest_checkpoint(self.output_dir) if self.cfg.run.resume else None
        self.setup_models()  # loads the weights of self.resume_from when set
        self.shard_models()
        o = self.cfg.optim
        groups = []
        for group in self.parameter_groups():
            group = group if isinstance(group, dict) else {"params": group}
            groups.append({**group, "params": [p for p in group["params"] if p.requires_grad]})
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, o.warmup_steps, o.max_steps, o.min_lr_ratio)
        self.order = BatchOrder(len(train_rows), self.rows_per_batch(), self.cfg.run.seed)
        if distributed.enabled():
            self.order = distributed.RankSlice(self.order, self.per_rank_fields[0])
        if self.resume_from:
            self.load_state(self.resume_from)
        elif distributed.rank() > 0:  # identical initial weights, then each rank its own random stream
            seed_everything(self.cfg.run.seed + 7919 * distributed.rank())
        if distributed.is_main():
            self.metrics = MetricsLogger(self.output_dir, resume=self.resume_from is not None)
            if self.resume_from:
                self._trim_metrics()
        else:
            self.metrics = _NoMetrics()

    def shard_models(self) -> None:
        """FSDP2-shards the trained models and the frozen ones (a no-op in a single process)."""
        self.fsdp_models = []
        if not distributed.enabled():
            return
        self.fsdp_models = [distributed.shard_model(m, self.device) for m in self.trained_models().values()]
        offload = bool(getattr(getattr(self.cfg, "ppo", None), "offload_frozen", False))
        for m in self.frozen_models():
            distributed.shard_model(m, self.device, frozen=True, offload=offload)

    def trained_models(self) -> dict:
        """name -> module of every trained model (what the sharded checkpoint holds)."""
        return {name: saver.model for name, saver in self.models_to_save().items()}

    def rows_per_batch(self) -> int:
        return self.cfg.optim.batch_size

    def parameter_groups(self) -> list:
        """Lists of trained parameters, or dicts {"params": [...], "lr": ...} for a group with its own
        learning rate; each group's gradient norm is clipped on its own (so, in PPO, the value loss
        cannot shrink the policy's step)."""
        return [list(self.model.parameters())]

    def _trim_metrics(self) -> None:
        """Drops metric lines past the resumed step (written after the checkpoint, before a crash)."""
        import json

        with open(self.metrics.path) as f:
            lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        self.metrics._file.close()
        with open(self.metrics.path, "w") as f:
            f.writelines(lines)
        self.metrics._file = open(self.metrics.path, "a")

    def train(self) -> dict:
        cfg = self.cfg
        o = cfg.optim
        bar = None
        if cfg.run.progress and distributed.is_main():
            from tqdm.auto import tqdm

            bar = tqdm(total=o.max_steps, initial=self.step, desc=self.stage, dynamic_ncols=True)
        try:
            while self.step < o.max_steps:
                t0 = time.perf_counter()
                row = distributed.reduce_metrics(self.train_step())
                self.step += 1
                dt = time.perf_counter() - t0
                row["perf/step_s"] = dt
                if "tokens" in row:
                    row["perf/tokens_per_s"] = row.pop("tokens") / dt if dt > 0 else 0.0
                if self.device.type == "cuda":
                    row["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and self.step < o.max_steps:
                    row.update(self.evaluate())
                self.metrics.log(self.step, row)
                if bar is not None:
                    bar.update(1)
                    if self.step % max(1, cfg.run.log_every) == 0 or self.step == o.max_steps:
                        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in row.items()
                                         if k in self.progress_keys})
                if cfg.run.save_every and self.step % cfg.run.save_every == 0 and self.step < o.max_steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        final = {**self.evaluate(), **self.finish()}
        final["data/truncated_rows"] = truncated = int(distributed.all_reduce_sum(self.truncated_rows))
        if truncated and distributed.is_main():
            log.warning("%s: %d rows were longer than data.max_length=%d and were truncated", self.stage,
                        truncated, cfg.data.max_length)
        self.metrics.log(self.step, final)
        self.save()
        self.metrics.close()
        if distributed.is_main():
            plot_metrics(self.metrics.path, os.path.join(self.output_dir, "curves.png"), title=f"{self.stage} training")
        return final

    def train_step(self) -> dict:
        """One optimizer step over grad_accum micro-batches; returns its metrics (with "tokens")."""
        o = self.cfg.optim
        self.model.train()
        totals: dict = {}
        tokens = 0
        for micro in range(o.grad_accum):
            rows = [self.train_rows[i] for i in self.order.indices(self.data_position)]
            self.data_position += 1
            # under FSDP: gradients are reduced across ranks only in the last micro-batch's backward
            sync = micro == o.grad_accum - 1 or o.grad_reduce_every_micro_batch
            with distributed.gradient_sync(self.fsdp_models, sync=sync):
                with self.autocast():
                    loss, metrics = self.micro_step(rows)
                loss.backward()
            tokens += metrics.pop("tokens", 0)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / o.grad_accum
        grad_norm = self.optimizer_step()
        self.scheduler.step()
        return {**totals, "optim/lr": self.scheduler.get_last_lr()[0], "optim/grad_norm": grad_norm, "tokens": tokens}

    def optimizer_step(self) -> float:
        """Clips each parameter group's gradient norm, steps, zeroes; returns the first group's
        norm before clipping. Under FSDP the parameters are DTensor shards and clip_grad_norm_
        computes the norm over all ranks' shards."""
        clip = self.cfg.optim.grad_clip
        norms = [float(torch.nn.utils.clip_grad_norm_(g["params"], clip if clip > 0 else float("inf")))
                 for g in self.optimizer.param_groups]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms[0]

    def extra_state(self) -> dict:
        """Stage-specific state saved with the checkpoint (e.g. PPO's KL controller)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def save(self) -> str:
        """Every rank calls it (the sharded models are gathered to rank 0, which writes)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        savers = self.models_to_save()
        full = {name: distributed.full_state_dict(saver.model) for name, saver in savers.items()}
        model_state, optim_state = get_state_dict(nn.ModuleDict(self.trained_models()), self.optimizer)
        state = {"scheduler": self.scheduler.state_dict(), "data_position": self.data_position,
                 "truncated_rows": int(distributed.all_reduce_sum(self.truncated_rows)),
                 "world_size": distributed.world_size(), "config": to_dict(self.cfg), "extra": self.extra_state()}
        path = save_checkpoint(self.output_dir, self.step, savers, state, full_state_dicts=full,
                               sharded_state={"model": model_state, "optim": optim_state})
        if distributed.is_main():
            self.export_final(path)
        distributed.barrier()
        return path

    def export_final(self, checkpoint: str) -> None:
        """Keeps `<output_dir>/model` pointing at the newest weights for the next stage."""
        import shutil

        for name in self.models_to_save():
            src = os.path.join(checkpoint, name)
            dst = os.path.join(self.output_dir, name)
            tmp = dst + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)

    def load_state(self, checkpoint: str) -> None:
        state = load_trainer_state(checkpoint)
        if "optimizer" in state:  # written before checkpoints had a sharded part (single process only)
            self.optimizer.load_state_dict(state["optimizer"])
        else:  # saved at any world size, loaded at this one
            load_sharded_state(checkpoint, nn.ModuleDict(self.trained_models()), self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.data_position = state["data_position"]
        self.truncated_rows = state.get("truncated_rows", 0) if distributed.is_main() else 0  # summed over ranks
        rngs = state.get("rng_per_rank")
        if distributed.enabled():
            if rngs and distributed.rank() < len(rngs):
                set_rng_state(rngs[distributed.rank()])
            elif distributed.rank() > 0:  # more ranks than when saved: a fresh stream per rank and step
                seed_everything(self.cfg.run.seed + 7919 * distributed.rank() + 104729 * self.step)
        self.load_extra_state(state.get("extra", {}))
