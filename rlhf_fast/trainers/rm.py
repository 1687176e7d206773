"""Stage 2: the reward model. Each batch element is one prompt with its K ranked responses (K
forward passes, all C(K,2) pairs in the loss, ops.ranking_loss). After training, the head's bias is
shifted so that the SFT demonstrations score mean 0, as in the paper."""

from __future__ import annotations

import os

import torch

from rlhf_fast import ops
from rlhf_fast.data.collate import ranking_batch, sft_batch
from rlhf_fast.data.sources import load_rows
from rlhf_fast.evaluation import ranking_accuracy
from rlhf_fast.models.attention import choose_attn_implementation
from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for, resolve_dtype
from rlhf_fast.models.reward import RewardModel
from rlhf_fast.trainers.base import Trainer
from rlhf_fast.trainers.sft import _WithTokenizer

REWARD_MODEL = "reward_model"


def build_reward_model(model_cfg, tokenizer, device, path: str | None = None) -> RewardModel:
    """From a saved reward model or causal LM folder (a fresh head), or a fresh preset model."""
    path = path or model_cfg.path
    if path is None:
        return RewardModel.from_causal_lm(build_or_load_causal_lm(model_cfg, tokenizer, device))
    dtype = resolve_dtype(model_cfg.dtype, device)
    return RewardModel.from_pretrained(path, device=device, dtype=dtype,
                                       attn_implementation=choose_attn_implementation(model_cfg.attn_implementation, device, dtype),
                                       trust_remote_code=model_cfg.trust_remote_code)


class RMTrainer(Trainer):
    stage = "rm"
    progress_keys = ("loss/rm", "rm/accuracy", "perf/tokens_per_s")

    def setup_models(self) -> None:
        self.tokenizer = load_tokenizer_for(self.cfg.model)
        resume_path = os.path.join(self.resume_from, REWARD_MODEL) if self.resume_from else None
        self.model = build_reward_model(self.cfg.model, self.tokenizer, self.device, resume_path)
        d = self.cfg.data
        self.eval_rows = load_rows(d.eval_file, "ranking", d, "eval", self.cfg.run.seed)

    def micro_step(self, rows):
        batch, truncated = ranking_batch(self.tokenizer, rows, self.cfg.data.max_length)
        self.truncated_rows += truncated
        batch = {k: v.to(self.device) for k, v in batch.items()}
        ranks = batch["ranks"]
        rewards = self.model(batch["input_ids"], batch["attention_mask"], batch["last_index"]).view(ranks.shape)
        loss, accuracy = ops.ranking_loss(rewards, ranks, margin=self.cfg.margin)
        tokens = int(batch["attention_mask"].sum())
        return loss / self.cfg.optim.grad_accum, {"loss/rm": loss.detach(), "rm/accuracy": accuracy, "tokens": tokens}

    def evaluate(self) -> dict:
        return {"eval/rm_accuracy": ranking_accuracy(self.model, self.tokenizer, self.eval_rows, self.cfg.data.max_length)}

    @torch.no_grad()
    def finish(self) -> dict:
        if not self.cfg.normalize_on_sft:
            return {}
        d = self.cfg.data
        demos = load_rows(self.cfg.demonstrations_file, "sft", d, "train", self.cfg.run.seed)
        self.model.eval()
        scores = []
        for i in range(0, len(demos), 64):
            batch, _ = sft_batch(self.tokenizer, demos[i : i + 64], d.max_length)
            with self.autocast():
                scores.append(self.model(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)))
        mean = torch.cat(scores).mean().item()
        self.model.add_offset(-mean)
        self.model.train()
        return {"rm/demo_mean_before_offset": mean, "rm/offset": self.model.offset}

    def models_to_save(self) -> dict:
        return {REWARD_MODEL: _WithTokenizer(self.model, self.tokenizer)}


def run_rm(cfg) -> dict:
    d = cfg.data
    trainer = RMTrainer(cfg)
    trainer.setup(load_rows(d.train_file, "ranking", d, "train", cfg.run.seed))
    return trainer.train()
