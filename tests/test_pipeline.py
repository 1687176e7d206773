"""`rlhf-fast pipeline`, the README's first command: SFT -> RM -> PPO end to end on a few steps of
the tiny preset, the report it writes, and its error for a bad override."""

import json

from rlhf_fast.cli import main

FEW_STEPS = [
    "--sft.optim.max_steps", "6", "--sft.optim.batch_size", "8", "--sft.data.synthetic_train", "48",
    "--rm.optim.max_steps", "3", "--rm.optim.batch_size", "4", "--rm.data.synthetic_train", "12",
    "--ppo.optim.max_steps", "3", "--ppo.rollout.batch_size", "8", "--ppo.ppo.minibatch_size", "4",
    "--ppo.ppo.critic_warmup_steps", "1", "--ppo.data.synthetic_train", "32",
    *[a for stage in ("sft", "rm", "ppo") for a in (f"--{stage}.data.synthetic_eval", "8",
                                                      f"--{stage}.run.progress", "false", f"--{stage}.run.device", "cpu")],
]


def test_pipeline_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    assert main(["pipeline", "--output-dir", str(tmp_path), "--seed", "1", *FEW_STEPS]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]
    assert results["seed"] == 1 and set(results["times_s"]) == {"sft", "rm", "ppo"}
    for key in ("gold score, untrained", "gold score, SFT", "gold score, PPO", "RM held-out accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
        assert key in printed and key in (tmp_path / "report.md").read_text()
    assert summary["final KL to SFT (nats/episode)"] == results["final_kl_to_sft"]
    assert (tmp_path / "ppo_reward_kl.png").stat().st_size > 0
    for stage, folder in (("sft", "policy"), ("rm", "reward_model"), ("ppo", "policy")):
        assert (tmp_path / stage / folder / "model.safetensors").exists(), stage
    ppo_rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert sum("ppo/kl_ref" in r for r in ppo_rows) == 3  # PPO started from the pipeline's own SFT and RM


def test_pipeline_override_without_a_stage_is_an_error(tmp_path, capsys):
    assert main(["pipeline", "--output-dir", str(tmp_path), "--optim.max_steps", "3"]) == 2
    assert "must start with a stage" in capsys.readouterr().err
