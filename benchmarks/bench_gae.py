"""GAE: every available rlhf_fast backend against gae_ref (the per-timestep loop), side by side.

    python -m benchmarks.bench_gae [--device cuda] [--dtype bfloat16] [--quick]
"""

from __future__ import annotations

import sys

import torch

from benchmarks._common import COMPILE_SKIPPED, bench_case, kernel_providers, simple_main, use_compile
from rlhf_fast import ops

GAMMA, LAM = 1.0, 0.95
TOL = 2e-5  # fp32 math everywhere; only summation order differs


def shapes(device: torch.device, quick: bool) -> list[tuple[int, int]]:
    if device.type == "cuda":
        return [(64, 512), (512, 4096)] if quick else [(64, 512), (512, 4096), (8192, 2048), (8192, 4096)]
    return [(16, 128), (256, 1024)] if quick else [(16, 128), (256, 1024), (1024, 1024), (64, 4096)]


def make_inputs(B: int, T: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g).to(device=device, dtype=dtype)
    values = torch.randn(B, T, generator=g).to(device=device, dtype=dtype)
    lengths = torch.randint(0, T + 1, (B,), generator=g)  # right padding, some rows empty
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
    return rewards, values, mask


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None):
    rows, skipped = [], []
    for B, T in shapes(device, quick):
        r, v, m = make_inputs(B, T, dtype, device)
        expected = ops.gae_ref(r.float(), v.float(), m, GAMMA, LAM)
        providers = {"torch:gae_ref": lambda: ops.gae_ref(r, v, m, GAMMA, LAM)}
        if not use_compile(device, quick):
            skipped.append(COMPILE_SKIPPED)
        elif T <= 128:  # torch.compile unrolls the loop: compile time grows with T
            compiled = torch.compile(ops.gae_ref)
            providers["torch:gae_ref+compile"] = lambda: compiled(r, v, m, GAMMA, LAM)
        else:
            skipped.append("torch.compile for T > 128: the T-step loop unrolls, compile time grows with T")
        kernels, notes = kernel_providers(ops.available_backends(device),
                                          lambda b: (lambda: ops.gae(r, v, m, GAMMA, LAM, backend=b)), device)
        providers.update(kernels)
        skipped += notes
        bytes_moved = B * T * (2 * r.element_size() + 1 + 2 * 4)  # read r, v, mask; write A, returns
        rows += bench_case("gae", f"B={B} T={T}", dtype, "forward", providers, expected, device, tol=TOL,
                           reference="torch:gae_ref", bytes_moved=bytes_moved,
                           reps=reps or (5 if quick else 10))
    return rows, skipped


def main(argv=None) -> int:
    return simple_main(run, "bench_gae", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
