"""Per-token log-probs, entropy and KL straight from the last hidden states and the LM head,
without materializing the (tokens x vocabulary) logits.

    out = fused_linear_logprobs(hidden, weight, labels, bias=None, temperature=1.0,
                                ref_logprobs=None, kl_estimator="k3", compute_entropy=False,
                                ignore_index=-100, backend="auto")
    out.logprobs  (N,) fp32   log_softmax(hidden @ weight.T (+ bias) / temperature)[n, labels[n]]
    out.entropy   (N,) fp32   -sum_v p log p of the token distribution, or None
    out.kl        (N,) fp32   KL estimate against ref_logprobs, or None (d = ref - lp):
                              k1 = -d,  k2 = d^2 / 2,  k3 = exp(d) - d - 1   (Schulman's estimators)

hidden: (N, H), weight: (V, H), bias: (V,), labels: (N,) int, ref_logprobs: (N,) (a constant).
All three outputs are 0 where labels == ignore_index and differentiable w.r.t. hidden, weight and
bias. Also `logprobs_from_logits` (same outputs from existing logits (N, V), one pass, no
log_softmax tensor) and `fused_linear_cross_entropy` (token NLL for SFT).

Math (rlhf_fast/logprobs_math.h): per token, z = logits / temperature, lse = logsumexp(z),
mu = sum_v p_v z_v; logprob = z_y - lse, entropy = lse - mu. The forward keeps an online
log-sum-exp over vocabulary tiles (running max m, s = sum exp(z - m), t = sum exp(z - m) z) and saves
only lse and mu per token. The backward recomputes each logits tile and forms

    dL/dz_v = g_lp ([v == y] - p_v) - g_ent p_v (z_v - mu),   g_lp += g_kl * dkl/dlp
    (dk1/dlp = 1, dk2/dlp = lp - ref, dk3/dlp = 1 - exp(ref - lp))

then grad_hidden += dL/dx @ W_tile, grad_W_tile = dL/dx^T @ hidden, grad_b_tile = sum_n dL/dx
with dL/dx = dL/dz / temperature. (Apple's cut-cross-entropy, arXiv:2411.09009; Liger's
fused linear cross-entropy.)

Backends: "torch" is the naive reference (full logits); "cpu" and "cuda" tile in Python around the
dispatcher ops rlhf_fast::logprobs_fwd_tile_ / logprobs_bwd_tile_ (the GEMM of each tile in torch:
MKL/oneDNN or cuBLAS); "triton" fuses the tile GEMM (tl.dot) with the online log-sum-exp in the
forward and with the gradient epilogue in the backward, the two backward GEMMs staying in cuBLAS.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhf_fast._ext import ext_available
from rlhf_fast.ops import _backend
from rlhf_fast.ops._checks import check_float, check_same_device
from rlhf_fast.ops._logprobs_common import finish_stats

KL_ESTIMATORS = ("k1", "k2", "k3")
_PREFERENCE = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}

# Tile sizes (tokens, vocabulary) of the tiled paths. CPU values were tuned with
# benchmarks/bench_logprob.py on a 2-core x86 machine (N=4096, H=512, V=32000, fp32): a whole-batch
# token tile keeps the tile GEMMs large; the vocabulary tile bounds the extra memory (one fp32
# N x BV buffer). On CUDA the token tile is large so each vocabulary tile's weight gradient is one
# GEMM with fp32 accumulation inside cuBLAS.
TILES = {"cpu": (4096, 2048), "cuda": (16384, 4096), "triton": (16384, 4096)}


class LogprobsOutput(NamedTuple):
    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    kl: torch.Tensor | None


# ----------------------------------------------------------------------------- shared math


def kl_from_logprobs(lp: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate of the policy against the reference from the two log-probs."""
    d = ref - lp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.expm1(d) - d  # k3 = exp(d) - d - 1; expm1 keeps it exact near d = 0


