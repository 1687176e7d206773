import math

import torch

from rlhf_fast.trainers.ppo_math import (AdaptiveKLController, assemble_rewards, explained_variance, masked_mean,
                                         policy_loss, value_loss)


def test_rewards_kl_on_every_token_score_at_the_last():
    kl = torch.tensor([[0.5, 1.0, 2.0, 9.0], [1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    scores = torch.tensor([10.0, -1.0, 5.0])
    r = assemble_rewards(kl, scores, mask, beta=0.1)
    # row 0: -0.1 * [0.5, 1, 2] and +10 on the last response token (index 2); padding stays 0
    torch.testing.assert_close(r[0], torch.tensor([-0.05, -0.1, -0.2 + 10.0, 0.0]))
    # row 1: the last token is index 3
    torch.testing.assert_close(r[1], torch.tensor([-0.1, -0.1, -0.1, -0.1 - 1.0]))
    # row 2: no response tokens -> no reward at all (the score is not placed anywhere)
    assert (r[2] == 0).all()


def test_policy_loss_hand_computed():
    # two tokens: ratios e^0.5 = 1.6487 (A = +1) and e^-0.5 = 0.6065 (A = -2), clip 0.2
    lp = torch.tensor([[0.5, -0.5]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    loss, clipfrac, approx_kl = policy_loss(lp, old, adv, mask, clip=0.2)
    # token 0: max(-1 * 1.6487, -1 * 1.2) = -1.2 (clipped is larger: counted as clipped)
    # token 1: max(2 * 0.6065, 2 * 0.8) = 1.6 (clipped again)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.6) / 2))
    assert clipfrac.item() == 1.0
    expected_kl = ((math.exp(0.5) - 1 - 0.5) + (math.exp(-0.5) - 1 + 0.5)) / 2
    assert abs(approx_kl.item() - expected_kl) < 1e-6


def test_policy_loss_gradient_vanishes_when_clipped_and_not_otherwise():
    lp = torch.tensor([[0.5, 0.01]], requires_grad=True)
    loss, clipfrac, _ = policy_loss(lp, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert lp.grad[0, 0] == 0  # ratio 1.65 > 1.2 with A > 0: clipped, no gradient
    torch.testing.assert_close(lp.grad[0, 1], torch.tensor(-math.exp(0.01) / 2))
    assert clipfrac.item() == 0.5


def test_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[0.0, 2.0]])
    # token 0: V=1 clipped to 0.5; max((1-0)^2, (0.5-0)^2) = 1
    # token 1: V=0 = old; max(4, 4) = 4;  loss = 0.5 * (1 + 4) / 2 = 1.25
    loss, clipfrac = value_loss(values, old, returns, torch.ones(1, 2), clip=0.5)
    torch.testing.assert_close(loss, torch.tensor(1.25))
    assert clipfrac.item() == 0.0


def test_masks_exclude_padding():
    x = torch.tensor([[1.0, 100.0]])
    assert masked_mean(x, torch.tensor([[1, 0]])).item() == 1.0
    assert masked_mean(x, torch.zeros(1, 2)).item() == 0.0


def test_explained_variance():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones(1, 4)
    assert explained_variance(r, r, m) == 1.0
    assert abs(explained_variance(torch.full_like(r, 2.5), r, m)) < 1e-12
    assert math.isnan(explained_variance(r, torch.ones(1, 4), m))


def test_adaptive_kl_controller_moves_beta_towards_target():
    c = AdaptiveKLController(beta=0.1, target=6.0, horizon=100)
    c.update(12.0, n_steps=10)  # KL twice the target: error clipped to +0.2
    assert abs(c.beta - 0.1 * (1 + 0.2 * 10 / 100)) < 1e-12
    c.update(3.0, n_steps=10)
    assert c.beta < 0.1 * 1.02
    state = c.state_dict()
    d = AdaptiveKLController(beta=1.0, target=6.0, horizon=100)
    d.load_state_dict(state)
    assert d.beta == c.beta
