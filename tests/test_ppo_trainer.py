"""The PPO trainer on the tiny preset: KL to an identical reference is 0, an update lowers the
PPO loss on a fixed batch, and a run resumed after a crash repeats the uninterrupted one."""

import json
import os

import pytest
import torch

from rlhf_fast.config import PPOConfig, load_config
from rlhf_fast.data.sources import synthetic_rows
from rlhf_fast.trainers.ppo import PPOTrainer, response_logprobs, response_values
from rlhf_fast.trainers.ppo_math import policy_loss, value_loss
from tests.conftest import train_until_killed


def tiny_ppo(tmp_path, name, *extra):
    return load_config(PPOConfig, "ppo", "tiny", [
        "--model.path", "none", "--reward_model", "none", "--run.output_dir", str(tmp_path / name),
        "--run.progress", "false", "--run.device", "cpu", "--rollout.batch_size", "8",
        "--rollout.max_new_tokens", "6", "--ppo.minibatch_size", "4", "--optim.max_steps", "3",
        "--data.synthetic_eval", "4",
        # the tests' own PPO settings, not the demo's tuning in configs/tiny.yaml
        "--ppo.score_normalize", "false", "--ppo.value_lr", "none", "--ppo.critic_warmup_steps", "0", *extra])


def trainer(cfg):
    t = PPOTrainer(cfg)
    t.setup(synthetic_rows("prompt", "train", 32))
    return t


def test_kl_is_zero_when_the_policy_is_the_reference(tmp_path):
    t = trainer(tiny_ppo(tmp_path, "kl"))
    exp = t.make_experience([r["prompt"] for r in synthetic_rows("prompt", "train", 8)])
    mask = exp["rollout"].response_mask
    assert mask.any()
    assert torch.equal(exp["kl"], torch.zeros_like(exp["kl"]))
    # so the per-token reward is the RM score on the last token and 0 elsewhere
    rows = torch.arange(mask.shape[0])
    last = mask.long().sum(-1) - 1
    torch.testing.assert_close(exp["rewards"][rows, last], exp["scores"])
    assert exp["rewards"].abs().sum() == exp["rewards"][rows, last].abs().sum()


def test_a_ppo_update_lowers_the_loss_on_a_fixed_batch(tmp_path):
    t = trainer(tiny_ppo(tmp_path, "step", "--optim.lr", "1e-4"))
    exp = t.make_experience([r["prompt"] for r in synthetic_rows("prompt", "train", 8)])
    rollout, mask = exp["rollout"], exp["rollout"].response_mask

    def loss():
        lp, _, _ = response_logprobs(t.model, rollout)
        pg, _, _ = policy_loss(lp, exp["old_logprobs"], exp["advantages"], mask, clip=0.2)
        vf, _ = value_loss(response_values(t.value, rollout), exp["values"], exp["returns"], mask, clip=0.2)
        return pg + 0.5 * vf

    before = loss()
    for _ in range(3):
        loss().backward()
        t.optimizer_step()
    with torch.no_grad():
        assert loss().item() < before.item()


def saved_sft_and_rm(tmp_path):
    """A tiny policy and reward model saved to folders, as the SFT and RM stages leave them."""
    from rlhf_fast.config import ModelConfig
    from rlhf_fast.data.tokenizer import load_tokenizer
    from rlhf_fast.models.loading import build_or_load_causal_lm
    from rlhf_fast.models.reward import RewardModel

    torch.manual_seed(0)
    tok = load_tokenizer()
    policy = build_or_load_causal_lm(ModelConfig(), tok, torch.device("cpu"))
    policy.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    RewardModel.from_causal_lm(build_or_load_causal_lm(ModelConfig(), tok, torch.device("cpu"))).save_pretrained(
        str(tmp_path / "rm"))
    return ["--model.path", str(tmp_path / "sft"), "--reward_model", str(tmp_path / "rm")]


def test_ppo_resume_after_a_crash_repeats_the_run(tmp_path):
    def rewards(path):
        with open(path) as f:
            return [r["reward/mean"] for r in map(json.loads, f) if "reward/mean" in r]

    paths = saved_sft_and_rm(tmp_path)
    full = tiny_ppo(tmp_path, "full", *paths)
    trainer(full).train()
    expected = rewards(os.path.join(full.run.output_dir, "metrics.jsonl"))

    crashed = tiny_ppo(tmp_path, "crash", "--run.save_every", "1", *paths)
    train_until_killed(trainer(crashed), at_step=2)
    crashed.run.resume = True
    t = trainer(crashed)
    assert t.step == 2
    t.train()
    resumed = rewards(os.path.join(crashed.run.output_dir, "metrics.jsonl"))
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_critic_warmup_trains_only_the_value_model_unless_the_backbone_is_shared(tmp_path, shared):
    t = trainer(tiny_ppo(tmp_path, f"warm{shared}", "--ppo.critic_warmup_steps", "1", "--ppo.value_lr", "1e-3",
                         "--ppo.shared_backbone", str(shared).lower()))
    assert (t.value.backbone is t.model.get_decoder()) == shared
    trained = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert len({id(p) for p in trained}) == len(trained), "a parameter is in two optimizer groups"
    assert t.optimizer.param_groups[1]["lr"] == pytest.approx(1e-3)
    policy_before = [p.detach().clone() for p in t.model.parameters()]
    head_before = t.value.head.weight.detach().clone()
    t.train_step()  # step 0 < critic_warmup_steps: the value loss alone
    policy_moved = any(not torch.equal(a, b) for a, b in zip(policy_before, t.model.parameters()))
    assert policy_moved == shared  # shared: the value loss trains the policy's backbone too
    assert not torch.equal(head_before, t.value.head.weight)
    if not shared:
        t.step = 1
        t.train_step()  # past the warm-up: the policy trains
        assert any(not torch.equal(a, b) for a, b in zip(policy_before, t.model.parameters()))
