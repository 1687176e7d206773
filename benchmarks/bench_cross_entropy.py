"""fused_linear_cross_entropy (the SFT loss): every available rlhf_fast backend against
F.cross_entropy on the full logits (F.linear, then cross-entropy, mean over non-ignored tokens), eager
and under torch.compile, side by side. Modes: forward (the loss) and full (loss, d hidden, d weight).

    python -m benchmarks.bench_cross_entropy [--device cuda] [--dtype bfloat16] [--quick]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from benchmarks._common import apply_threads, bench_case, compiled_reference, finish, kernel_providers, pick_device, standard_args
from benchmarks.bench_logprob import make_inputs
from rlhf_fast import ops


def shapes(device: torch.device, quick: bool) -> list[tuple[int, int, int]]:
    if device.type == "cuda":  # (tokens, hidden, vocabulary): Llama-3.2-1B, Llama-3-8B, Qwen2-7B-like heads
        return [(4096, 2048, 128256)] if quick else [
            (8192, 2048, 32000), (8192, 2048, 128256), (16384, 4096, 128256), (32768, 4096, 32000),
            (16384, 3584, 151936), (8192, 8192, 151936)]
    return [(512, 256, 8000)] if quick else [(2048, 512, 32000)]


def cross_entropy_ref(h, w, y):
    """The naive SFT loss: full (N, V) logits in the input dtype, then F.cross_entropy in fp32."""
    return F.cross_entropy(F.linear(h, w).float(), y, ignore_index=-100)


def forward_fn(f, h, w, y):
    def run():
        with torch.no_grad():
            return f(h, w, y)
    return run


def full_fn(f, h, w, y):
    h = h.detach().requires_grad_()
    w = w.detach().requires_grad_()

    def run():
        loss = f(h, w, y)
        gh, gw = torch.autograd.grad(loss, (h, w))
        return loss.detach(), gh, gw
    return run


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None, compile_ref: bool = True):
    rows, skipped = [], []
    compiled = compiled_reference(cross_entropy_ref, device, quick, skipped, enabled=compile_ref)
    for N, H, V in shapes(device, quick):
        h, w, y = make_inputs(N, H, V, dtype, device)
        tol = 2e-4 if dtype == torch.float32 else 3e-2
        for mode, wrap, flops in (("forward", forward_fn, 2 * N * H * V), ("full", full_fn, 6 * N * H * V)):
            expected = wrap(cross_entropy_ref, h.float(), w.float(), y)()
            if mode == "full":  # grads in the input dtype
                expected = tuple(e.to(dtype) if i else e for i, e in enumerate(expected))
            providers = {"torch:F.cross_entropy": wrap(cross_entropy_ref, h, w, y)}
            if compiled is not None:
                providers["torch:F.cross_entropy+compile"] = wrap(compiled, h, w, y)
            kernels, notes = kernel_providers(
                ops.available_backends(device),
                lambda b: wrap(lambda *a: ops.fused_linear_cross_entropy(*a, backend=b), h, w, y), device)
            providers.update(kernels)
            skipped += notes
            rows += bench_case("fused_linear_cross_entropy", f"N={N} H={H} V={V}", dtype, mode, providers, expected,
                               device, tol=tol, reference="torch:F.cross_entropy",
                               flops=flops if device.type == "cuda" else 0.0, reps=reps or 3)
            del expected
    return rows, skipped


def main(argv=None) -> int:
    p = standard_args(__doc__)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    args = p.parse_args(argv)
    apply_threads(args)
    device = pick_device(args.device)
    rows, skipped = run(device, getattr(torch, args.dtype), args.quick, args.reps, not args.no_compile)
    return finish(rows, "bench_cross_entropy", device, args, skipped)


if __name__ == "__main__":
    sys.exit(main())
