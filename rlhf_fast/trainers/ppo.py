"""Stage 3: PPO against the reward model (InstructGPT): the policy and the value model are trained;
the reference (the SFT model) and the reward model are frozen. Per iteration: sample responses,
score them, build per-token rewards (-beta * KL to the reference on every token, the RM score on
the last), GAE, then clipped policy / value updates over minibatches, optionally with PPO-ptx."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time

import torch

from rlhf_fast import distributed, ops
from rlhf_fast.data.collate import sft_batch
from rlhf_fast.data.sources import load_rows
from rlhf_fast.evaluation import gold_score
from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for
from rlhf_fast.models.reward import RewardModel, load_head
from rlhf_fast.rollout import Rollout, sample_responses
from rlhf_fast.trainers.base import Trainer
from rlhf_fast.trainers.ppo_math import (AdaptiveKLController, FixedKLController, assemble_rewards, explained_variance,
                                         masked_mean, policy_loss, value_loss)
from rlhf_fast.trainers.rm import build_reward_model
from rlhf_fast.trainers.sft import POLICY, _WithTokenizer, sft_loss

VALUE_MODEL = "value_model"


@distributed.root_forward  # under FSDP2: one forward of the root (gathers the LM head; see rlhf_fast.distributed)
def response_logprobs(model, rollout: Rollout, rows: torch.Tensor | slice = slice(None), *, temperature: float = 1.0,
                      ref_logprobs: torch.Tensor | None = None, kl_estimator: str = "k1", compute_entropy: bool = False):
    """Per-token log-probs (and entropy, KL) of the response tokens of `rows`, from the final hidden
    states and the LM head through ops.fused_linear_logprobs: the (tokens x vocab) logits never exist.
    Returns (logprobs, entropy or None, kl or None), each (b, R)."""
    ids, attn, pos = rollout.input_ids[rows], rollout.attention_mask[rows], rollout.position_ids[rows]
    mask, targets = rollout.response_mask[rows], rollout.response_ids[rows]
    P, R = rollout.prompt_len, targets.shape[1]
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
    h = hidden[:, P - 1 : P - 1 + R]  # the position before each response token predicts it
    head = model.get_output_embeddings()
    labels = torch.where(mask, targets, -100)
    out = ops.fused_linear_logprobs(h.reshape(-1, h.shape[-1]), head.weight, labels.reshape(-1), bias=head.bias,
                                    temperature=temperature,
                                    ref_logprobs=None if ref_logprobs is None else ref_logprobs.reshape(-1),
                                    kl_estimator=kl_estimator, compute_entropy=compute_entropy)
    shape = targets.shape
    return (out.logprobs.view(shape), None if out.entropy is None else out.entropy.view(shape),
            None if out.kl is None else out.kl.view(shape))


def response_values(value_model, rollout: Rollout, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """(b, R) value of the state before each response token."""
    scores = value_model.token_scores(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.position_ids[rows])
    P, R = rollout.prompt_len, rollout.response_ids.shape[1]
    return scores[:, P - 1 : P - 1 + R] * rollout.response_mask[rows]


class RunningMoments:
    """Running mean / std of reward-model scores (for score_normalize)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        for v in x.double().tolist():
            self.count += 1
            delta = v - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, s: dict) -> None:
        self.count, self.mean, self.m2 = s["count"], s["mean"], s["m2"]


