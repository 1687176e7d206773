"""Triton kernels of fused_linear_logprobs and logprobs_from_logits (see fused_linear_logprobs.py
for the math, and Apple's cut-cross-entropy, arXiv:2411.09009, for the scheme).

Forward (`_fwd_kernel`): one program per (token block, vocabulary split). It walks its vocabulary
tiles, computes each logits tile z = hidden_blk @ W_tile.T (+ b) / T with tl.dot (fp32 accumulator,
never written to memory) and folds it into an online log-sum-exp (running max m, s = sum exp(z-m),
t = sum exp(z-m) z). Splits write partial (m, s, t); a tiny torch combine merges them, so short
batches still fill the GPU.

Backward (`_grad_kernel`): one program per (token block, vocabulary block) of a vocabulary chunk;
recomputes the logits tile with tl.dot and stores only dL/dx (input dtype) for the chunk. The two
gradient GEMMs (grad_hidden += dL/dx @ W_chunk, grad_W_chunk = dL/dx^T @ hidden) then run in
cuBLAS: no atomics, and the extra memory is one (tokens x chunk) buffer.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rlhf_fast.ops._backend import triton_interpret
from rlhf_fast.ops._logprobs_common import finish_stats


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rn64, rmask, rv, vmask, H, stride_h, stride_w, HAS_BIAS: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """(BLOCK_N, BLOCK_V) fp32 logits tile: hidden[rows] @ weight[cols].T (+ bias[cols]), the forward
    and the backward recompute it the same way."""
    rv64 = rv.to(tl.int64)
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k in range(0, H, BLOCK_H):
        rk = k + tl.arange(0, BLOCK_H)
        kmask = rk < H
        a = tl.load(h_ptr + rn64[:, None] * stride_h + rk[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptr + rv64[:, None] * stride_w + rk[None, :], mask=vmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:  # the CPU interpreter multiplies bf16 bit patterns as integers
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)  # fp32 accumulator
    if HAS_BIAS:
        acc += tl.load(b_ptr + rv, mask=vmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _fwd_kernel(m_ptr, s_ptr, t_ptr, tgt_ptr,  # outputs: partials (SPLITS, N) fp32; target (N,)
                h_ptr, w_ptr, b_ptr, labels_ptr, N, V, H, inv_temp, stride_h, stride_w, n_splits,
                HAS_BIAS: tl.constexpr, WANT_ENT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rn < N
    rn64 = rn.to(tl.int64)  # N * H and V * H can pass 2^31
    y = tl.load(labels_ptr + rn, mask=rmask, other=-1)  # ignored tokens carry -1
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    t = tl.zeros([BLOCK_N], tl.float32)
    for vt in range(split, tl.cdiv(V, BLOCK_V), n_splits):
        rv = vt * BLOCK_V + tl.arange(0, BLOCK_V)
        vmask = rv < V
        acc = _logits_tile(h_ptr, w_ptr, b_ptr, rn64, rmask, rv, vmask, H, stride_h, stride_w,
                           HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        z = tl.where(vmask[None, :], acc * inv_temp, float("-inf"))  # padding columns weigh nothing
        m_new = tl.maximum(m, tl.max(z, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid -inf - -inf
        d = z - m_safe[:, None]
        e = tl.exp(d)  # exp(-inf) = 0 for masked vocabulary entries
        scale = tl.exp(m - m_safe)  # 0 while m is still -inf
        if WANT_ENT:
            # t = sum e (z - m), centered on the running max: entropy = log s - t / s without
            # cancellation; moving the max shifts the old sum by (m_old - m_new) s_old.
            shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
            t = scale * (t + shift * s) + tl.sum(tl.where(e > 0, e * d, 0.0), 1)  # 0 * -inf would be NaN
        s = s * scale + tl.sum(e, 1)
        m = m_new
        hit = rv[None, :] == y[:, None]
        z_y = tl.sum(tl.where(hit, z, 0.0), 1)
        in_tile = (y >= vt * BLOCK_V) & (y < vt * BLOCK_V + BLOCK_V)
        tl.store(tgt_ptr + rn, z_y, mask=rmask & in_tile)  # exactly one tile holds each label
    tl.store(m_ptr + split * N + rn, m, mask=rmask)
    tl.store(s_ptr + split * N + rn, s, mask=rmask)
    tl.store(t_ptr + split * N + rn, t, mask=rmask)


@triton.jit
def _grad_kernel(out_ptr,  # (n, vb) dL/dx of this vocabulary chunk, in the input dtype
                 h_ptr, w_ptr, b_ptr, labels_ptr, m_ptr, logs_ptr, c_ptr, g1_ptr, g2_ptr, n, vb, v0, H,
                 inv_temp, stride_h, stride_w, stride_out,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_V: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rn < n
    rn64 = rn.to(tl.int64)
    rv = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # column within the chunk
    vmask = rv < vb
    acc = _logits_tile(h_ptr, w_ptr, b_ptr, rn64, rmask, rv, vmask, H, stride_h, stride_w,
                       HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    m = tl.load(m_ptr + rn, mask=rmask, other=0.0)  # saved max logit, log sum exp(z - m), mu - m
    log_s = tl.load(logs_ptr + rn, mask=rmask, other=0.0)
    c = tl.load(c_ptr + rn, mask=rmask, other=0.0)
    d = acc * inv_temp - m[:, None]  # z - max: exact near the max, where the probability mass is
    g1 = tl.load(g1_ptr + rn, mask=rmask, other=0.0)  # dL/dlogprob, KL folded in, 0 if ignored
    g2 = tl.load(g2_ptr + rn, mask=rmask, other=0.0)  # dL/dentropy
    y = tl.load(labels_ptr + rn, mask=rmask, other=-1)
    p = tl.exp(d - log_s[:, None])  # softmax recomputed from the saved log-sum-exp; 0 at z = -inf
    ent = tl.where(p > 0, p * (d - c[:, None]), 0.0)  # d entropy / dz = -p (z - mu); no 0 * -inf
    g = -g1[:, None] * p - g2[:, None] * ent
    g = g + tl.where((v0 + rv)[None, :] == y[:, None], g1[:, None], 0.0)  # the one-hot term
    g = g * inv_temp  # z = x / temperature
    tl.store(out_ptr + rn64[:, None] * stride_out + rv[None, :], g.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & vmask[None, :])


def _blocks(H: int):
    if triton_interpret():  # the CPU interpreter: small tiles (tl.dot needs >= 16)
        return 16, 32, 16, 1
    return 64, 128, 64, 8  # BLOCK_N, BLOCK_V, BLOCK_H, num_warps


def _upcast(h: torch.Tensor) -> bool:
    """Interpreter only: fp32 operands for tl.dot (it has no bf16/fp16 arithmetic)."""
    return triton_interpret() and not h.is_cuda and h.dtype != torch.float32


def _precision(h: torch.Tensor) -> str:
    """fp32 inputs get full-precision dots (Triton's default for fp32 is TF32, ~1e-3 relative)."""
    return "ieee" if h.dtype == torch.float32 else "tf32"


def combine_partials(m, s, t):
    """Merges (SPLITS, N) online-LSE partials (m, s = sum e^(z-m), t = sum e^(z-m) (z-m)) into the
    totals (M, S, T) relative to the overall max M."""
    M = m.max(0).values
    M_safe = torch.where(M == -math.inf, 0.0, M)
    w = torch.exp(m - M_safe)  # exp(-inf) = 0 for splits that saw only -inf
    shift = torch.where(m == -math.inf, 0.0, m - M_safe)
    return M, (s * w).sum(0), ((t + shift * s) * w).sum(0)


class TritonKernels:
    """Forward stats and gradient tiles for the shared tiled driver in fused_linear_logprobs.py."""

    def __init__(self, dtype: torch.dtype, tiles: tuple[int, int]):
        self.compute_dtype = dtype
        self.tiles = tiles

    def forward_stats(self, h, weight, bias, labels, inv_temp, want_ent):
        N, H = h.shape
        V = weight.shape[0]
        weight = weight if weight.stride(1) == 1 else weight.contiguous()
        BN, BV, BH, warps = _blocks(H)
        n_blocks = triton.cdiv(N, BN)
        v_tiles = triton.cdiv(V, BV)
        # Enough programs to fill the GPU several times over even for short batches.
        sms = torch.cuda.get_device_properties(h.device).multi_processor_count if h.is_cuda else 4
        splits = max(1, min(v_tiles, (4 * sms + n_blocks - 1) // max(n_blocks, 1)))
        f32 = dict(dtype=torch.float32, device=h.device)
        m, s, t = (torch.empty(splits, N, **f32) for _ in range(3))
        tgt = torch.zeros(N, **f32)
        if N and V:
            b = bias if bias is not None else h  # dummy pointer when HAS_BIAS is False
            _fwd_kernel[(n_blocks, splits)](m, s, t, tgt, h, weight, b, labels, N, V, H, inv_temp,
                                            h.stride(0), weight.stride(0), splits, HAS_BIAS=bias is not None,
                                            WANT_ENT=want_ent, UPCAST=_upcast(h), PRECISION=_precision(h),
                                            BLOCK_N=BN, BLOCK_V=BV, BLOCK_H=BH,
                                            num_warps=warps, num_stages=3)
        else:
            m.fill_(-math.inf)
            s.zero_()
            t.zero_()
        return finish_stats(*combine_partials(m, s, t), tgt, want_ent)

    def grad_tile(self, out, h, w, b, labels, v0, inv_temp, saved, g_lp, g_ent):
        n, H = h.shape
        vb = w.shape[0]
        w = w if w.stride(1) == 1 else w.contiguous()
        BN, BV, BH, warps = _blocks(H)
        if n and vb:
            bb = b if b is not None else h
            _grad_kernel[(triton.cdiv(n, BN), triton.cdiv(vb, BV))](
                out, h, w, bb, labels, *saved, g_lp, g_ent, n, vb, v0, H, inv_temp, h.stride(0), w.stride(0),
                out.stride(0), HAS_BIAS=b is not None, UPCAST=_upcast(h), PRECISION=_precision(h), BLOCK_N=BN,
                BLOCK_V=BV, BLOCK_H=BH, num_warps=warps,
                num_stages=3)
        return out


# ----------------------------------------------------------------------------- from logits


@triton.jit
def _logits_fwd_kernel(m_ptr, s_ptr, t_ptr, tgt_ptr, x_ptr, labels_ptr, V, stride_x, inv_temp,
                       WANT_ENT: tl.constexpr, BLOCK_V: tl.constexpr):
    """One program per token: online log-sum-exp over its logits row in BLOCK_V chunks."""
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(labels_ptr + row)
    m = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), 0)
    s = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
    t = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
    z_y = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
    for v in range(0, V, BLOCK_V):
        cols = v + tl.arange(0, BLOCK_V)
        z = tl.load(x_ptr + row * stride_x + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = z - m_safe
        e = tl.exp(d)
        scale = tl.exp(m - m_safe)
        if WANT_ENT:  # centered on the running max, as in _fwd_kernel
            shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
            t = scale * (t + shift * s) + tl.sum(tl.where(e > 0, e * d, 0.0), 0)
        s = s * scale + tl.sum(e, 0)
        m = m_new
        z_y += tl.sum(tl.where(cols == y, z, 0.0), 0)
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(t_ptr + row, t)
    tl.store(tgt_ptr + row, z_y)


@triton.jit
def _logits_grad_kernel(g_ptr,  # in: the logits (a copy); out: dL/dlogits, in place
                        labels_ptr, m_ptr, logs_ptr, c_ptr, g1_ptr, g2_ptr, V, stride_g, inv_temp,
                        BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < V
    d = tl.load(g_ptr + row * stride_g + cols, mask=cmask, other=0.0).to(tl.float32) * inv_temp - tl.load(m_ptr + row)
    log_s = tl.load(logs_ptr + row)
    c = tl.load(c_ptr + row)
    g1 = tl.load(g1_ptr + row)
    g2 = tl.load(g2_ptr + row)
    y = tl.load(labels_ptr + row)
    p = tl.exp(d - log_s)
    ent = tl.where(p > 0, p * (d - c), 0.0)
    g = (-g1 * p - g2 * ent + tl.where(cols == y, g1, 0.0)) * inv_temp
    tl.store(g_ptr + row * stride_g + cols, g.to(g_ptr.dtype.element_ty), mask=cmask)


def _logits_block(V: int) -> int:
    return min(triton.next_power_of_2(max(V, 16)), 256 if triton_interpret() else 4096)


def logits_stats_triton(logits, labels, inv_temp, want_ent):
    N, V = logits.shape
    f32 = dict(dtype=torch.float32, device=logits.device)
    m, s, t, tgt = (torch.empty(N, **f32) for _ in range(4))
    if N:
        _logits_fwd_kernel[(N,)](m, s, t, tgt, logits, labels, V, logits.stride(0), inv_temp,
                                 WANT_ENT=want_ent, BLOCK_V=_logits_block(V))
    return finish_stats(m, s, t, tgt, want_ent)


def logits_grad_triton(grad, labels, inv_temp, m, log_s, c, g1, g2):
    N, V = grad.shape
    block = _logits_block(V)
    if N and V:
        _logits_grad_kernel[(N, triton.cdiv(V, block))](grad, labels, m, log_s, c, g1, g2, V, grad.stride(0), inv_temp,
                                                        BLOCK_V=block)
    return grad
