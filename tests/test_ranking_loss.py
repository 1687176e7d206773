import math

import pytest
import torch

from rlhf_fast import ops
from rlhf_fast.ops import BackendUnavailable
from tests.conftest import DEVICE, runnable_backends

BACKENDS = runnable_backends()
needs_ext = pytest.mark.skipif("cpu" not in BACKENDS and "cuda" not in BACKENDS, reason="rlhf_fast._C not built")


def ranked_batch(B, K, dtype=torch.float32, seed=0, device=DEVICE, scale=1.0):
    """Random rewards and ranks with ties, empty slots (-1, NaN rewards there) and rows without pairs."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, K, generator=g) * scale
    ranks = torch.randint(0, K, (B, K), generator=g)  # ties wherever values repeat
    for b in range(0, B, 3):
        ranks[b] = torch.randperm(K, generator=g)  # a full strict ranking
    ranks[torch.rand(B, K, generator=g) < 0.2] = -1  # empty slots
    ranks[0] = -1  # an empty prompt
    ranks[1] = -1
    ranks[1, 0] = 0  # a prompt with one response
    ranks[2] = 1  # all tied: no pair
    ranks[3] = torch.arange(K)  # a full ranking, so the batch always has pairs
    rewards = rewards.masked_fill(ranks < 0, float("nan"))  # empty slots' content must not leak
    return rewards.to(device, dtype), ranks.to(device)


def reference(rewards, ranks, margin):
    """fp32 reference loss, accuracy and d loss / d rewards."""
    r = rewards.detach().float().requires_grad_()
    loss, acc = ops.ranking_loss_ref(r, ranks, margin)
    (grad,) = torch.autograd.grad(loss, r)
    return loss.detach(), acc, grad


def run(rewards, ranks, margin, backend):
    r = rewards.detach().clone().requires_grad_()
    loss, acc = ops.ranking_loss(r, ranks, margin=margin, backend=backend)
    assert loss.shape == acc.shape == () and loss.dtype == acc.dtype == torch.float32
    assert not acc.requires_grad
    loss.backward()
    assert r.grad.dtype == rewards.dtype
    return loss.detach(), acc, r.grad


def test_hand_computed_k3():
    # Prompt 0: rewards [2, 0, 1], ranks [0, 1, 2] -> pairs (i above j): (0,1), (0,2), (1,2), P = 3,
    #   x = r_i - r_j = 2, 1, -1.   -log sigmoid(x) = softplus(-x):
    #   softplus(-2) = 0.126928, softplus(-1) = 0.313262, softplus(1) = 1.313262
    #   loss_0 = (0.126928 + 0.313262 + 1.313262) / 3 = 0.584484
    #   accuracy: r_i > r_j for (0,1) and (0,2), not (1,2) -> 2 / 3
    #   d/dx -log sigmoid(x) = -sigmoid(-x): sigmoid(-2) = 0.119203, sigmoid(-1) = 0.268941, sigmoid(1) = 0.731059
    #   d/dr0 = -(0.119203 + 0.268941) / 3 = -0.129381
    #   d/dr1 = (+0.119203 - 0.731059) / 3 = -0.203952
    #   d/dr2 = (+0.268941 + 0.731059) / 3 = +0.333333
    # Prompt 1: ranks [1, -1, 1]: one tie plus an empty slot (NaN reward) -> no pair, excluded from the mean,
    #   its gradient is 0. So loss = loss_0, and d loss / d rewards of prompt 0 is divided by 1 prompt.
    rewards = torch.tensor([[2.0, 0.0, 1.0], [5.0, float("nan"), 5.0]])
    ranks = torch.tensor([[0, 1, 2], [1, -1, 1]])
    expected_grad = torch.tensor([[-0.1293814, -0.2039519, 0.3333333], [0.0, 0.0, 0.0]])
    for backend in BACKENDS:
        loss, acc, grad = run(rewards.to(DEVICE), ranks.to(DEVICE), 0.0, backend)
        torch.testing.assert_close(loss.cpu(), torch.tensor(0.5844838), msg=backend)
        torch.testing.assert_close(acc.cpu(), torch.tensor(2 / 3), msg=backend)
        torch.testing.assert_close(grad.cpu(), expected_grad, msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K", [(5, 2), (9, 3), (17, 4), (11, 5), (23, 7), (33, 9), (7, 13), (19, 16)])
@pytest.mark.parametrize("margin", [0.0, 0.7])
def test_matches_reference_fp32(backend, B, K, margin):
    rewards, ranks = ranked_batch(B, K, seed=B * K)
    ref_loss, ref_acc, ref_grad = reference(rewards, ranks, margin)
    loss, acc, grad = run(rewards, ranks, margin, backend)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc, ref_acc, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert (grad[ranks < 0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_k_and_batch_spanning_many_blocks(backend):
    for B, K in [(300, 31), (4, 40)]:
        rewards, ranks = ranked_batch(B, K, seed=K)
        ref_loss, ref_acc, ref_grad = reference(rewards, ranks, 0.1)
        loss, acc, grad = run(rewards, ranks, 0.1, backend)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(acc, ref_acc, rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_reward_gaps_stay_finite(backend):
    rewards, ranks = ranked_batch(12, 6, seed=3)
    rewards = torch.where(torch.rand(rewards.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1e4, 1e4)
    rewards = rewards.to(DEVICE).masked_fill(ranks < 0, float("nan"))
    ref_loss, ref_acc, ref_grad = reference(rewards, ranks, 0.0)
    loss, acc, grad = run(rewards, ranks, 0.0, backend)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss > 100  # some pairs are ranked against a 2e4 gap: softplus(2e4) = 2e4, no overflow
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc, ref_acc)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_use_fp32_math(backend, dtype):
    rewards, ranks = ranked_batch(40, 9, dtype=dtype, seed=7, scale=3.0)
    ref_loss, ref_acc, ref_grad = reference(rewards, ranks, 0.25)  # fp32 math on the rounded inputs
    # The PyTorch low-precision path: the same reference computed in `dtype`.
    r_lp = rewards.detach().clone().requires_grad_()
    lp_loss, _ = ops.ranking_loss_ref(r_lp, ranks, 0.25)
    (lp_grad,) = torch.autograd.grad(lp_loss, r_lp)
    loss, acc, grad = run(rewards, ranks, 0.25, backend)
    assert grad.dtype == dtype
    lp_loss_err = (lp_loss.float() - ref_loss).abs().item()
    lp_grad_err = (lp_grad.float() - ref_grad).nan_to_num(0.0).abs().max().item()
    assert (loss - ref_loss).abs().item() <= 2 * lp_loss_err + 1e-6
    assert (grad.float() - ref_grad).abs().max().item() <= 2 * lp_grad_err + 1e-6
    torch.testing.assert_close(acc, ref_acc, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_int32_ranks(backend):
    rewards, ranks = ranked_batch(10, 6, seed=5)
    expected = reference(rewards, ranks, 0.0)
    got = run(rewards.t().contiguous().t(), ranks.int(), 0.0, backend)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ranks=torch.zeros(2, 4, dtype=torch.int64)), r"rewards \(2, 3\), ranks \(2, 4\)"),
        (dict(ranks=torch.zeros(2, 3)), "ranks must be an integer dtype"),
        (dict(ranks=torch.zeros(2, 3, dtype=torch.bool)), "ranks must be an integer dtype"),
        (dict(rewards=torch.zeros(2, 3, dtype=torch.int64)), "rewards must be float32, bfloat16 or float16"),
        (dict(rewards=torch.zeros(2, 3, dtype=torch.float64)), "rewards must be float32"),
        (dict(rewards=torch.zeros(6), ranks=torch.zeros(6, dtype=torch.int64)), "must be 2-D"),
        (dict(margin=float("nan")), "margin must be a finite number"),
    ],
)
def test_bad_input_errors_name_the_problem(kwargs, match):
    args = dict(rewards=torch.zeros(2, 3), ranks=torch.tensor([[0, 1, 2], [0, 1, -1]]), margin=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.ranking_loss(args["rewards"], args["ranks"], margin=args["margin"])


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the Triton interpreter computes inf - inf
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values_errors_name_the_problem(backend):
    ranks = torch.tensor([[0, 1, 2], [0, 1, -1]], device=DEVICE)
    for bad in (float("nan"), float("inf"), -float("inf")):
        rewards = torch.tensor([[0.0, 1.0, 2.0], [0.0, bad, 7.0]], device=DEVICE)
        with pytest.raises(ValueError, match=r"rewards \(2, 3\) hold 1 NaN or inf"):
            ops.ranking_loss(rewards, ranks, backend=backend)
    no_pairs = [
        torch.tensor([[0, -1, -1], [-1, -1, -1]]),  # fewer than 2 responses everywhere
        torch.tensor([[1, 1, -1], [0, -1, 0]]),  # only ties
        torch.zeros(0, 3, dtype=torch.int64),  # empty batch
    ]
    for rk in no_pairs:
        with pytest.raises(ValueError, match="no valid pair in the batch"):
            ops.ranking_loss(torch.zeros(rk.shape, device=DEVICE), rk.to(DEVICE), backend=backend)


def test_forced_unavailable_backend_says_why(monkeypatch):
    rewards, ranks = ranked_batch(4, 3, device="cpu")
    with pytest.raises(BackendUnavailable, match="ranking_loss: backend 'cuda' is unavailable"):
        ops.ranking_loss(rewards, ranks, backend="cuda")
    monkeypatch.setenv("RLHF_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="'cuda' is unavailable"):
        ops.ranking_loss(rewards, ranks)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ops.ranking_loss(rewards, ranks, backend="fast")


@needs_ext
def test_opcheck():
    rewards, ranks = ranked_batch(6, 5, device=DEVICE)
    rewards = rewards.nan_to_num(0.0)  # opcheck compares outputs with allclose: keep them NaN-free
    for r in (rewards.requires_grad_(), rewards.detach().bfloat16().requires_grad_()):
        torch.library.opcheck(torch.ops.rlhf_fast.ranking_loss.default, (r, ranks, 0.3))
    grad = torch.randn(6, 5, device=DEVICE)
    stats = torch.tensor([3, 10, 4, 0], device=DEVICE)
    torch.library.opcheck(torch.ops.rlhf_fast.ranking_loss_backward.default,
                          (torch.tensor(2.0, device=DEVICE), grad, stats, torch.bfloat16))


@needs_ext
def test_cpp_checks_name_the_argument():
    with pytest.raises(RuntimeError, match=r"rewards and ranks must have the same shape"):
        torch.ops.rlhf_fast.ranking_loss(torch.zeros(2, 3, device=DEVICE), torch.zeros(2, 4, dtype=torch.int64, device=DEVICE), 0.0)
    with pytest.raises(RuntimeError, match=r"ranks must be int64"):
        torch.ops.rlhf_fast.ranking_loss(torch.zeros(2, 3, device=DEVICE), torch.zeros(2, 3, dtype=torch.int32, device=DEVICE), 0.0)
    with pytest.raises(RuntimeError, match=r"margin must be finite"):
        torch.ops.rlhf_fast.ranking_loss(torch.zeros(2, 3, device=DEVICE), torch.zeros(2, 3, dtype=torch.int64, device=DEVICE), math.inf)