def kl_grad_factor(lp: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """d kl / d lp of the estimator."""
    if estimator == "k1":
        return torch.ones_like(lp)
    if estimator == "k2":
        return lp - ref
    return -torch.expm1(ref - lp)  # 1 - exp(ref - lp)


def _outputs_from_logp(logp, labels, valid, ref, kl_estimator, compute_entropy) -> LogprobsOutput:
    safe = torch.where(valid, labels, 0)
    lp = torch.where(valid, logp.gather(-1, safe[:, None]).squeeze(-1), 0.0)
    ent = kl = None
    if compute_entropy:
        p = logp.exp()
        # p log p := 0 where p = 0 (masked vocabulary: logp = -inf), also for the gradient.
        ent = torch.where(valid, -(p * logp.masked_fill(p == 0, 0.0)).sum(-1), 0.0)
    if ref is not None:
        kl = torch.where(valid, kl_from_logprobs(lp, ref.float(), kl_estimator), 0.0)
    return LogprobsOutput(lp, ent, kl)


# ----------------------------------------------------------------------------- references


def logprobs_from_logits_ref(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                             ref_logprobs: torch.Tensor | None = None, kl_estimator: str = "k3",
                             compute_entropy: bool = False, ignore_index: int = -100) -> LogprobsOutput:
    """Naive PyTorch: log_softmax over the full (N, V) logits in fp32, then gather."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return _outputs_from_logp(logp, labels, labels != ignore_index, ref_logprobs, kl_estimator, compute_entropy)


def fused_linear_logprobs_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                              bias: torch.Tensor | None = None, temperature: float = 1.0,
                              ref_logprobs: torch.Tensor | None = None, kl_estimator: str = "k3",
                              compute_entropy: bool = False, ignore_index: int = -100) -> LogprobsOutput:
    """Naive PyTorch: logits = hidden @ weight.T (+ bias) in the input dtype, then
    logprobs_from_logits_ref. Materializes the (N, V) logits and their log_softmax."""
    logits = F.linear(hidden, weight, bias)
    return logprobs_from_logits_ref(logits, labels, temperature=temperature, ref_logprobs=ref_logprobs,
                                    kl_estimator=kl_estimator, compute_entropy=compute_entropy,
                                    ignore_index=ignore_index)


# ----------------------------------------------------------------------------- input checks


def _check_common(N: int, V: int, labels, device, temperature, ref_logprobs, kl_estimator, ignore_index,
                  what: str):
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype} (shape {tuple(labels.shape)})")
    if tuple(labels.shape) != (N,):
        raise ValueError(f"labels must have shape (N,) = ({N},) to match {what}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on {device} like {what.split()[0]}, got {labels.device}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if ref_logprobs is not None:
        check_float("ref_logprobs", ref_logprobs)
        if tuple(ref_logprobs.shape) != (N,):
            raise ValueError(f"ref_logprobs must have shape (N,) = ({N},) like labels, got {tuple(ref_logprobs.shape)}")
        if ref_logprobs.device != device:
            raise ValueError(f"ref_logprobs must be on {device}, got {ref_logprobs.device}")
    labels = labels.long()
    valid = labels != ignore_index
    if N and bool(((labels < 0) | (labels >= V)).logical_and_(valid).any()):
        bad = labels[valid & ((labels < 0) | (labels >= V))]
        raise ValueError(f"labels must lie in [0, V) = [0, {V}) or equal ignore_index={ignore_index}; "
                         f"got {bad[:5].tolist()} (labels shape {tuple(labels.shape)})")
    # Kernels mark ignored tokens with a negative label.
    safe = torch.where(valid, labels, -1).contiguous()
    ref = None if ref_logprobs is None else ref_logprobs.detach().float().contiguous()
    return safe, ref


def _prepare_linear(hidden, weight, labels, bias, temperature, ref_logprobs, kl_estimator, ignore_index):
    check_float("hidden", hidden)
    check_float("weight", weight)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D (N, H), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must be (V, H) with H = {hidden.shape[1]} (hidden {tuple(hidden.shape)}), "
                         f"got shape {tuple(weight.shape)}")
    check_same_device(("hidden", "weight"), (hidden, weight))
    N, V = hidden.shape[0], weight.shape[0]
    if bias is not None:
        check_float("bias", bias)
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias must have shape (V,) = ({V},) (weight {tuple(weight.shape)}), got {tuple(bias.shape)}")
        check_same_device(("hidden", "bias"), (hidden, bias))
    safe, ref = _check_common(N, V, labels, hidden.device, temperature, ref_logprobs, kl_estimator,
                              ignore_index, f"hidden {tuple(hidden.shape)}")
    dtypes = {hidden.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1:  # mixed precisions: compute from fp32 copies (autograd casts the grads back)
        hidden, weight = hidden.float(), weight.float()
        bias = None if bias is None else bias.float()
    return hidden, weight, bias, safe, ref


# ----------------------------------------------------------------------------- tiled engine


def _tile_buffer(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return buf.view(-1)[: rows * cols].view(rows, cols)  # contiguous (rows, cols) view of a scratch


class _OpsKernels:
    """Tile GEMM in torch (MKL / oneDNN / cuBLAS) + the dispatcher epilogue ops (C++ CPU or CUDA)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        # CPU: fp32 tiles whatever the input dtype (fp32 GEMMs are the fast ones there and the
        # gradient tiles stay exact). CUDA: tiles in the input dtype, fp32 accumulation in cuBLAS.
        self.compute_dtype = torch.float32 if device.type == "cpu" else dtype
        self.tiles = TILES["cpu" if device.type == "cpu" else "cuda"]

    def logits_tile(self, out, h, w, b):
        if b is None:
            torch.mm(h, w.t(), out=out)
        else:
            torch.addmm(b, h, w.t(), out=out)
        return out

    def forward_stats(self, h, weight, bias, labels, inv_temp, want_ent):
        N, V = h.shape[0], weight.shape[0]
        BN, BV = min(self.tiles[0], max(N, 1)), min(self.tiles[1], max(V, 1))
        f32 = dict(dtype=torch.float32, device=h.device)
        m = torch.full((N,), -math.inf, **f32)
        s, t, tgt = torch.zeros(N, **f32), torch.zeros(N, **f32), torch.zeros(N, **f32)
        buf = torch.empty(BN * BV, dtype=self.compute_dtype, device=h.device)
        for v0 in range(0, V, BV):
            v1 = min(V, v0 + BV)
            w = weight[v0:v1].to(self.compute_dtype)
            b = None if bias is None else bias[v0:v1].to(self.compute_dtype)
            for n0 in range(0, N, BN):
                n1 = min(N, n0 + BN)
                x = self.logits_tile(_tile_buffer(buf, n1 - n0, v1 - v0), h[n0:n1], w, b)
                torch.ops.rlhf_fast.logprobs_fwd_tile_(x, labels[n0:n1], v0, inv_temp, m[n0:n1], s[n0:n1],
                                                       t[n0:n1], tgt[n0:n1], want_ent)
        return finish_stats(m, s, t, tgt, want_ent)

    def grad_tile(self, out, h, w, b, labels, v0, inv_temp, saved, g_lp, g_ent):
        x = self.logits_tile(out, h, w, b)
        torch.ops.rlhf_fast.logprobs_bwd_tile_(x, labels, v0, inv_temp, *saved, g_lp, g_ent)
        return x


def _tiled_backward(kern, h, weight, bias, labels, inv_temp, saved, g_lp, g_ent, needs):
    """grad_hidden, grad_weight, grad_bias from recomputed gradient tiles dL/dx (tile by tile)."""
    need_h, need_w, need_b = needs
    N, H = h.shape
    V = weight.shape[0]
    cd = kern.compute_dtype
    BN, BV = min(kern.tiles[0], max(N, 1)), min(kern.tiles[1], max(V, 1))
    f32 = dict(dtype=torch.float32, device=h.device)
    gh = torch.zeros(N, H, **f32) if need_h else None
    # empty, not zeros: every vocabulary tile is written by its first token tile (N = 0: no tile)
    gw = (torch.empty if N else torch.zeros)(V, H, dtype=cd, device=h.device) if need_w else None
    gb = torch.empty(V, **f32) if need_b else None
    buf = torch.empty(BN * BV, dtype=cd, device=h.device)
    multi_n = N > BN
    for v0 in range(0, V, BV):
        v1 = min(V, v0 + BV)
        w = weight[v0:v1].to(cd)
        b = None if bias is None else bias[v0:v1].to(cd)
        # With several token tiles, this vocabulary tile's weight gradient accumulates in fp32.
        gw_acc = torch.zeros(v1 - v0, H, **f32) if (need_w and multi_n and cd != torch.float32) else None
        if need_b:
            gb[v0:v1].zero_()
        for i, n0 in enumerate(range(0, N, BN)):
            n1 = min(N, n0 + BN)
            hn = h[n0:n1]
            gx = kern.grad_tile(_tile_buffer(buf, n1 - n0, v1 - v0), hn, w, b, labels[n0:n1], v0, inv_temp,
                                [t[n0:n1] for t in saved], g_lp[n0:n1], g_ent[n0:n1])
            if need_h:
                if gx.dtype == torch.float32:
                    gh[n0:n1].addmm_(gx, w)
                else:
                    gh[n0:n1] += torch.mm(gx, w)  # per-tile partial in the input dtype, summed in fp32
            if need_w:
                if gw_acc is not None:
                    gw_acc += torch.mm(gx.t(), hn)
                elif i == 0:
                    torch.mm(gx.t(), hn, out=gw[v0:v1])
                else:
                    gw[v0:v1].addmm_(gx.t(), hn)
            if need_b:
                gb[v0:v1] += gx.sum(0, dtype=torch.float32)
        if gw_acc is not None:
            gw[v0:v1].copy_(gw_acc)
    return gh, gw, gb


def _kernels_for(chosen: str, device: torch.device, dtype: torch.dtype):
    if chosen == "triton":
        from rlhf_fast.ops._triton_logprobs import TritonKernels

        return TritonKernels(dtype, TILES["triton"])
    return _OpsKernels(device, dtype)


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ref, temperature, kl_estimator, want_ent, chosen):
        kern = _kernels_for(chosen, hidden.device, hidden.dtype)
        inv_temp = 1.0 / temperature
        h = hidden.to(kern.compute_dtype).contiguous()
        lp, ent, saved = kern.forward_stats(h, weight, bias, labels, inv_temp, want_ent)
        valid = labels >= 0
        lp = torch.where(valid, lp, 0.0)
        ent = torch.where(valid, ent, 0.0) if want_ent else lp.new_empty(0)
        kl = torch.where(valid, kl_from_logprobs(lp, ref, kl_estimator), 0.0) if ref is not None else lp.new_empty(0)
        ctx.save_for_backward(hidden, weight, bias, labels, *saved, lp, ref)
        ctx.kern, ctx.inv_temp, ctx.kl_estimator, ctx.want_ent = kern, inv_temp, kl_estimator, want_ent
        ctx.set_materialize_grads(False)
        return lp, ent, kl

    @staticmethod
    def backward(ctx, g_lp, g_ent, g_kl):
        hidden, weight, bias, labels, m, log_s, c, lp, ref = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        g1 = torch.zeros_like(lp) if g_lp is None else g_lp.float()
        if g_kl is not None and ref is not None:
            g1 = g1 + g_kl.float() * kl_grad_factor(lp, ref, ctx.kl_estimator)
        g2 = g_ent.float() if (g_ent is not None and ctx.want_ent) else torch.zeros_like(lp)
        valid = labels >= 0
        g1 = torch.where(valid, g1, 0.0).contiguous()  # also drops NaN/inf from ignored rows
        g2 = torch.where(valid, g2, 0.0).contiguous()
        kern = ctx.kern
        h = hidden.to(kern.compute_dtype).contiguous()
        gh, gw, gb = _tiled_backward(kern, h, weight, bias, labels, ctx.inv_temp, (m, log_s, c), g1, g2, needs)
        return (None if gh is None else gh.to(hidden.dtype), None if gw is None else gw.to(weight.dtype),
                None if gb is None else gb.to(bias.dtype), None, None, None, None, None, None)


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          bias: torch.Tensor | None = None, temperature: float = 1.0,
                          ref_logprobs: torch.Tensor | None = None, kl_estimator: str = "k3",
                          compute_entropy: bool = False, ignore_index: int = -100,
                          backend: str = "auto") -> LogprobsOutput:
    """Log-probs (and entropy, KL) of `labels` under softmax(hidden @ weight.T (+ bias) / temperature)
    without the (N, V) logits; hidden: (N, H), weight: (V, H), bias: (V,), labels: (N,),
    ref_logprobs: (N,). See the module docstring."""
    hidden, weight, bias, safe, ref = _prepare_linear(hidden, weight, labels, bias, temperature, ref_logprobs,
                                                      kl_estimator, ignore_index)
    chosen = _backend.resolve(backend, hidden.device, "fused_linear_logprobs", _PREFERENCE)
    if chosen == "torch":
        return fused_linear_logprobs_ref(hidden, weight, safe, bias=bias, temperature=temperature,
                                         ref_logprobs=ref, kl_estimator=kl_estimator,
                                         compute_entropy=compute_entropy, ignore_index=-1)
    lp, ent, kl = _FusedLinearLogprobs.apply(hidden, weight, bias, safe, ref, float(temperature), kl_estimator,
                                             bool(compute_entropy), chosen)
    return LogprobsOutput(lp, ent if compute_entropy else None, kl if ref is not None else None)


