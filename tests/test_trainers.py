"""SFT and reward-model trainers on the tiny preset: losses against references, the RM batch
layout, checkpoint round trips, and resume equality after a crash."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from rlhf_fast import ops
from rlhf_fast.config import RMConfig, SFTConfig, load_config
from rlhf_fast.data.collate import ranking_batch, sft_batch
from rlhf_fast.data.sources import synthetic_rows
from rlhf_fast.models.reward import RewardModel
from tests.conftest import train_until_killed


def small(cls, section, tmp_path, name, *extra):
    return load_config(cls, section, "tiny", [
        "--run.output_dir", str(tmp_path / name), "--run.progress", "false", "--optim.batch_size", "4",
        "--optim.max_steps", "4", "--optim.warmup_steps", "1", "--data.synthetic_train", "40",
        "--data.synthetic_eval", "8", "--model.path", "none", "--run.device", "cpu", *extra])


def read_losses(path, key):
    with open(path) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


@pytest.fixture(scope="module")
def tok():
    from rlhf_fast.data.tokenizer import load_tokenizer

    return load_tokenizer()


def test_sft_loss_equals_reference_cross_entropy_on_response_tokens(tok):
    from rlhf_fast.config import ModelConfig
    from rlhf_fast.models.loading import build_or_load_causal_lm
    from rlhf_fast.trainers.sft import sft_loss

    torch.manual_seed(0)
    model = build_or_load_causal_lm(ModelConfig(), tok, torch.device("cpu"))
    batch, _ = sft_batch(tok, synthetic_rows("sft", "train", 6), max_length=64)
    loss, n = sft_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    # only response tokens count: the prompt and the padding are ignored
    assert n == int((batch["labels"] != -100).sum()) < int(batch["attention_mask"].sum())


def test_rm_batch_puts_the_k_responses_of_a_prompt_in_one_element_and_loss_matches_pairs(tok):
    rows = [{"prompt": "List 2 fruits.", "responses": ["apple, pear", "pear", "dog"], "ranks": [0, 1, 2]},
            {"prompt": "Count from 1 to 3.", "responses": ["1 2 3", "1 2"], "ranks": [0, 0 + 1]}]
    batch, _ = ranking_batch(tok, rows, max_length=64)
    assert batch["input_ids"].shape[0] == 2 * 3  # B * K, K = 3 (largest in the batch)
    assert batch["ranks"].tolist() == [[0, 1, 2], [0, 1, -1]]  # the missing slot of prompt 2 is empty
    decoded = tok.decode(batch["input_ids"][1][: batch["last_index"][1] + 1])
    assert "List 2 fruits." in decoded and decoded.rstrip().endswith("pear<eos>")
    torch.manual_seed(0)
    rewards = torch.randn(2, 3, requires_grad=True)
    loss, acc = ops.ranking_loss(rewards, batch["ranks"])
    r = rewards.detach()
    # explicit pairs: prompt 1 has (0>1), (0>2), (1>2); prompt 2 has (0>1)
    l1 = -(F.logsigmoid(r[0, 0] - r[0, 1]) + F.logsigmoid(r[0, 0] - r[0, 2]) + F.logsigmoid(r[0, 1] - r[0, 2])) / 3
    l2 = -F.logsigmoid(r[1, 0] - r[1, 1])
    torch.testing.assert_close(loss.detach(), (l1 + l2) / 2)
    torch.testing.assert_close(loss.detach(), ops.ranking_loss_ref(r, batch["ranks"])[0])


def test_sft_run_saves_a_transformers_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_fast.trainers.sft import SFTTrainer

    cfg = small(SFTConfig, "sft", tmp_path, "sft")
    trainer = SFTTrainer(cfg)
    trainer.setup(synthetic_rows("sft", "train", 40))
    final = trainer.train()
    assert "eval/loss" in final and "eval/gold_score" in final
    out = cfg.run.output_dir
    assert os.path.exists(os.path.join(out, "policy", "model.safetensors"))
    assert os.path.exists(os.path.join(out, "curves.png"))
    assert len(read_losses(os.path.join(out, "metrics.jsonl"), "loss/sft")) == 4
    loaded = AutoModelForCausalLM.from_pretrained(os.path.join(out, "policy"))
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.testing.assert_close(loaded(ids).logits, trainer.model(ids).logits)


def test_sft_resume_after_a_crash_gives_the_same_losses(tmp_path):
    from rlhf_fast.trainers.sft import SFTTrainer

    rows = synthetic_rows("sft", "train", 40)
    full = small(SFTConfig, "sft", tmp_path, "full", "--optim.max_steps", "6")
    t = SFTTrainer(full)
    t.setup(rows)
    t.train()
    expected = read_losses(os.path.join(full.run.output_dir, "metrics.jsonl"), "loss/sft")

    crashed = small(SFTConfig, "sft", tmp_path, "crash", "--optim.max_steps", "6", "--run.save_every", "3")
    t = SFTTrainer(crashed)
    t.setup(rows)
    train_until_killed(t, at_step=4)
    crashed.run.resume = True
    t = SFTTrainer(crashed)
    t.setup(rows)
    assert t.step == 3
    t.train()
    resumed = read_losses(os.path.join(crashed.run.output_dir, "metrics.jsonl"), "loss/sft")
    assert len(resumed) == 6
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_rm_trains_normalises_and_round_trips(tmp_path):
    from rlhf_fast.trainers.rm import RMTrainer

    cfg = small(RMConfig, "rm", tmp_path, "rm", "--data.synthetic_k", "3", "--data.synthetic_policy_samples", "0")
    trainer = RMTrainer(cfg)
    trainer.setup(synthetic_rows("ranking", "train", 40, k=3))
    final = trainer.train()
    assert 0.0 <= final["eval/rm_accuracy"] <= 1.0
    assert final["rm/offset"] == pytest.approx(-final["rm/demo_mean_before_offset"])
    path = os.path.join(cfg.run.output_dir, "reward_model")
    loaded = RewardModel.from_pretrained(path)
    assert loaded.offset == pytest.approx(trainer.model.offset)
    batch, _ = sft_batch(trainer.tokenizer, synthetic_rows("sft", "train", 16), 64)
    with torch.no_grad():
        scores = loaded(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(scores, trainer.model(batch["input_ids"], batch["attention_mask"]))


def test_packed_sft_batches_give_the_same_loss_as_padded_ones(tok):
    from rlhf_fast.config import ModelConfig
    from rlhf_fast.data.collate import packed_sft_batch
    from rlhf_fast.models.loading import build_or_load_causal_lm
    from rlhf_fast.trainers.sft import sft_loss

    torch.manual_seed(0)
    model = build_or_load_causal_lm(ModelConfig(), tok, torch.device("cpu"))
    rows = synthetic_rows("sft", "train", 12)
    padded, _ = sft_batch(tok, rows, max_length=64)
    packed, _ = packed_sft_batch(tok, rows, max_length=64)
    assert packed["input_ids"].shape[0] < len(rows)  # several rows share a sequence
    assert "attention_mask" not in packed
    loss_padded, n_padded = sft_loss(model, padded)
    loss_packed, n_packed = sft_loss(model, packed)
    assert n_packed == n_padded
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
