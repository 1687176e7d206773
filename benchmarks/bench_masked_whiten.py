"""Masked whitening: every available rlhf_fast backend against masked_whiten_ref, side by side.

    python -m benchmarks.bench_masked_whiten [--device cuda] [--dtype bfloat16] [--quick]
"""

from __future__ import annotations

import sys

import torch

from benchmarks._common import COMPILE_SKIPPED, bench_case, kernel_providers, simple_main, use_compile
from rlhf_fast import ops

TOL = 1e-5  # fp64 statistics in every backend


def shapes(device: torch.device, quick: bool) -> list[tuple[int, int]]:
    if device.type == "cuda":
        return [(512, 4096)] if quick else [(512, 4096), (8192, 2048), (8192, 4096)]
    return [(256, 1024)] if quick else [(256, 1024), (1024, 2048)]


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None):
    rows, skipped = [], []
    for B, T in shapes(device, quick):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, generator=g).to(device, dtype)
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        m = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
        expected = ops.masked_whiten_ref(x.float(), m)
        providers = {"torch:masked_whiten_ref": lambda: ops.masked_whiten_ref(x, m)}
        if use_compile(device, quick):
            compiled = torch.compile(ops.masked_whiten_ref)
            providers["torch:masked_whiten_ref+compile"] = lambda: compiled(x, m)
        else:
            skipped.append(COMPILE_SKIPPED)
        kernels, notes = kernel_providers(ops.available_backends(device),
                                          lambda b: (lambda: ops.masked_whiten(x, m, backend=b)), device)
        providers.update(kernels)
        skipped += notes
        bytes_moved = B * T * (2 * x.element_size() + 2 + 4)  # x twice for the stats, mask, x + mask + out to apply
        rows += bench_case("masked_whiten", f"B={B} T={T}", dtype, "forward", providers, expected, device, tol=TOL,
                           reference="torch:masked_whiten_ref", bytes_moved=bytes_moved,
                           reps=reps or (5 if quick else 10))
    return rows, skipped


def main(argv=None) -> int:
    return simple_main(run, "bench_masked_whiten", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