# ----------------------------------------------------------------------------- from logits


def _logits_fwd_stats(logits, labels, inv_temp, want_ent, chosen):
    N = logits.shape[0]
    f32 = dict(dtype=torch.float32, device=logits.device)
    if chosen == "triton":
        from rlhf_fast.ops._triton_logprobs import logits_stats_triton

        return logits_stats_triton(logits, labels, inv_temp, want_ent)
    m = torch.full((N,), -math.inf, **f32)
    s, t, tgt = torch.zeros(N, **f32), torch.zeros(N, **f32), torch.zeros(N, **f32)
    # One pass over the whole matrix (the op takes a row stride): no chunking needed.
    torch.ops.rlhf_fast.logprobs_fwd_tile_(logits, labels, 0, inv_temp, m, s, t, tgt, want_ent)
    return finish_stats(m, s, t, tgt, want_ent)


def _logits_stats_torch(logits, labels, inv_temp, want_ent, chunk=1024):
    """Chunked over tokens: at most a (chunk, V) fp32 temporary at a time."""
    N = logits.shape[0]
    m, s, t, tgt = (torch.zeros(N, dtype=torch.float32, device=logits.device) for _ in range(4))
    for n0 in range(0, N, chunk):
        sl = slice(n0, n0 + chunk)
        z = logits[sl].float() * inv_temp
        m[sl] = z.max(-1).values
        d = z - m[sl, None]
        e = torch.exp(d)
        s[sl] = e.sum(-1)
        if want_ent:
            t[sl] = torch.where(e > 0, e * d, 0.0).sum(-1)
        tgt[sl] = z.gather(-1, labels[sl].clamp_min(0)[:, None]).squeeze(-1)
    return finish_stats(m, s, t, tgt, want_ent)


