"""Reward-model rows ranking the SFT policy's own samples (data.synthetic_policy_samples)."""

import pytest
import torch

from rlhf_fast.config import ModelConfig, RMConfig, load_config
from rlhf_fast.data.policy_rankings import policy_ranking_rows
from rlhf_fast.data.synthetic import SyntheticTask
from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for
from rlhf_fast.trainers.rm import ranking_rows


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny")
    tok = load_tokenizer_for(cfg)
    return build_or_load_causal_lm(cfg, tok, torch.device("cpu")), tok


@pytest.mark.parametrize("n_sampled", [2, 4])
def test_rows_hold_policy_samples_ranked_by_the_gold_labeler(policy, n_sampled):
    model, tok = policy
    task = SyntheticTask(seed=0)
    examples = task.sample(12, "train")
    rows = policy_ranking_rows(model, tok, examples, k=4, n_sampled=n_sampled, seed=3, max_new_tokens=8)
    assert rows, "an untrained policy's samples and hand-made candidates must give some comparisons"
    for row in rows:
        assert len(row["responses"]) == 4
        scores = [task.score(row["prompt"], r) for r in row["responses"]]
        assert row["ranks"] == [sum(o > s for o in scores) for s in scores]  # 0 = best, ties share a rank
        assert len(set(row["ranks"])) >= 2
        if n_sampled == 2:  # the hand-made part holds a perfect response
            assert max(scores[2:]) == 1.0
    again = policy_ranking_rows(model, tok, examples, k=4, n_sampled=n_sampled, seed=3, max_new_tokens=8)
    assert again == rows  # the seed fixes the samples
    state = torch.get_rng_state()
    policy_ranking_rows(model, tok, examples[:2], k=4, n_sampled=n_sampled, seed=5, max_new_tokens=4)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random stream is left alone


def test_bad_sample_count_and_missing_policy_are_clear_errors(policy, tmp_path):
    model, tok = policy
    with pytest.raises(ValueError, match="synthetic_policy_samples must be in 1..synthetic_k=4"):
        policy_ranking_rows(model, tok, SyntheticTask(0).sample(2, "train"), k=4, n_sampled=5, seed=0, max_new_tokens=4)
    cfg = load_config(RMConfig, "rm", None, ["--data.synthetic_policy_samples", "2", "--run.output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="needs model.path"):
        ranking_rows(cfg, "train")
