import pytest
import torch

from rlhf_fast import ops
from tests.conftest import DEVICE, runnable_backends

BACKENDS = runnable_backends()


def sample(shape, dtype=torch.float32, seed=0, p=0.7):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 5).to(DEVICE, dtype)
    mask = (torch.rand(shape, generator=g) < p).to(DEVICE)
    return x, mask


def test_hand_computed_case():
    # Masked elements 1, 2, 3 (the 100 is masked out): mean 2, biased var 2/3, std sqrt(2/3).
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    s = (2 / 3) ** 0.5
    expected = torch.tensor([[-1 / s, 0.0, 1 / s, 0.0]])
    for backend in BACKENDS:
        out = ops.masked_whiten(x.to(DEVICE), mask.to(DEVICE), eps=0.0, backend=backend)
        torch.testing.assert_close(out.cpu(), expected, msg=backend)
        kept = ops.masked_whiten(x.to(DEVICE), mask.to(DEVICE), eps=0.0, shift_mean=False, backend=backend)
        torch.testing.assert_close(kept.cpu(), expected + 2 * mask, msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (3, 1), (7, 33), (5, 1031), (40000,)])
@pytest.mark.parametrize("shift_mean", [True, False])
def test_matches_reference(backend, shape, shift_mean):
    x, m = sample(shape)
    out = ops.masked_whiten(x, m, shift_mean=shift_mean, backend=backend)
    ref = ops.masked_whiten_ref(x, m, shift_mean=shift_mean)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out[~m] == 0).all()
    if m.sum() > 1:
        assert abs(out[m].mean().item() - (0 if shift_mean else ref[m].mean().item())) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(backend, dtype):
    x, m = sample((9, 130), dtype=dtype)
    torch.testing.assert_close(ops.masked_whiten(x, m, backend=backend), ops.masked_whiten_ref(x.float(), m),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_gives_zeros_not_nan(backend):
    x, _ = sample((4, 5))
    out = ops.masked_whiten(x, torch.zeros(4, 5, dtype=torch.bool, device=DEVICE), backend=backend)
    assert (out == 0).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"x \(2, 3\), mask \(3, 2\)"):
        ops.masked_whiten(torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="x must be float32"):
        ops.masked_whiten(torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, 3))
    with pytest.raises(ValueError, match="eps must be a finite number"):
        ops.masked_whiten(torch.zeros(2, 3), torch.ones(2, 3), eps=float("nan"))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="rlhf_fast._C not built")
def test_opcheck():
    x, m = sample((6, 11))
    torch.library.opcheck(torch.ops.rlhf_fast.masked_whiten.default, (x, m, 1e-8, True))
    torch.library.opcheck(torch.ops.rlhf_fast.masked_whiten.default, (x.half(), m, 1e-8, False))