class _LogprobsFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ref, temperature, kl_estimator, want_ent, chosen):
        inv_temp = 1.0 / temperature
        if chosen == "torch":
            lp, ent, saved = _logits_stats_torch(logits, labels, inv_temp, want_ent)
        else:
            lp, ent, saved = _logits_fwd_stats(logits, labels, inv_temp, want_ent, chosen)
        valid = labels >= 0
        lp = torch.where(valid, lp, 0.0)
        ent = torch.where(valid, ent, 0.0) if want_ent else lp.new_empty(0)
        kl = torch.where(valid, kl_from_logprobs(lp, ref, kl_estimator), 0.0) if ref is not None else lp.new_empty(0)
        ctx.save_for_backward(logits, labels, *saved, lp, ref)
        ctx.inv_temp, ctx.kl_estimator, ctx.want_ent, ctx.chosen = inv_temp, kl_estimator, want_ent, chosen
        ctx.set_materialize_grads(False)
        return lp, ent, kl

    @staticmethod
    def backward(ctx, g_lp, g_ent, g_kl):
        logits, labels, m, log_s, c, lp, ref = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        g1 = torch.zeros_like(lp) if g_lp is None else g_lp.float()
        if g_kl is not None and ref is not None:
            g1 = g1 + g_kl.float() * kl_grad_factor(lp, ref, ctx.kl_estimator)
        g2 = g_ent.float() if (g_ent is not None and ctx.want_ent) else torch.zeros_like(lp)
        valid = labels >= 0
        g1, g2 = torch.where(valid, g1, 0.0).contiguous(), torch.where(valid, g2, 0.0).contiguous()
        if ctx.chosen == "torch":
            d = logits.float() * ctx.inv_temp - m[:, None]
            p = torch.exp(d - log_s[:, None])
            gz = -g1[:, None] * p - g2[:, None] * torch.where(p > 0, p * (d - c[:, None]), 0.0)
            gz.scatter_add_(1, labels.clamp_min(0)[:, None], g1[:, None])
            return (gz * ctx.inv_temp).to(logits.dtype), None, None, None, None, None, None
        grad = logits.clone(memory_format=torch.contiguous_format)  # the gradient overwrites it in place
        if ctx.chosen == "triton":
            from rlhf_fast.ops._triton_logprobs import logits_grad_triton

            logits_grad_triton(grad, labels, ctx.inv_temp, m, log_s, c, g1, g2)
        else:
            torch.ops.rlhf_fast.logprobs_bwd_tile_(grad, labels, 0, ctx.inv_temp, m, log_s, c, g1, g2)
        return grad, None, None, None, None, None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                         ref_logprobs: torch.Tensor | None = None, kl_estimator: str = "k3",
                         compute_entropy: bool = False, ignore_index: int = -100,
                         backend: str = "auto") -> LogprobsOutput:
    """fused_linear_logprobs' outputs from existing logits: (N, V), labels: (N,). One streaming pass
    (online log-sum-exp), never a (N, V) log_softmax; differentiable w.r.t. logits."""
    check_float("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, V), got shape {tuple(logits.shape)}")
    safe, ref = _check_common(logits.shape[0], logits.shape[1], labels, logits.device, temperature, ref_logprobs,
                              kl_estimator, ignore_index, f"logits {tuple(logits.shape)}")
    chosen = _backend.resolve(backend, logits.device, "logprobs_from_logits", _PREFERENCE)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    lp, ent, kl = _LogprobsFromLogits.apply(logits, safe, ref, float(temperature), kl_estimator,
                                            bool(compute_entropy), chosen)
    return LogprobsOutput(lp, ent if compute_entropy else None, kl if ref is not None else None)


