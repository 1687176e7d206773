"""Stage 2: the reward model. Each batch element is one prompt with its K ranked responses (K
forward passes, all C(K,2) pairs in the loss, ops.ranking_loss). After training, the head's bias is
shifted so that the SFT demonstrations score mean 0, as in the paper."""

from __future__ import annotations

import os

import torch

from rlhf_fast import distributed, ops
from rlhf_fast.data.collate import ranking_batch, sft_batch
from rlhf_fast.data.sources import load_rows
from rlhf_fast.evaluation import ranking_accuracy
from rlhf_fast.models.attention import choose_attn_implementation
from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for, resolve_device, resolve_dtype
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


def prompts_with_pairs(ranks: torch.Tensor) -> int:
    """Batch elements with at least one ordered pair (two non-empty slots of different rank)."""
    valid = ranks >= 0
    best = torch.where(valid, ranks, ranks.max() + 1).amin(-1)
    worst = torch.where(valid, ranks, -1).amax(-1)
    return int((worst > best).sum())


class RMTrainer(Trainer):
    stage = "rm"
    progress_keys = ("loss/rm", "rm/accuracy", "perf/tokens_per_s")

    def setup_models(self) -> None:
        self.tokenizer = load_tokenizer_for(self.cfg.model)
        resume_path = os.path.join(self.resume_from, REWARD_MODEL) if self.resume_from else None
        self.model = build_reward_model(self.cfg.model, self.tokenizer, self.device, resume_path)
        self.eval_rows = ranking_rows(self.cfg, "eval", self.tokenizer, self.device)

    def micro_step(self, rows):
        batch, truncated = ranking_batch(self.tokenizer, rows, self.cfg.data.max_length)
        self.truncated_rows += truncated
        batch = {k: v.to(self.device) for k, v in batch.items()}
        ranks = batch["ranks"]
        rewards = self.model(batch["input_ids"], batch["attention_mask"], batch["last_index"]).view(ranks.shape)
        loss, accuracy = ops.ranking_loss(rewards, ranks, margin=self.cfg.margin)
        tokens = int(batch["attention_mask"].sum())
        # the loss is a mean over the prompts that have a pair: weigh this rank's by its share of them
        share = distributed.global_share(prompts_with_pairs(ranks)) if distributed.enabled() else 1.0
        return loss * share / self.cfg.optim.grad_accum, {"loss/rm": loss.detach() * share, "rm/accuracy": accuracy,
                                                          "tokens": tokens}

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


def ranking_rows(cfg, split: str, tokenizer=None, device=None) -> list[dict]:
    """The rows of a split: from the data files, or the synthetic task's rankings of hand-made
    candidates, or (data.synthetic_policy_samples > 0) of the SFT model's own samples."""
    d = cfg.data
    path = d.train_file if split == "train" else d.eval_file
    if path is not None or d.synthetic_policy_samples == 0:
        return load_rows(path, "ranking", d, split, cfg.run.seed)
    if cfg.model.path is None:
        raise ValueError("rm: data.synthetic_policy_samples needs model.path, the SFT model to sample responses from")
    from rlhf_fast.data.policy_rankings import policy_ranking_rows
    from rlhf_fast.data.synthetic import SyntheticTask

    tokenizer = tokenizer or load_tokenizer_for(cfg.model)
    device = device or distributed.init(resolve_device(cfg.run.device))  # under torchrun: this rank's GPU
    # every rank samples the same rows (same weights, same seed): each then takes its slices of the batches
    policy = build_or_load_causal_lm(cfg.model, tokenizer, device)
    n = d.synthetic_train if split == "train" else d.synthetic_eval
    examples = SyntheticTask(seed=cfg.run.seed).sample(n, split)
    return policy_ranking_rows(policy, tokenizer, examples, d.synthetic_k, d.synthetic_policy_samples,
                               seed=cfg.run.seed + (0 if split == "train" else 1), max_new_tokens=d.max_length // 2)


def run_rm(cfg) -> dict:
    trainer = RMTrainer(cfg)
    trainer.setup(ranking_rows(cfg, "train"))
    return trainer.train()
