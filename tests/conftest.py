"""Test set-up: without a GPU, Triton kernels run under the interpreter on CPU tensors.
TRITON_INTERPRET must be set before any @triton.jit kernel is defined, hence here."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from rlhf_fast.ops import available_backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def runnable_backends() -> list[str]:
    """Concrete backends that can run on this machine's test device (torch always)."""
    return [b for b, why in available_backends(DEVICE).items() if why is None]


@pytest.fixture
def device():
    return DEVICE


def train_until_killed(trainer, at_step: int) -> None:
    """Runs `trainer.train()` and kills it (KeyboardInterrupt) as it starts step `at_step`, as a
    crash would: whatever checkpoints it wrote before stay on disk."""
    original = type(trainer).train_step

    def killed(self):
        if self.step == at_step:
            raise KeyboardInterrupt("killed")
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(trainer), "train_step", killed)
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
