"""fused_linear_logprobs, logprobs_from_logits, fused_linear_cross_entropy and the HF convenience
against the naive references: forward values and every gradient, each backend (Triton under the
CPU interpreter on tiny shapes), edge cases, opcheck of the C++ ops, and bad inputs."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_fast import ops
from rlhf_fast._ext import ext_available

flp = importlib.import_module("rlhf_fast.ops.fused_linear_logprobs")

DEV = torch.device("cpu")
BACKENDS = [b for b, why in ops.available_backends(DEV).items() if why is None and b != "torch"]
needs_ext = pytest.mark.skipif(not ext_available(), reason="rlhf_fast._C not built")


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    # Tiles far smaller than the shapes: several token and vocabulary tiles, ragged last tiles.
    monkeypatch.setitem(flp.TILES, "cpu", (16, 32))
    monkeypatch.setitem(flp.TILES, "triton", (16, 64))


def make(N, H, V, dtype=torch.float32, seed=0, bias=True, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, H, generator=g) * scale / math.sqrt(H)).to(dtype)
    w = (torch.randn(V, H, generator=g) * 2.0).to(dtype)
    b = (torch.randn(V, generator=g) * 0.5).to(dtype) if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    if N > 2:
        y[1] = -100  # an ignored token
    return h, w, b, y


def run(fn, h, w, b, y, seed=1, **kw):
    """Outputs and the gradients of hidden, weight, bias for a random weighting of every output."""
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    out = fn(h, w, y, bias=b, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in out if o is not None)
    params = [t for t in (h, w, b) if t is not None]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [o for o in out], list(grads)


def ref_lp(h, w, y, bias=None, **kw):
    return ops.fused_linear_logprobs_ref(h, w, y, bias=bias, **kw)


def assert_close(a, b, atol, rtol, what=""):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def ref_kl(h, w, b, y, seed=3):
    lp = ref_lp(h.float(), w.float(), y, bias=None if b is None else b.float()).logprobs.detach()
    return lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(seed))


OUTPUTS = {  # which outputs carry a gradient: logprobs alone, entropy alone, KL alone, all together
    "logprobs": dict(),
    "entropy": dict(compute_entropy=True),
    "kl": dict(kl=True),
    "all": dict(compute_entropy=True, kl=True),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", list(OUTPUTS))
@pytest.mark.parametrize("kl_estimator", ["k1", "k2", "k3"])
def test_matches_reference_fp32(backend, which, kl_estimator):
    if kl_estimator != "k3" and not OUTPUTS[which].get("kl"):
        pytest.skip("the estimator only matters with a KL")
    N, H, V = (37, 24, 101) if backend != "triton" else (21, 16, 77)
    h, w, b, y = make(N, H, V)
    kw = {k: v for k, v in OUTPUTS[which].items() if k != "kl"}
    if OUTPUTS[which].get("kl"):
        kw.update(ref_logprobs=ref_kl(h, w, b, y), kl_estimator=kl_estimator)
    kw["temperature"] = 0.7
    out_r, g_r = run(ref_lp, h, w, b, y, **kw)
    out, g = run(lambda *a, **k: ops.fused_linear_logprobs(*a, backend=backend, **k), h, w, b, y, **kw)
    for name, o, r in zip(("logprobs", "entropy", "kl"), out, out_r):
        assert_close(o, r, 2e-5, 1e-5, name)
    for name, o, r in zip(("hidden", "weight", "bias"), g, g_r):
        assert_close(o, r, 5e-5, 1e-4, f"grad {name}")
    assert out[0][1] == 0 and (out[1] is None or out[1][1] == 0) and (out[2] is None or out[2][1] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_output_gradients(backend):
    """Gradient through one output at a time while the others are computed (materialize_grads off)."""
    h, w, b, y = make(19, 16, 53)
    kw = dict(compute_entropy=True, ref_logprobs=ref_kl(h, w, b, y))
    for idx in range(3):
        grads = []
        for fn in (ref_lp, lambda *a, **k: ops.fused_linear_logprobs(*a, backend=backend, **k)):
            hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
            out = fn(hh, ww, y, bias=b, **kw)
            grads.append(torch.autograd.grad(out[idx].sum(), (hh, ww)))
        for a, r in zip(*grads):
            assert_close(a, r, 5e-5, 1e-4, f"output {idx}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_2x_of_reference(backend, dtype):
    h, w, b, y = make(33, 32, 97, dtype=dtype)
    kw = dict(compute_entropy=True, ref_logprobs=ref_kl(h, w, b, y))
    out32, g32 = run(ref_lp, h.float(), w.float(), b.float(), y, **kw)
    out_r, g_r = run(ref_lp, h, w, b, y, **kw)
    out, g = run(lambda *a, **k: ops.fused_linear_logprobs(*a, backend=backend, **k), h, w, b, y, **kw)
    for name, o, r, e in zip(("lp", "ent", "kl", "gh", "gw", "gb"), out + g, out_r + g_r, out32 + g32):
        assert o.dtype == (torch.float32 if name in ("lp", "ent", "kl") else dtype), name
        err = (o.float() - e.float()).abs().max().item()
        ref_err = (r.float() - e.float()).abs().max().item()
        assert err <= 2 * ref_err + 1e-3 * e.abs().max().item(), f"{name}: {err} vs reference {ref_err}"


def test_triton_bf16_interpreter_smoke():
    if "triton" not in BACKENDS:
        pytest.skip("triton unavailable")
    h, w, b, y = make(17, 16, 40, dtype=torch.bfloat16)
    out32, _ = run(ref_lp, h.float(), w.float(), b.float(), y)
    out_r, _ = run(ref_lp, h, w, b, y)
    out, g = run(lambda *a, **k: ops.fused_linear_logprobs(*a, backend="triton", **k), h, w, b, y)
    err = (out[0] - out32[0]).abs().max().item()
    assert err <= 2 * (out_r[0] - out32[0]).abs().max().item() + 1e-2
    assert all(t.dtype == torch.bfloat16 and torch.isfinite(t).all() for t in g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["large", "negative", "masked_vocab", "N=1", "all_ignored", "no_bias", "temp"])
def test_edge_cases(backend, case):
    N, H, V = 13, 16, 70
    h, w, b, y = make(N, H, V, bias=case != "no_bias")
    kw = dict(compute_entropy=True, ref_logprobs=ref_kl(h, w, b, y))
    if case == "large":
        h = h * 300  # logits in the thousands
    elif case == "negative":
        b = b - 1e4  # every logit hugely negative
    elif case == "masked_vocab":
        b = b.clone()
        b[::3] = -math.inf  # masked vocabulary entries (never the label)
        y = torch.where((y % 3 == 0) & (y >= 0), torch.where(y + 1 < V, y + 1, y - 1), y)
    elif case == "N=1":
        h, y = h[:1], y[:1]
    elif case == "all_ignored":
        y = torch.full_like(y, -100)
    elif case == "temp":
        kw["temperature"] = 3.5
    kw["ref_logprobs"] = ref_kl(h, w, b, y)  # near the policy's log-probs: a finite k3
    out_r, g_r = run(ref_lp, h, w, b, y, **kw)
    out, g = run(lambda *a, **k: ops.fused_linear_logprobs(*a, backend=backend, **k), h, w, b, y, **kw)
    scale = 1e-5 * (300 if case == "large" else 1)
    for name, o, r in zip(("logprobs", "entropy", "kl", "grad h", "grad w", "grad b"), out + g, out_r + g_r):
        if r is None:
            assert o is None
            continue
        assert torch.isfinite(o).all(), name
        assert_close(o, r, 50 * scale, 1e-4, name)
    if case == "all_ignored":
        assert all((t == 0).all() for t in out + g if t is not None)


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_logprobs_from_logits(backend):
    g = torch.Generator().manual_seed(5)
    N, V = 23, 131
    logits = torch.randn(N, V, generator=g) * 3
    logits[:, 7] = -math.inf  # a masked vocabulary entry
    y = torch.randint(0, V, (N,), generator=g)
    y[y == 7] = 8
    y[4] = -100
    ref = torch.randn(N, generator=g) - 5
    kw = dict(temperature=0.8, compute_entropy=True, ref_logprobs=ref, kl_estimator="k2")
    outs, grads = [], []
    for fn in (ops.logprobs_from_logits_ref, lambda *a, **k: ops.logprobs_from_logits(*a, backend=backend, **k)):
        x = logits.clone().requires_grad_()
        out = fn(x, y, **kw)
        wts = torch.randn(3, N, generator=torch.Generator().manual_seed(2))
        grads.append(torch.autograd.grad(sum((o * wt).sum() for o, wt in zip(out, wts)), x)[0])
        outs.append(out)
    for name, o, r in zip(("logprobs", "entropy", "kl"), *outs):
        assert_close(o, r, 2e-5, 1e-5, name)
    assert_close(grads[1], grads[0], 2e-5, 1e-5, "grad logits")
    # a column slice (row stride != V) and bf16 logits
    sl = logits[:, :100].contiguous()[:, :90]
    y2 = y.clamp(max=89)
    assert_close(ops.logprobs_from_logits(sl, y2, backend=backend).logprobs,
                 ops.logprobs_from_logits_ref(sl, y2).logprobs, 2e-5, 1e-5, "strided")
    lb = logits.bfloat16()
    assert_close(ops.logprobs_from_logits(lb, y, backend=backend).logprobs,
                 ops.logprobs_from_logits_ref(lb, y).logprobs, 1e-4, 1e-5, "bf16")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_linear_cross_entropy(backend, reduction):
    h, w, b, y = make(29, 16, 61)
    grads = []
    for fn in ("torch", "ours"):
        hh, ww, bb = (t.clone().requires_grad_() for t in (h, w, b))
        if fn == "torch":
            loss = F.cross_entropy(hh @ ww.T + bb, y, ignore_index=-100, reduction=reduction)
        else:
            loss = ops.fused_linear_cross_entropy(hh, ww, y, bias=bb, reduction=reduction, backend=backend)
        grads.append((loss,) + torch.autograd.grad(loss, (hh, ww, bb)))
    for name, o, r in zip(("loss", "grad h", "grad w", "grad b"), *grads):
        assert_close(o, r, 3e-5, 1e-5, name)


def test_hf_causal_lm_logprobs():
    transformers = pytest.importorskip("transformers")
    from rlhf_fast.models.logprobs import causal_lm_cross_entropy, causal_lm_logprobs

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    B, T = 2, 11
    ids = torch.randint(0, 97, (B, T))
    attn = torch.ones(B, T, dtype=torch.long)
    attn[1, 8:] = 0  # right padding
    loss_mask = attn.clone()
    loss_mask[:, :4] = 0  # prompt tokens are not scored
    backend = "cpu" if "cpu" in BACKENDS else "torch"

    out = causal_lm_logprobs(model, ids, attn, loss_mask=loss_mask, compute_entropy=True, backend=backend)
    lp_sum = out.logprobs.sum()
    g_ours = torch.autograd.grad(lp_sum, [model.lm_head.weight, model.model.layers[0].mlp.up_proj.weight])

    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = logits.log_softmax(-1)
    lp_ref = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    keep = (attn[:, 1:] != 0) & (loss_mask[:, 1:] != 0)
    lp_ref = torch.where(keep, lp_ref, 0.0)
    ent_ref = torch.where(keep, -(logp.exp() * logp).sum(-1), 0.0)
    g_ref = torch.autograd.grad(lp_ref.sum(), [model.lm_head.weight, model.model.layers[0].mlp.up_proj.weight])
    assert out.logprobs.shape == (B, T - 1)
    assert_close(out.logprobs, lp_ref, 1e-5, 1e-5, "logprobs")
    assert_close(out.entropy, ent_ref, 1e-5, 1e-5, "entropy")
    for a, r in zip(g_ours, g_ref):
        assert_close(a, r, 1e-5, 1e-4, "param grad")

    nll = causal_lm_cross_entropy(model, ids, attn, loss_mask=loss_mask, backend=backend)
    labels = torch.where(keep, ids[:, 1:], -100)
    ce = F.cross_entropy(logits.reshape(-1, 97), labels.reshape(-1), ignore_index=-100)
    assert_close(nll, ce, 1e-5, 1e-5, "cross entropy")


@needs_ext
def test_opcheck_tile_ops():
    g = torch.Generator().manual_seed(0)
    n, v = 6, 40
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(n, v, generator=g).to(dtype)
        labels = torch.tensor([0, 5, 39, -1, 12, 41])
        state = [torch.full((n,), -math.inf), torch.zeros(n), torch.zeros(n), torch.zeros(n)]
        torch.library.opcheck(torch.ops.rlhf_fast.logprobs_fwd_tile_, (logits, labels, 0, 0.5, *state, True))
        rows = [torch.randn(n, generator=g) for _ in range(5)]
        torch.library.opcheck(torch.ops.rlhf_fast.logprobs_bwd_tile_, (logits.clone(), labels, 3, 0.5, *rows))


@needs_ext
def test_cpp_rejects_bad_tiles():
    n = 4
    rows = [torch.zeros(n) for _ in range(4)]
    with pytest.raises(RuntimeError, match="labels must be"):
        torch.ops.rlhf_fast.logprobs_fwd_tile_(torch.zeros(n, 5), torch.zeros(n + 1, dtype=torch.long), 0, 1.0,
                                               *rows, False)
    with pytest.raises(RuntimeError, match="run_sum must be"):
        torch.ops.rlhf_fast.logprobs_fwd_tile_(torch.zeros(n, 5), torch.zeros(n, dtype=torch.long), 0, 1.0,
                                               rows[0], torch.zeros(n, dtype=torch.float64), rows[2], rows[3], False)


@pytest.mark.parametrize("bad, match", [
    (dict(labels=torch.tensor([0, 1, 99])), r"labels must lie in \[0, V\)"),
    (dict(labels=torch.tensor([0, -5, 1])), r"labels must lie in"),
    (dict(labels=torch.tensor([0, 1])), r"labels must have shape \(N,\)"),
    (dict(labels=torch.tensor([0.0, 1.0, 2.0])), r"labels must be an integer tensor"),
    (dict(weight=torch.randn(10, 7)), r"weight must be \(V, H\) with H = 8"),
    (dict(hidden=torch.randn(3, 8, 1)), r"hidden must be 2-D"),
    (dict(bias=torch.randn(11)), r"bias must have shape \(V,\) = \(10,\)"),
    (dict(kl_estimator="k4"), r"kl_estimator must be one of"),
    (dict(ref_logprobs=torch.randn(4)), r"ref_logprobs must have shape \(N,\) = \(3,\)"),
    (dict(temperature=0.0), r"temperature must be a finite number > 0"),
    (dict(temperature=-1.0), r"temperature must be"),
    (dict(hidden=torch.randn(3, 8, dtype=torch.float64)), r"hidden must be float32, bfloat16 or float16"),
])
def test_bad_inputs(bad, match):
    args = dict(hidden=torch.randn(3, 8), weight=torch.randn(10, 8), labels=torch.tensor([0, 1, 9]))
    args.update(bad)
    hidden, weight, labels = args.pop("hidden"), args.pop("weight"), args.pop("labels")
    with pytest.raises(ValueError, match=match):
        ops.fused_linear_logprobs(hidden, weight, labels, **args)
    if "labels" in bad or "temperature" in bad or "kl_estimator" in bad:
        logits = torch.randn(labels.shape[0] if labels.dim() == 1 and labels.shape[0] == 3 else 3, 10)
        with pytest.raises(ValueError, match=match):
            ops.logprobs_from_logits(logits, labels, **{k: v for k, v in args.items() if k != "bias"})


def test_ignore_index_in_vocabulary_range():
    h, w, b, y = make(9, 16, 30)
    y[1], y[2] = 0, 5
    out = ops.fused_linear_logprobs(h, w, y, bias=b, ignore_index=5)
    ref = ops.fused_linear_logprobs_ref(h, w, y, bias=b, ignore_index=5)
    assert out.logprobs[2] == 0
    assert_close(out.logprobs, ref.logprobs, 2e-5, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    h = torch.randn(0, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    out = ops.fused_linear_logprobs(h, w, torch.zeros(0, dtype=torch.long), bias=b, compute_entropy=True,
                                    backend=backend)
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert out.logprobs.shape == (0,) and h.grad.shape == (0, 16)
    assert (w.grad == 0).all() and (b.grad == 0).all()


def test_explicit_unavailable_backend_raises():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    h, w, b, y = make(4, 8, 10)
    with pytest.raises(ops.BackendUnavailable):
        ops.fused_linear_logprobs(h, w, y, backend="cuda")