# ----------------------------------------------------------------------------- SFT loss


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               bias: torch.Tensor | None = None, reduction: str = "mean",
                               ignore_index: int = -100, backend: str = "auto") -> torch.Tensor:
    """Token NLL of softmax(hidden @ weight.T (+ bias)) without the logits: hidden (N, H), weight
    (V, H), labels (N,). reduction "mean" (over non-ignored tokens, NaN when all are ignored, like
    F.cross_entropy), "sum", or "none" ((N,), 0 at ignored tokens)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    nll = -fused_linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                 backend=backend).logprobs
    if reduction == "none":
        return nll
    total = nll.sum()
    if reduction == "sum":
        return total
    return total / (labels != ignore_index).sum()


# ----------------------------------------------------------------------------- fake kernels

if ext_available():

    @torch.library.register_fake("rlhf_fast::logprobs_fwd_tile_")
    def _fwd_tile_fake(logits, labels, v_start, inv_temp, run_max, run_sum, run_zsum, target, with_entropy):
        torch._check(logits.dim() == 2)
        torch._check(labels.shape[0] == logits.shape[0])
        return None

    @torch.library.register_fake("rlhf_fast::logprobs_bwd_tile_")
    def _bwd_tile_fake(logits, labels, v_start, inv_temp, row_max, log_sum, mean_rel, g_lp, g_ent):
        torch._check(logits.dim() == 2)
        torch._check(labels.shape[0] == logits.shape[0])
        return None
