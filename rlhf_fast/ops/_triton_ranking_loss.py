"""Triton InstructGPT ranking loss: forward in one launch, backward one elementwise launch.

Each program walks tiles of BLOCK_B prompts (grid-stride over tiles). A tile is loaded as
(BLOCK_B, BLOCK_K) rewards and ranks (K padded to a power of 2, padding rank -1 = empty slot), and
the pair matrix is built by broadcasting to (BLOCK_B, BLOCK_K, BLOCK_K), slot i on axis 1 and slot
j on axis 2. With x = r_i - r_j - margin over pairs "i above j" (rank_i < rank_j, both >= 0):

    loss_b    = (1 / P_b) sum softplus(-x)          softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
    dloss_b/dr_k = (1 / P_b) (sum_{pairs (i, k)} sigmoid(-x) - sum_{pairs (k, j)} sigmoid(-x))

both from one exp(-|x|) per pair. The per-prompt gradient goes straight to memory; the batch sums
(loss over prompts with P_b > 0, valid prompts, pairs, correct pairs, non-finite rewards) go to a
small workspace with one scalar atomic each per program, and the last program to take a ticket
(atomic counter, acq_rel) writes the mean loss, the accuracy and the stats. So the forward is one
Triton launch, plus the zero-fill of the 48-byte workspace. Reference: Ouyang et al. 2022
(InstructGPT), eq. 1, https://arxiv.org/abs/2203.02155.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_PROGRAMS = 1024  # grid-stride beyond this: bounds the number of same-address atomics


@triton.jit
def _ranking_loss_fwd_kernel(grad_ptr, loss_ptr, acc_ptr, stats_ptr, ws_loss_ptr, ws_count_ptr,
                             rewards_ptr, ranks_ptr, B, K, margin, num_tiles,
                             BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_k = tl.arange(0, BLOCK_K)
    loss_acc = tl.zeros([BLOCK_B], tl.float32)  # per prompt lane, summed over this program's tiles
    valid_acc = tl.zeros([BLOCK_B], tl.int32)
    pairs_acc = tl.zeros([BLOCK_B], tl.int32)
    correct_acc = tl.zeros([BLOCK_B], tl.int32)
    nonfinite_acc = tl.zeros([BLOCK_B, BLOCK_K], tl.int32)
    for tile in range(pid, num_tiles, nprog):
        rows = offs_b.to(tl.int64) + tile * BLOCK_B  # int64 so rows * K may pass 2^31 (tile * BLOCK_B < B + BLOCK_B)
        row_ok = rows < B
        idx = rows[:, None] * K + offs_k[None, :]
        in_bounds = row_ok[:, None] & (offs_k[None, :] < K)
        rank = tl.load(ranks_ptr + idx, mask=in_bounds, other=-1)  # padding = empty slot
        slot = rank >= 0
        r = tl.load(rewards_ptr + idx, mask=in_bounds, other=0.0).to(tl.float32)  # fp32 math
        finite = (r == r) & (tl.abs(r) != float("inf"))
        nonfinite_acc += (slot & (finite == 0)).to(tl.int32)
        r = tl.where(slot, r, 0.0)  # garbage (NaN) in empty slots never enters the math
        ri = r[:, :, None]
        rj = r[:, None, :]
        above = (slot[:, :, None] & slot[:, None, :]) & (rank[:, :, None] < rank[:, None, :])
        x = ri - rj - margin
        e = tl.exp(-tl.abs(x))  # in (0, 1]: no overflow for any gap
        # log1p(e): the series below 1e-4, where log(1 + e) would lose e to rounding.
        log1p_e = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
        softplus_neg = tl.maximum(-x, 0.0) + log1p_e  # -log sigmoid(x)
        sigmoid_neg = tl.where(x >= 0, e, 1.0) / (1.0 + e)  # sigmoid(-x), stable both ways
        s = tl.where(above, sigmoid_neg, 0.0)
        pairs = tl.sum(tl.sum(above.to(tl.int32), axis=2), axis=1)
        loss = tl.sum(tl.sum(tl.where(above, softplus_neg, 0.0), axis=2), axis=1)
        correct = tl.sum(tl.sum((above & (ri > rj)).to(tl.int32), axis=2), axis=1)
        # d/dr_k: +s of pairs where k is below (sum over i, axis 1), -s where k is above (axis 2).
        g = tl.sum(s, axis=1) - tl.sum(s, axis=2)
        inv = tl.where(pairs > 0, 1.0 / tl.maximum(pairs, 1).to(tl.float32), 0.0)
        tl.store(grad_ptr + idx, g * inv[:, None], mask=in_bounds)
        has = row_ok & (pairs > 0)
        loss_acc += tl.where(has, loss * inv, 0.0)
        valid_acc += has.to(tl.int32)
        pairs_acc += pairs
        correct_acc += correct
    # One scalar atomic per sum per program (default sem acq_rel, scope gpu).
    tl.atomic_add(ws_loss_ptr, tl.sum(loss_acc.to(tl.float64), axis=0))
    tl.atomic_add(ws_count_ptr + 0, tl.sum(valid_acc.to(tl.int64), axis=0))
    tl.atomic_add(ws_count_ptr + 1, tl.sum(pairs_acc.to(tl.int64), axis=0))
    tl.atomic_add(ws_count_ptr + 2, tl.sum(correct_acc.to(tl.int64), axis=0))
    tl.atomic_add(ws_count_ptr + 3, tl.sum(tl.sum(nonfinite_acc, axis=1).to(tl.int64), axis=0))
    ticket = tl.atomic_add(ws_count_ptr + 4, 1)  # acq_rel: the sums above are visible before it
    if ticket == nprog - 1:  # the last program finalizes; reads go through atomics (L2, never stale)
        loss_sum = tl.atomic_add(ws_loss_ptr, 0.0)
        valid = tl.atomic_add(ws_count_ptr + 0, 0)
        n_pairs = tl.atomic_add(ws_count_ptr + 1, 0)
        n_correct = tl.atomic_add(ws_count_ptr + 2, 0)
        n_nonfinite = tl.atomic_add(ws_count_ptr + 3, 0)
        mean = tl.where(valid > 0, loss_sum / tl.maximum(valid, 1).to(tl.float64), 0.0)
        accuracy = tl.where(n_pairs > 0, n_correct.to(tl.float64) / tl.maximum(n_pairs, 1).to(tl.float64), 0.0)
        tl.store(loss_ptr, mean.to(tl.float32))
        tl.store(acc_ptr, accuracy.to(tl.float32))
        tl.store(stats_ptr + 0, valid)
        tl.store(stats_ptr + 1, n_pairs)
        tl.store(stats_ptr + 2, n_correct)
        tl.store(stats_ptr + 3, n_nonfinite)


@triton.jit
def _ranking_loss_bwd_kernel(out_ptr, grad_ptr, grad_loss_ptr, stats_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    valid = tl.load(stats_ptr)  # prompts with P_b > 0, read on the device: no host sync
    scale = tl.where(valid > 0, tl.load(grad_loss_ptr) / tl.maximum(valid, 1).to(tl.float32), 0.0)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, (g * scale).to(out_ptr.dtype.element_ty), mask=mask)


def ranking_loss_triton_forward(rewards: torch.Tensor, ranks: torch.Tensor, margin: float):
    """rewards: (B, K) contiguous float; ranks: (B, K) contiguous int64.
    Returns loss (), accuracy () fp32, grad (B, K) fp32 = d loss_b / d rewards / P_b, stats (4,) int64."""
    B, K = rewards.shape
    dev = rewards.device
    grad = torch.empty(B, K, dtype=torch.float32, device=dev)
    loss = torch.empty((), dtype=torch.float32, device=dev)
    accuracy = torch.empty((), dtype=torch.float32, device=dev)
    stats = torch.empty(4, dtype=torch.int64, device=dev)
    workspace = torch.zeros(6, dtype=torch.int64, device=dev)  # [loss sum (fp64 bits), 4 counts, ticket]
    block_k = max(2, triton.next_power_of_2(max(K, 1)))
    block_b = max(1, min(128, 2048 // (block_k * block_k)))
    num_tiles = triton.cdiv(B, block_b)
    grid = (max(1, min(num_tiles, MAX_PROGRAMS)),)  # one program even for B = 0: it writes the outputs
    _ranking_loss_fwd_kernel[grid](grad, loss, accuracy, stats, workspace[:1].view(torch.float64), workspace[1:],
                                   rewards, ranks, B, K, float(margin), num_tiles,
                                   BLOCK_B=block_b, BLOCK_K=block_k, num_warps=4)
    return loss, accuracy, grad, stats


def ranking_loss_triton_backward(grad_loss: torch.Tensor, grad: torch.Tensor, stats: torch.Tensor,
                                 dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(grad.shape, dtype=dtype, device=grad.device)
    n = grad.numel()
    if n:
        block = 1024
        _ranking_loss_bwd_kernel[(triton.cdiv(n, block),)](out, grad, grad_loss.float().contiguous(), stats, n,
                                                           BLOCK=block, num_warps=4)
    return out


class TritonRankingLoss(torch.autograd.Function):
    """Autograd around the two Triton kernels: backward = one elementwise launch."""

    @staticmethod
    def forward(ctx, rewards, ranks, margin):
        loss, accuracy, grad, stats = ranking_loss_triton_forward(rewards, ranks, margin)
        ctx.save_for_backward(grad, stats)
        ctx.rewards_dtype = rewards.dtype
        ctx.mark_non_differentiable(accuracy, stats)
        ctx.set_materialize_grads(False)  # no zero tensors for accuracy and stats
        return loss, accuracy, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_accuracy, _grad_stats):
        grad, stats = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None
        return ranking_loss_triton_backward(grad_loss, grad, stats, ctx.rewards_dtype), None, None
