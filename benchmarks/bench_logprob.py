"""fused_linear_logprobs: every available rlhf_fast backend against the naive reference (full
logits, log_softmax, gather) in eager mode and under torch.compile, side by side; forward,
forward+backward (gradients of hidden and weight), and forward+backward of log-probs + entropy + k3 KL
(PPO's call), time and peak memory.

    python -m benchmarks.bench_logprob [--device cuda] [--dtype bfloat16] [--quick]

Targets: CPU, N=4096 H=512 V=32000 fp32 forward+backward: no slower than the reference, peak
extra memory <= 25% of the reference's. GPU, N=16384 H=4096 V=128256 bf16: peak extra memory within
2x of hidden + weight + their gradients, >= 60% of dense bf16 peak counting 6 N H V flops.
"""

from __future__ import annotations

import importlib
import sys

import torch

from benchmarks._common import apply_threads, bench_case, compiled_reference, finish, kernel_providers, pick_device, standard_args
from rlhf_fast import ops

flp = importlib.import_module("rlhf_fast.ops.fused_linear_logprobs")


def shapes(device: torch.device, quick: bool) -> list[tuple[int, int, int]]:
    if device.type == "cuda":  # Llama-3.2-1B / Llama-3-8B / Qwen2-7B-like heads (V = 32k / 128k / 152k, H = 2k..8k)
        return [(4096, 4096, 32000)] if quick else [
            (4096, 4096, 32000), (8192, 2048, 128256), (16384, 4096, 128256), (32768, 4096, 32000),
            (8192, 3584, 151936), (16384, 8192, 151936)]
    return [(512, 256, 8000)] if quick else [(4096, 512, 32000)]


def make_inputs(N: int, H: int, V: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g) / H**0.5).to(device=device, dtype=dtype)
    weight = (torch.randn(V, H, generator=g) * 2.0).to(device=device, dtype=dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::7] = -100  # some prompt / padding tokens
    return hidden, weight, labels.to(device)


def forward_fn(f, h, w, y):
    def run():
        with torch.no_grad():
            return f(h, w, y).logprobs
    return run


def full_fn(f, h, w, y):
    h = h.detach().requires_grad_()
    w = w.detach().requires_grad_()

    def run():
        lp = f(h, w, y).logprobs
        gh, gw = torch.autograd.grad(lp.sum(), (h, w))
        return lp.detach(), gh, gw
    return run


_REF_LP: dict = {}


def _reference_logprobs(h, w, y):
    """A frozen reference policy close to the current one, as in PPO: the fp32 log-probs + N(0, 0.1)."""
    key = (tuple(h.shape), tuple(w.shape), y.data_ptr())
    if key not in _REF_LP:
        _REF_LP.clear()
        with torch.no_grad():
            lp = ops.fused_linear_logprobs_ref(h.float(), w.float(), y).logprobs
        g = torch.Generator().manual_seed(1)
        _REF_LP[key] = lp + 0.1 * torch.randn(lp.shape, generator=g).to(lp.device)
    return _REF_LP[key]


def full_ent_kl_fn(f, h, w, y):
    """PPO's call: log-probs, entropy and the k3 KL to a frozen reference, all three differentiated."""
    h = h.detach().requires_grad_()
    w = w.detach().requires_grad_()
    ref_lp = _reference_logprobs(h, w, y)

    def run():
        out = f(h, w, y, ref_logprobs=ref_lp, kl_estimator="k3", compute_entropy=True)
        gh, gw = torch.autograd.grad(out.logprobs.sum() + 0.01 * out.entropy.sum() + 0.1 * out.kl.sum(), (h, w))
        return out.logprobs.detach(), out.entropy.detach(), out.kl.detach(), gh, gw
    return run


def run(device: torch.device, dtype: torch.dtype, quick: bool, reps: int | None = None, compile_ref: bool = True):
    rows, skipped = [], []
    ref = ops.fused_linear_logprobs_ref
    compiled = compiled_reference(ref, device, quick, skipped, enabled=compile_ref)
    for N, H, V in shapes(device, quick):
        h, w, y = make_inputs(N, H, V, dtype, device)
        h32, w32 = h.float(), w.float()
        tol = 2e-4 if dtype == torch.float32 else 3e-2
        for mode, wrap, flops in (("forward", forward_fn, 2 * N * H * V), ("full", full_fn, 6 * N * H * V),
                                  ("full+entropy+kl", full_ent_kl_fn, 6 * N * H * V)):
            expected = wrap(ref, h32, w32, y)()
            if mode != "forward":  # grads (the last two outputs) in the input dtype
                expected = tuple(e.to(dtype) if i >= len(expected) - 2 else e for i, e in enumerate(expected))
            providers = {"torch:ref": wrap(ref, h, w, y)}
            if compiled is not None:
                providers["torch:ref+compile"] = wrap(compiled, h, w, y)
            kernels, notes = kernel_providers(
                ops.available_backends(device),
                lambda b: wrap(lambda *a, **kw: ops.fused_linear_logprobs(*a, **kw, backend=b), h, w, y), device)
            providers.update(kernels)
            skipped += notes
            rows += bench_case("fused_linear_logprobs", f"N={N} H={H} V={V}", dtype, mode, providers, expected,
                               device, tol=tol, reference="torch:ref", flops=flops if device.type == "cuda" else 0.0,
                               reps=reps or 3)
            for r in rows[-len(providers):]:
                r.extra["tiles"] = str(flp.TILES)
                if device.type == "cuda":  # the GPU memory target's yardstick
                    r.extra["hidden+weight+grads_mb"] = 2 * (h.numel() + w.numel()) * h.element_size() / 2**20
            del expected
    return rows, skipped


def main(argv=None) -> int:
    p = standard_args(__doc__)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    p.add_argument("--tiles", default=None, help="override the tile sizes of the device's backends: BN,BV")
    args = p.parse_args(argv)
    apply_threads(args)
    device = pick_device(args.device)
    if args.tiles:
        bn, bv = (int(x) for x in args.tiles.split(","))
        for key in (("cpu",) if device.type == "cpu" else ("cuda", "triton")):
            flp.TILES[key] = (bn, bv)
    rows, skipped = run(device, getattr(torch, args.dtype), args.quick, args.reps, not args.no_compile)
    return finish(rows, "bench_logprob", device, args, skipped)


if __name__ == "__main__":
    sys.exit(main())
