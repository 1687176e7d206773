"""InstructGPT K-way ranking loss: every available rlhf_fast backend against ranking_loss_ref (the
explicit (B, K, K) pair mask + F.logsigmoid), eager and under torch.compile, side by side.
Mode "forward+backward": one timed call computes the loss and runs loss.backward().

    python -m benchmarks.bench_ranking_loss [--device cuda] [--dtype bfloat16] [--quick]
"""

from __future__ import annotations

import sys

import torch

from benchmarks._common import COMPILE_SKIPPED, bench_case, kernel_providers, simple_main, use_compile
from rlhf_fast import ops

MARGIN = 0.0
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # relative to max |reference|


def shapes(device: torch.device, quick: bool) -> list[tuple[int, int]]:
    if device.type == "cuda":
        return [(4096, 9), (65536, 9)] if quick else [(4096, 9), (65536, 9), (262144, 4), (131072, 16)]
    return [(512, 4), (4096, 9)] if quick else [(512, 4), (4096, 9), (1024, 16)]


def make_inputs(B: int, K: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Rewards and ranks like an RM batch: a strict ranking per prompt, ~10% of prompts with fewer
    than K responses (empty slots at the end, rank -1)."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, K, generator=g)
    ranks = torch.argsort(torch.rand(B, K, generator=g), dim=1)
    n = torch.where(torch.rand(B, generator=g) < 0.1, torch.randint(2, K + 1, (B,), generator=g), K)
    ranks = torch.where(ranks >= n[:, None], -1, ranks)  # a prompt with n responses: ranks 0..n-1, rest empty
    return rewards.to(device=device, dtype=dtype), ranks.to(device)


def forward_backward(loss_fn, rewards: torch.Tensor, ranks: torch.Tensor):
    """A call computing (loss, accuracy) and d loss / d rewards, as an RM training step does."""
    def call():
        r = rewards.detach().requires_grad_()
        loss, accuracy = loss_fn(r, ranks)
        loss.backward()
        return loss.detach(), accuracy, r.grad
    return call


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None):
    rows, skipped = [], []
    for B, K in shapes(device, quick):
        r, ranks = make_inputs(B, K, dtype, device)
        expected = forward_backward(lambda x, rk: ops.ranking_loss_ref(x.float(), rk, MARGIN), r, ranks)()
        providers = {
            "torch:ranking_loss_ref": forward_backward(lambda x, rk: ops.ranking_loss_ref(x, rk, MARGIN), r, ranks)}
        if use_compile(device, quick):
            compiled = torch.compile(ops.ranking_loss_ref, dynamic=False)
            providers["torch:ranking_loss_ref+compile"] = forward_backward(lambda x, rk: compiled(x, rk, MARGIN), r, ranks)
        else:
            skipped.append(COMPILE_SKIPPED)
        kernels, notes = kernel_providers(
            ops.available_backends(device),
            lambda b: forward_backward(lambda x, rk: ops.ranking_loss(x, rk, margin=MARGIN, backend=b), r, ranks),
            device)
        providers.update(kernels)
        skipped += notes
        # forward: read rewards + ranks, write the fp32 gradient; backward: read it, write d rewards
        bytes_moved = B * K * (2 * r.element_size() + ranks.element_size() + 2 * 4)
        rows += bench_case("ranking_loss", f"B={B} K={K}", dtype, "forward+backward", providers, expected, device,
                           tol=TOL[dtype], reference="torch:ranking_loss_ref", bytes_moved=bytes_moved,
                           reps=reps or (5 if quick else 20))
    return rows, skipped


def main(argv=None) -> int:
    return simple_main(run, "bench_ranking_loss", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
