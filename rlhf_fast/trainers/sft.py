"""Stage 1: supervised fine-tuning. Loss: next-token NLL on response tokens only, computed from the
final hidden states and the LM head with ops.fused_linear_cross_entropy (no full logits tensor)."""

from __future__ import annotations

import copy
import os

import torch

from rlhf_fast import distributed, ops
from rlhf_fast.data.collate import IGNORE_INDEX, packed_sft_batch, sft_batch
from rlhf_fast.data.sources import load_rows
from rlhf_fast.evaluation import gold_score
from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for
from rlhf_fast.trainers.base import Trainer

POLICY = "policy"


@distributed.root_forward  # under FSDP2: one forward of the root (gathers the LM head; see rlhf_fast.distributed)
def sft_loss(model, batch: dict, reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """NLL of the response tokens (labels != IGNORE_INDEX) and how many there are. A packed batch
    (position_ids, no attention_mask) keeps its rows apart through the block-diagonal mask."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                 position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    labels = batch["labels"]
    keep = labels != IGNORE_INDEX
    head = model.get_output_embeddings()
    loss = ops.fused_linear_cross_entropy(hidden[keep], head.weight, labels[keep], bias=head.bias, reduction=reduction)
    return loss, int(keep.sum())


class SFTTrainer(Trainer):
    stage = "sft"
    progress_keys = ("loss/sft", "perf/tokens_per_s")

    def setup_models(self) -> None:
        model_cfg = copy.copy(self.cfg.model)
        if self.resume_from:
            model_cfg.path = os.path.join(self.resume_from, POLICY)
        self.tokenizer = load_tokenizer_for(self.cfg.model)
        self.model = build_or_load_causal_lm(model_cfg, self.tokenizer, self.device)
        d = self.cfg.data
        self.eval_rows = load_rows(d.eval_file, "sft", d, "eval", self.cfg.run.seed)

    def micro_step(self, rows):
        make_batch = packed_sft_batch if self.cfg.data.packing else sft_batch
        batch, truncated = make_batch(self.tokenizer, rows, self.cfg.data.max_length)
        self.truncated_rows += truncated
        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss, tokens = sft_loss(self.model, batch)
        share = distributed.global_share(tokens)  # 1.0 in a single process; the mean over all ranks' tokens
        return loss * share / self.cfg.optim.grad_accum, {"loss/sft": loss.detach() * share, "tokens": tokens}

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        total, tokens = 0.0, 0
        bs = self.cfg.optim.batch_size
        for i in range(0, len(self.eval_rows), bs):
            batch, _ = sft_batch(self.tokenizer, self.eval_rows[i : i + bs], self.cfg.data.max_length)
            with self.autocast():
                loss, n = sft_loss(self.model, {k: v.to(self.device) for k, v in batch.items()}, reduction="sum")
            total, tokens = total + loss.item(), tokens + n
        metrics = {"eval/loss": total / max(1, tokens)}
        if self.cfg.data.eval_file is None:  # the synthetic task: score greedy generations
            metrics["eval/gold_score"] = gold_score(self.model, self.tokenizer, [r["prompt"] for r in self.eval_rows],
                                                    seed=self.cfg.run.seed)
        self.model.train()
        return metrics

    def models_to_save(self) -> dict:
        return {POLICY: _WithTokenizer(self.model, self.tokenizer)}


class _WithTokenizer:
    """save_pretrained of a model and its tokenizer into one folder (loadable by transformers)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, path: str, state_dict: dict | None = None) -> None:
        """state_dict: tensors to save instead of the model's own (a sharded model's, gathered)."""
        if state_dict is None:
            self.model.save_pretrained(path)  # safetensors
        else:
            self.model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)


def run_sft(cfg) -> dict:
    d = cfg.data
    trainer = SFTTrainer(cfg)
    trainer.setup(load_rows(d.train_file, "sft", d, "train", cfg.run.seed))
    return trainer.train()
