"""The InstructGPT K-way ranking loss of the reward model (Ouyang et al. 2022, eq. 1).

    loss, accuracy = ranking_loss(rewards, ranks, margin=0.0, backend="auto")

rewards: (B, K) float32/bfloat16/float16, the reward model's scalar per response.
ranks:   (B, K) integer, 0 = best, larger = worse; equal ranks are ties; -1 (any negative) marks
         an empty slot (prompts with fewer than K responses). Rewards at empty slots are ignored
         (they may hold any value, NaN included).

For prompt b with P_b ordered pairs "i above j" (rank_i < rank_j, both slots non-empty; ties
excluded), with x = r_i - r_j - margin:

    loss_b   = -(1 / P_b) * sum log sigmoid(x)          (= softplus(-x), computed stably)
    loss     = mean of loss_b over prompts with P_b > 0
    accuracy = (pairs with r_i > r_j) / (all pairs of the batch)

All math is fp32 whatever the input dtype; loss and accuracy are 0-dim fp32; loss is
differentiable w.r.t. rewards (the gradient comes back in rewards' dtype), accuracy is not.

The fused backends (cpu, cuda, triton) make one pass over each prompt's pairs that writes the
prompt's d loss_b / d rewards (already divided by P_b) and accumulates the batch sums; the
backward only scales that saved gradient by grad_output / (number of prompts with P_b > 0).

Bad input raises ValueError: shapes, dtypes, NaN/inf rewards at non-empty slots, or a batch with
no valid pair at all. The last two are read from counts the kernel produces, so the call waits
for the device once (one 4-value copy), as logging the loss would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_fast._ext import ext_available
from rlhf_fast.ops import _backend
from rlhf_fast.ops._checks import check_finite, check_float, check_same_device, check_same_shape


def ranking_loss_ref(rewards: torch.Tensor, ranks: torch.Tensor, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch reference, explicit pairs: a (B, K, K) pair mask and F.logsigmoid, computed in
    rewards' dtype (pass rewards.float() for fp32 math). rewards: (B, K); ranks: (B, K) int.
    Returns (loss, accuracy), 0-dim fp32. No input checks and no host syncs (torch.compile-able)."""
    valid = ranks >= 0
    above = (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, K, K): i above j
    r = torch.where(valid, rewards, 0.0)  # where, not multiply: empty slots may hold NaN
    diff = r[:, :, None] - r[:, None, :]  # r_i - r_j
    logsig = F.logsigmoid(diff - margin)
    pairs = above.sum(dim=(1, 2))  # P_b
    per_prompt = -torch.where(above, logsig, 0.0).sum(dim=(1, 2)) / pairs.clamp(min=1)
    has_pairs = pairs > 0
    loss = torch.where(has_pairs, per_prompt, 0.0).sum() / has_pairs.sum()
    accuracy = ((diff > 0) & above).sum() / pairs.sum()
    return loss.float(), accuracy.float().detach()


def _ref_stats(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """The counts the fused kernels return: (valid prompts, pairs, correct pairs, non-finite rewards)."""
    valid = ranks >= 0
    above = (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    pairs = above.sum(dim=(1, 2))
    r = rewards.detach().float()
    correct = (above & (r[:, :, None] > r[:, None, :])).sum()
    nonfinite = (valid & ~torch.isfinite(r)).sum()
    return torch.stack([(pairs > 0).sum(), pairs.sum(), correct, nonfinite])


def _prepare(rewards, ranks, margin):
    check_float("rewards", rewards)
    if not isinstance(ranks, torch.Tensor):
        raise ValueError(f"ranks must be a torch.Tensor, got {type(ranks).__name__}")
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be an integer dtype (int64; 0 = best, -1 = empty slot), got {ranks.dtype} "
                         f"(shape {tuple(ranks.shape)})")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be 2-D (B, K), got shape {tuple(rewards.shape)}")
    check_same_shape(("rewards", "ranks"), (rewards, ranks))
    check_same_device(("rewards", "ranks"), (rewards, ranks))
    check_finite(margin=margin)
    return rewards.contiguous(), ranks.to(torch.int64).contiguous()


def _check_counts(stats: torch.Tensor, shape: tuple[int, ...]) -> None:
    _, pairs, _, nonfinite = stats.tolist()  # the one host sync of the call
    if nonfinite:
        raise ValueError(f"rewards {shape} hold {nonfinite} NaN or inf value(s) at non-empty slots (rank >= 0)")
    if pairs == 0:
        raise ValueError(f"no valid pair in the batch (rewards/ranks {shape}): every prompt has fewer than 2 "
                         "non-empty slots with different ranks (ranks: 0 = best, -1 = empty slot)")


def ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor, *, margin: float = 0.0,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """rewards: (B, K) float; ranks: (B, K) int. Returns (loss, accuracy), 0-dim fp32; see the
    module docstring for the math."""
    rewards, ranks = _prepare(rewards, ranks, margin)
    chosen = _backend.resolve(backend, rewards.device, "ranking_loss")
    if chosen == "torch":
        loss, accuracy = ranking_loss_ref(rewards.float(), ranks, float(margin))
        stats = _ref_stats(rewards, ranks)
    elif chosen == "triton":
        from rlhf_fast.ops._triton_ranking_loss import TritonRankingLoss

        loss, accuracy, stats = TritonRankingLoss.apply(rewards, ranks, float(margin))
    else:  # "cpu" and "cuda" are the same dispatcher op; the tensor's device picks the kernel
        loss, accuracy, _, stats = torch.ops.rlhf_fast.ranking_loss(rewards, ranks, float(margin))
    _check_counts(stats, tuple(rewards.shape))
    return loss, accuracy.detach()


if ext_available():

    @torch.library.register_fake("rlhf_fast::ranking_loss")
    def _ranking_loss_fake(rewards, ranks, margin):
        torch._check(rewards.dim() == 2)
        scalar = rewards.new_empty((), dtype=torch.float32)
        return (scalar, torch.empty_like(scalar), rewards.new_empty(rewards.shape, dtype=torch.float32),
                rewards.new_empty((4,), dtype=torch.int64))

    @torch.library.register_fake("rlhf_fast::ranking_loss_backward")
    def _ranking_loss_backward_fake(grad_loss, grad, stats, dtype):
        return grad.new_empty(grad.shape, dtype=dtype)

    def _setup_context(ctx, inputs, output):
        rewards, _, _ = inputs
        _, accuracy, grad, stats = output
        ctx.save_for_backward(grad, stats)
        ctx.rewards_dtype = rewards.dtype
        ctx.mark_non_differentiable(accuracy, grad, stats)
        ctx.set_materialize_grads(False)  # no zero tensors for the outputs that take no gradient

    def _backward(ctx, grad_loss, _grad_accuracy, _grad_grad, _grad_stats):
        grad, stats = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None
        d_rewards = torch.ops.rlhf_fast.ranking_loss_backward(grad_loss.float(), grad, stats, ctx.rewards_dtype)
        return d_rewards, None, None

    torch.library.register_autograd("rlhf_fast::ranking_loss", _backward, setup_context=_setup_context)
