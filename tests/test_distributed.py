"""Data-parallel training with torchrun and FSDP2, on this CPU machine: 2 ranks (gloo) against one
process with the same global batch, for each stage, and a sharded checkpoint saved at 2 ranks
resumed at 1. One torchrun launch runs the three 2-rank commands (module fixture); the
single-process runs happen in this process."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from rlhf_fast import distributed
from rlhf_fast.config import PPOConfig, RMConfig, SFTConfig, load_config

HERE = os.path.dirname(os.path.abspath(__file__))

SFT = ["--config", "tiny", "--model.path", "none", "--run.device", "cpu", "--run.threads", "1", "--run.progress", "false",
       "--optim.batch_size", "4", "--optim.grad_accum", "2", "--optim.max_steps", "6", "--optim.warmup_steps", "1",
       "--run.save_every", "3", "--data.synthetic_train", "40", "--data.synthetic_eval", "8"]
RM = ["--config", "tiny", "--model.path", "none", "--run.device", "cpu", "--run.threads", "1", "--run.progress", "false",
      "--optim.batch_size", "4", "--optim.max_steps", "3", "--optim.warmup_steps", "1", "--data.synthetic_train", "40",
      "--data.synthetic_eval", "8", "--data.synthetic_k", "3"]
# one minibatch per iteration, so each update sees the whole global batch whatever the world size;
# two epochs (the second update has ratios != 1), ptx, entropy bonus, score normalisation, adaptive KL,
# a value learning rate of its own, and a first iteration that trains the value model only
PPO = ["--config", "tiny", "--model.path", "none", "--reward_model", "none", "--run.device", "cpu", "--run.threads", "1",
       "--run.progress", "false", "--rollout.batch_size", "8", "--rollout.max_new_tokens", "6", "--ppo.minibatch_size", "8",
       "--ppo.epochs", "2", "--optim.max_steps", "3", "--optim.lr", "3e-4", "--ppo.value_lr", "1e-3",
       "--ppo.critic_warmup_steps", "1", "--ppo.ptx_coef", "0.5", "--ppo.entropy_coef", "0.01",
       "--ppo.score_normalize", "true", "--ppo.adaptive_kl", "true", "--ppo.kl_horizon", "100",
       "--data.synthetic_train", "32", "--data.synthetic_eval", "4"]


def rm_args(root):
    """The RM starts from the 2-rank SFT run's policy, ranks one sample of it per prompt, and reduces
    the gradients of each of its 2 micro-batches (SFT reduces once per step)."""
    return [*RM, "--model.path", str(root / "sft" / "policy"), "--data.synthetic_policy_samples", "1",
            "--optim.grad_accum", "2", "--optim.grad_reduce_every_micro_batch", "true"]


def metrics(out_dir, key):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def weights(folder, name="model.safetensors"):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, name))


def assert_same_weights(a_folder, b_folder, name="model.safetensors"):
    """Same up to float noise. Adam turns the noise of gradients that are ~0 (rarely seen tokens'
    embedding rows; the RM head's bias, which the ranking loss cannot see) into steps of up to ~lr,
    so a few elements may differ by more."""
    a, b = weights(a_folder, name), weights(b_folder, name)
    assert sorted(a) == sorted(b)
    for k in a:
        diff = (a[k] - b[k]).abs()
        assert diff.max() < 2e-4, (k, diff.max())
        assert (diff > 1e-5).sum() <= max(1, diff.numel() // 1000), (k, (diff > 1e-5).sum())


def config(cls, section, args, out_dir, *extra):
    assert args[:2] == ["--config", "tiny"]
    return load_config(cls, section, "tiny", [*args[2:], "--run.output_dir", str(out_dir), *extra])


def run_in_process(cls, section, runner, args, out_dir):
    return runner(config(cls, section, args, out_dir))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The three stages at 2 ranks, through the CLI, in one torchrun launch."""
    root = tmp_path_factory.mktemp("torchrun")
    # SFT at 2 ranks also recomputes activations in the backward: gradient checkpointing composes
    # with FSDP2 and changes no number (the single-process run does not use it)
    commands = [["sft", *SFT, "--run.output_dir", str(root / "sft"), "--model.gradient_checkpointing", "true"],
                ["rm", *rm_args(root), "--run.output_dir", str(root / "rm")],
                ["ppo", *PPO, "--run.output_dir", str(root / "ppo")]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(HERE, "_torchrun_stages.py"), json.dumps(commands)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    print(f"2-rank sft + rm + ppo: {time.perf_counter() - t0:.1f}s")
    return root


def test_sft_two_ranks_match_one_process_and_resume_at_one_rank(two_ranks, tmp_path, monkeypatch):
    from rlhf_fast.trainers.sft import run_sft

    one = tmp_path / "one"
    final = run_in_process(SFTConfig, "sft", run_sft, SFT, one)
    assert not torch.distributed.is_initialized()  # a single process never creates a process group
    two = two_ranks / "sft"
    expected = metrics(one, "loss/sft")
    assert len(expected) == 6
    # token-weighted mean over the global micro-batch, gradients summed over ranks and micro-batches
    torch.testing.assert_close(torch.tensor(metrics(two, "loss/sft")), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(metrics(two, "optim/grad_norm")), torch.tensor(metrics(one, "optim/grad_norm")),
                               rtol=1e-4, atol=1e-5)
    assert metrics(two, "eval/loss") == pytest.approx([final["eval/loss"]], rel=1e-5)
    assert_same_weights(two / "policy", one / "policy")
    assert not os.path.exists(two / "checkpoints" / "step_0000003.tmp")
    assert sorted(os.listdir(two / "checkpoints" / "step_0000003" / "sharded"))  # DCP shards, one file per rank
    assert len([f for f in os.listdir(two / "checkpoints" / "step_0000003" / "sharded") if f.endswith(".distcp")]) == 2

    # the 2-rank checkpoint of step 3, resumed by one process: steps 4-6 as in the uninterrupted run
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    with open(resumed / "checkpoints" / "latest", "w") as f:
        f.write("step_0000003")
    cfg = config(SFTConfig, "sft", SFT, resumed, "--run.resume", "true")
    from rlhf_fast.trainers.sft import SFTTrainer
    from rlhf_fast.data.sources import load_rows

    t = SFTTrainer(cfg)
    t.setup(load_rows(None, "sft", cfg.data, "train", cfg.run.seed))
    assert t.step == 3 and t.data_position == 6
    t.train()
    torch.testing.assert_close(torch.tensor(metrics(resumed, "loss/sft")), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert_same_weights(resumed / "policy", one / "policy")


def test_rm_two_ranks_match_one_process(two_ranks, tmp_path):
    from rlhf_fast.trainers.rm import run_rm

    one = tmp_path / "one"
    final = run_in_process(RMConfig, "rm", run_rm, rm_args(two_ranks), one)
    two = two_ranks / "rm"
    expected = metrics(one, "loss/rm")
    assert len(expected) == 3
    torch.testing.assert_close(torch.tensor(metrics(two, "loss/rm")), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    # the offset after training (the demonstrations' mean score, computed on every rank). It includes the
    # head's bias, which the ranking loss cannot see: Adam moves it by noise-driven steps of up to lr.
    assert metrics(two, "rm/offset") == pytest.approx([final["rm/offset"]], abs=3 * 1e-3)
    assert metrics(two, "eval/rm_accuracy") == [final["eval/rm_accuracy"]]
    assert_same_weights(two / "reward_model", one / "reward_model")
    assert_same_weights(two / "reward_model", one / "reward_model", name="reward_head.safetensors")


def test_ppo_two_ranks_match_one_process_on_the_same_rollouts(two_ranks, tmp_path, monkeypatch):
    """Rank r samples the prompts of slice r of the global batch; with responses that depend on
    the prompt only (tests/_torchrun_stages.fixed_rollouts), everything that follows (reference and
    reward scores, score normalisation, global advantage whitening, KL controller, token-weighted
    losses, gradient reduction, clipping) must give the single-process numbers."""
    from _torchrun_stages import fixed_rollouts

    from rlhf_fast.trainers import ppo

    monkeypatch.setattr(ppo, "sample_responses", fixed_rollouts)
    one = tmp_path / "one"
    run_in_process(PPOConfig, "ppo", ppo.run_ppo, PPO, one)
    two = two_ranks / "ppo"
    for key in ("loss/policy", "loss/value", "loss/ptx", "reward/mean", "reward/std", "ppo/kl_ref", "ppo/kl_beta",
                "ppo/approx_kl", "rollout/response_length", "optim/grad_norm"):
        expected = metrics(one, key)
        assert len(expected) == (2 if key == "loss/ptx" else 3), key
        torch.testing.assert_close(torch.tensor(metrics(two, key)), torch.tensor(expected), rtol=1e-4, atol=1e-6,
                                   msg=key)
    kl = metrics(one, "ppo/kl_ref")
    assert kl[1] == 0 < kl[2]  # the policy stays put in the first (critic warm-up) iteration only
    assert_same_weights(two / "policy", one / "policy")
    assert_same_weights(two / "value_model", one / "value_model")


def test_global_batch_must_divide_by_the_world_size(monkeypatch):
    monkeypatch.setitem(distributed._STATE, "world", 2)
    monkeypatch.setitem(distributed._STATE, "rank", 1)
    assert distributed.per_rank(8, "rollout.batch_size") == 4
    assert distributed.rank_slice(list(range(6)), "optim.batch_size") == [3, 4, 5]
    with pytest.raises(ValueError, match=r"optim.batch_size=5 is not divisible by the world size 2"):
        distributed.rank_slice(list(range(5)), "optim.batch_size")


def test_a_crash_while_saving_leaves_no_checkpoint(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from rlhf_fast.trainers.checkpoint import latest_checkpoint, save_checkpoint

    class Saver:
        def save_pretrained(self, path):
            os.makedirs(path)

    model = torch.nn.Linear(2, 2)
    save_checkpoint(str(tmp_path), 1, {"m": Saver()}, {}, sharded_state={"model": model.state_dict()})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dcp, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(str(tmp_path), 2, {"m": Saver()}, {}, sharded_state={"model": model.state_dict()})
    assert latest_checkpoint(str(tmp_path)).endswith("step_0000001")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_0000001", "step_0000002.tmp"]