class PPOTrainer(Trainer):
    stage = "ppo"
    progress_keys = ("reward/mean", "ppo/kl_ref", "perf/rollout_tokens_per_s")
    per_rank_fields = ("rollout.batch_size", "ppo.minibatch_size")

    def rows_per_batch(self) -> int:
        return self.cfg.rollout.batch_size

    def setup_models(self) -> None:
        cfg = self.cfg
        self.tokenizer = load_tokenizer_for(cfg.model)
        frozen_device = torch.device("cpu") if cfg.ppo.offload_frozen else self.device
        if self.resume_from and (cfg.model.path is None or cfg.reward_model is None):
            raise ValueError("ppo: resuming needs model.path (the SFT model, the frozen reference) and reward_model "
                             "set; without them the reference and reward model were random and cannot be rebuilt")
        policy_cfg = copy.copy(cfg.model)
        if self.resume_from:
            policy_cfg.path = os.path.join(self.resume_from, POLICY)
        self.model = build_or_load_causal_lm(policy_cfg, self.tokenizer, self.device)
        if cfg.model.path is None:  # a fresh preset model (tests): the reference is its copy
            self.ref = copy.deepcopy(self.model).to(frozen_device)
        else:
            self.ref = build_or_load_causal_lm(cfg.model, self.tokenizer, frozen_device)
        value_path = os.path.join(self.resume_from, VALUE_MODEL) if self.resume_from else (cfg.value_model or cfg.reward_model)
        if cfg.ppo.shared_backbone:
            if distributed.enabled():
                raise ValueError("ppo.shared_backbone is not supported under torchrun yet; run with separate models")
            # one trained network: the value head (the RM's, or the checkpoint's) reads the policy's backbone
            head, offset = load_head(value_path) if value_path else (None, 0.0)
            self.value = RewardModel(self.model.get_decoder(), head=head, offset=offset)
        else:
            self.value = build_reward_model(cfg.model, self.tokenizer, self.device, value_path)
        self.reward = build_reward_model(cfg.model, self.tokenizer, frozen_device, cfg.reward_model)
        for frozen in (self.ref, self.reward):
            frozen.eval().requires_grad_(False)
        p = cfg.ppo
        if p.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"ppo.kl_estimator must be k1 or k3, got {p.kl_estimator!r}")
        self.kl_ctl = AdaptiveKLController(p.kl_beta, p.kl_target, p.kl_horizon) if p.adaptive_kl else FixedKLController(p.kl_beta)
        self.score_moments = RunningMoments()
        d = cfg.data
        self.eval_prompts = [r["prompt"] for r in load_rows(d.eval_file, "prompt", d, "eval", cfg.run.seed)]
        self.ptx_rows = load_rows(p.ptx_file, "sft", d, "train", cfg.run.seed) if p.ptx_coef > 0 else []
        self.ptx_position = 0

    def parameter_groups(self) -> list:
        value_lr = self.cfg.ppo.value_lr or self.cfg.optim.lr
        value_params = self.value.head.parameters() if self.cfg.ppo.shared_backbone else self.value.parameters()
        return [list(self.model.parameters()), {"params": list(value_params), "lr": value_lr}]

    def frozen_models(self) -> list:
        return [self.ref, self.reward]

    @contextlib.contextmanager
    def on_device(self, model):
        """Moves an offloaded frozen model to the training device for the duration."""
        if not self.cfg.ppo.offload_frozen or distributed.enabled():  # sharded: FSDP's CPUOffloadPolicy does it
            yield model
            return
        model.to(self.device)
        try:
            yield model
        finally:
            model.to("cpu")

    @torch.no_grad()
    def make_experience(self, prompts: list[str]) -> dict:
        cfg, p = self.cfg, self.cfg.ppo
        rollout = sample_responses(self.model, self.tokenizer, prompts, cfg.rollout.max_new_tokens,
                                   cfg.rollout.temperature, cfg.rollout.top_p)
        mask = rollout.response_mask
        temp = cfg.rollout.temperature
        with self.autocast():
            with self.on_device(self.ref) as ref:
                ref_lp, _, _ = response_logprobs(ref, rollout, temperature=temp)
            self.model.eval()
            old_lp, entropy, kl = response_logprobs(self.model, rollout, temperature=temp, ref_logprobs=ref_lp,
                                                    kl_estimator=p.kl_estimator, compute_entropy=True)
            with self.on_device(self.reward) as reward:
                scores = reward(rollout.input_ids, rollout.attention_mask, rollout.last_token_index(), rollout.position_ids)
            values = response_values(self.value, rollout)
        raw_scores = scores.clone()
        if p.no_eos_penalty:
            scores = torch.where(rollout.ended, scores, torch.full_like(scores, -abs(p.no_eos_penalty)))
        if p.score_normalize:
            self.score_moments.update(distributed.all_gather_cat(scores))  # every rank's scores, in rank order
            scores = (scores - self.score_moments.mean) / self.score_moments.std
        if p.score_clip:
            scores = scores.clamp(-p.score_clip, p.score_clip)
        rewards = assemble_rewards(kl, scores, mask, self.kl_ctl.beta)
        advantages, returns = ops.gae(rewards, values, mask, gamma=p.gamma, lam=p.lam)
        if p.whiten_advantages:
            advantages = distributed.masked_whiten(advantages, mask)  # over all ranks' rollouts
        return {"rollout": rollout, "old_logprobs": old_lp, "values": values, "advantages": advantages,
                "returns": returns, "kl": kl, "entropy": entropy, "scores": raw_scores, "rewards": rewards}

    def ptx_loss(self) -> torch.Tensor:
        n = self.cfg.ppo.minibatch_size
        rows = [self.ptx_rows[(self.ptx_position + i) % len(self.ptx_rows)] for i in range(n)]
        self.ptx_position += n
        batch, _ = sft_batch(self.tokenizer, distributed.rank_slice(rows, "ppo.minibatch_size"), self.cfg.data.max_length)
        loss, tokens = sft_loss(self.model, {k: v.to(self.device) for k, v in batch.items()})
        return loss * distributed.global_share(tokens)

    def train_step(self) -> dict:
        cfg, p = self.cfg, self.cfg.ppo
        prompts = [self.train_rows[i]["prompt"] for i in self.order.indices(self.data_position)]
        self.data_position += 1
        t0 = time.perf_counter()
        exp = self.make_experience(prompts)
        rollout, mask = exp["rollout"], exp["rollout"].response_mask
        t_rollout = time.perf_counter() - t0
        self.model.train()
        self.value.train()
        stats: dict = {}
        n_updates, train_tokens = 0, 0
        B = len(prompts)
        t1 = time.perf_counter()
        train_policy = self.step >= p.critic_warmup_steps  # first fit the value model to the frozen policy
        for _ in range(p.epochs):
            for mb in torch.randperm(B).split(distributed.per_rank(p.minibatch_size, "ppo.minibatch_size")):
                mb = mb.to(self.device)
                with self.autocast():
                    lp, entropy, _ = response_logprobs(self.model, rollout, mb, temperature=cfg.rollout.temperature,
                                                       compute_entropy=p.entropy_coef > 0)
                    pg_loss, clipfrac, approx_kl = policy_loss(lp, exp["old_logprobs"][mb], exp["advantages"][mb], mask[mb], p.clip)
                    values = response_values(self.value, rollout, mb)
                    vf_loss, vf_clipfrac = value_loss(values, exp["values"][mb], exp["returns"][mb], mask[mb], p.value_clip)
                    loss = p.vf_coef * vf_loss + (pg_loss if train_policy else 0.0)
                    if entropy is not None and train_policy:
                        loss = loss - p.entropy_coef * masked_mean(entropy, mask[mb])
                    share = distributed.global_share(int(mask[mb].sum())) if distributed.enabled() else 1.0
                    loss = loss * share  # token means over the global minibatch
                    if p.ptx_coef > 0 and train_policy:
                        ptx = self.ptx_loss()
                        loss = loss + p.ptx_coef * ptx
                        stats["loss/ptx"] = stats.get("loss/ptx", 0.0) + ptx.item()
                loss.backward()
                grad_norm = self.optimizer_step()
                n_updates += 1
                train_tokens += int(mask[mb].sum())
                for k, v in (("loss/policy", pg_loss.detach()), ("loss/value", vf_loss.detach()), ("ppo/clipfrac", clipfrac),
                             ("ppo/approx_kl", approx_kl), ("value/clipfrac", vf_clipfrac)):
                    stats[k] = stats.get(k, 0.0) + float(v) * share
                stats["optim/grad_norm"] = stats.get("optim/grad_norm", 0.0) + grad_norm
        t_train = time.perf_counter() - t1
        self.scheduler.step()
        stats = {k: v / max(1, n_updates) for k, v in stats.items()}
        kl_per_episode = (exp["kl"] * mask).sum(-1)
        all_kl, all_scores = distributed.all_gather_cat(kl_per_episode), distributed.all_gather_cat(exp["scores"])
        self.kl_ctl.update(all_kl.mean().item(), n_steps=len(all_kl))
        lengths = mask.sum(-1).float()
        # every value below is a mean over this rank's episodes; the trainer averages them over ranks
        return {
            **stats,
            "reward/mean": exp["scores"].mean().item(),
            "reward/std": all_scores.std().item() if len(all_scores) > 1 else 0.0,
            "reward/total_mean": exp["rewards"].sum(-1).mean().item(),
            "ppo/kl_ref": kl_per_episode.mean().item(),
            "ppo/kl_beta": self.kl_ctl.beta,
            "policy/entropy": masked_mean(exp["entropy"], mask).item(),
            "value/explained_variance": explained_variance(exp["values"], exp["returns"], mask),
            "rollout/response_length": lengths.mean().item(),
            "rollout/eos_frac": rollout.ended.float().mean().item(),
            **self.rollout_gold(prompts, rollout),
            "perf/rollout_tokens_per_s": rollout.tokens_per_s,
            "perf/rollout_s": t_rollout,
            "perf/train_tokens_per_s": train_tokens / t_train if t_train > 0 else 0.0,
            "optim/lr": self.scheduler.get_last_lr()[0],
        }

    def rollout_gold(self, prompts: list[str], rollout: Rollout) -> dict:
        """The synthetic task's gold score of the sampled responses: what the RM score stands in for."""
        if self.cfg.data.train_file is not None:
            return {}
        from rlhf_fast.data.synthetic import SyntheticTask

        task = SyntheticTask(seed=self.cfg.run.seed)
        texts = rollout.response_texts(self.tokenizer)
        return {"rollout/gold_score": sum(task.score(p, t) for p, t in zip(prompts, texts)) / len(prompts)}

    @torch.no_grad()
    def evaluate(self) -> dict:
        metrics = {}
        if self.cfg.data.eval_file is None:  # the synthetic task's gold labeler
            metrics["eval/gold_score"] = gold_score(self.model, self.tokenizer, self.eval_prompts, seed=self.cfg.run.seed)
        return metrics

    def extra_state(self) -> dict:
        return {"kl_ctl": self.kl_ctl.state_dict(), "score_moments": self.score_moments.state_dict(),
                "ptx_position": self.ptx_position}

    def load_extra_state(self, state: dict) -> None:
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
            self.score_moments.load_state_dict(state["score_moments"])
            self.ptx_position = state["ptx_position"]

    def models_to_save(self) -> dict:
        return {POLICY: _WithTokenizer(self.model, self.tokenizer), VALUE_MODEL: _WithTokenizer(self.value, self.tokenizer)}


def run_ppo(cfg) -> dict:
    d = cfg.data
    trainer = PPOTrainer(cfg)
    trainer.setup(load_rows(d.train_file, "prompt", d, "train", cfg.run.seed))
    return trainer.train()
