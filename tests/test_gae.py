import pytest
import torch

from rlhf_fast import ops
from rlhf_fast.ops import BackendUnavailable
from tests.conftest import DEVICE, runnable_backends

BACKENDS = runnable_backends()


def padded_batch(B, T, dtype=torch.float32, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = 0  # an empty row
    lengths[-1] = T  # a full row
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return rewards.to(device, dtype), values.to(device, dtype), mask.to(device)


def test_hand_computed_case():
    # One row, T = 3, gamma = 0.5, lam = 0.5 (so gamma * lam = 0.25), last step padding.
    rewards = torch.tensor([[1.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 0]])
    # Padding counts as r = 0, V = 0, so V_2 = 0.
    # delta_1 = r_1 + 0.5 * V_2 - V_1 = 2 + 0 - 1 = 1          -> A_1 = 1
    # delta_0 = r_0 + 0.5 * V_1 - V_0 = 1 + 0.5 - 0.5 = 1      -> A_0 = 1 + 0.25 * 1 = 1.25
    # returns = A + V = [1.75, 2.0]; position 2 is 0 in both outputs.
    expected_adv = torch.tensor([[1.25, 1.0, 0.0]])
    expected_ret = torch.tensor([[1.75, 2.0, 0.0]])
    for backend in BACKENDS:
        adv, ret = ops.gae(rewards.to(DEVICE), values.to(DEVICE), mask.to(DEVICE), gamma=0.5, lam=0.5,
                           backend=backend)
        torch.testing.assert_close(adv.cpu(), expected_adv, msg=backend)
        torch.testing.assert_close(ret.cpu(), expected_ret, msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,T", [(1, 1), (3, 1), (5, 7), (7, 33), (4, 1030), (2, 2500)])
def test_matches_reference_fp32(backend, B, T):
    r, v, m = padded_batch(B, T)
    ref_adv, ref_ret = ops.gae_ref(r, v, m, gamma=0.99, lam=0.95)
    adv, ret = ops.gae(r, v, m, gamma=0.99, lam=0.95, backend=backend)
    assert adv.dtype == ret.dtype == torch.float32
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-5, atol=1e-5)
    assert (adv[~m] == 0).all() and (ret[~m] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_use_fp32_math(backend, dtype):
    r, v, m = padded_batch(6, 300, dtype=dtype)
    ref_adv, ref_ret = ops.gae_ref(r.float(), v.float(), m, gamma=1.0, lam=0.95)
    adv, ret = ops.gae(r, v, m, backend=backend)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_dtypes_holes_and_padding_garbage(backend):
    r, v, m = padded_batch(4, 50)
    m[2, 10:20] = False  # a hole inside a row: counts as r = 0, V = 0 there
    r = r.masked_fill(~m, float("nan"))  # padding content must not leak into the outputs
    v = v.masked_fill(~m, float("inf"))
    ref = ops.gae_ref(r, v, m)
    for mask in (m, m.to(torch.uint8), m.float(), m.long()):
        out = ops.gae(r, v, mask, backend=backend)
        assert torch.isfinite(out[0]).all()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    r, v, m = padded_batch(8, 40)
    out = ops.gae(r.t().contiguous().t(), v[:, :], m, backend=backend)
    torch.testing.assert_close(out, ops.gae_ref(r, v, m), rtol=1e-5, atol=1e-5)


def test_zero_sized_batches():
    for backend in BACKENDS:
        for B, T in [(0, 5), (3, 0)]:
            adv, ret = ops.gae(torch.zeros(B, T), torch.zeros(B, T), torch.zeros(B, T, dtype=torch.bool),
                               backend=backend)
            assert adv.shape == ret.shape == (B, T)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(values=torch.zeros(2, 4)), r"rewards \(2, 3\), values \(2, 4\)"),
        (dict(mask=torch.ones(3, 3)), r"mask \(3, 3\)"),
        (dict(rewards=torch.zeros(2, 3, dtype=torch.int64)), "rewards must be float32, bfloat16 or float16"),
        (dict(rewards=torch.zeros(2, 3, dtype=torch.float64)), "rewards must be float32"),
        (dict(rewards=torch.zeros(6), values=torch.zeros(6), mask=torch.ones(6)), "must be 2-D"),
        (dict(gamma=float("nan")), "gamma must be a finite number"),
        (dict(lam=float("inf")), "lam must be a finite number"),
    ],
)
def test_bad_input_errors_name_the_problem(kwargs, match):
    args = dict(rewards=torch.zeros(2, 3), values=torch.zeros(2, 3), mask=torch.ones(2, 3), gamma=1.0, lam=0.95)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.gae(**args)


def test_forced_unavailable_backend_says_why(monkeypatch):
    r, v, m = padded_batch(2, 3, device="cpu")
    with pytest.raises(BackendUnavailable, match="'cuda' is unavailable"):
        ops.gae(r, v, m, backend="cuda")
    monkeypatch.setenv("RLHF_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="'cuda' is unavailable"):
        ops.gae(r, v, m)
    monkeypatch.setenv("RLHF_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="RLHF_FAST_BACKEND='nonsense'"):
        ops.gae(r, v, m)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ops.gae(r, v, m, backend="fast")


needs_ext = pytest.mark.skipif("cpu" not in BACKENDS, reason="rlhf_fast._C not built")


@needs_ext
def test_cpp_checks_name_the_argument():
    with pytest.raises(RuntimeError, match=r"rewards and mask must have the same shape"):
        torch.ops.rlhf_fast.gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), 1.0, 0.9)
    with pytest.raises(RuntimeError, match=r"mask must be bool"):
        torch.ops.rlhf_fast.gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 1.0, 0.9)
    with pytest.raises(RuntimeError, match=r"gamma and lam must be finite"):
        torch.ops.rlhf_fast.gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool),
                                float("nan"), 0.9)


@needs_ext
def test_opcheck():
    r, v, m = padded_batch(5, 17, device=DEVICE)
    torch.library.opcheck(torch.ops.rlhf_fast.gae.default, (r, v, m, 0.99, 0.95))
    torch.library.opcheck(torch.ops.rlhf_fast.gae.default, (r.bfloat16(), v.bfloat16(), m, 1.0, 0.95))


@needs_ext
def test_torch_compile_traces_the_op():
    r, v, m = padded_batch(3, 9)
    compiled = torch.compile(lambda r, v, m: ops.gae(r, v, m, backend="cpu"), fullgraph=True)
    torch.testing.assert_close(compiled(r, v, m), ops.gae_ref(r, v, m), rtol=1e-5, atol=1e-5)
