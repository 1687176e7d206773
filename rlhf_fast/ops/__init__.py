"""Public op API. Each op has one PyTorch reference `<op>_ref` and a `backend=` argument
("auto" | "torch" | "cpu" | "cuda" | "triton"); see rlhf_fast.ops._backend."""

from rlhf_fast.ops._backend import BACKENDS, BackendUnavailable, available_backends
from rlhf_fast.ops.fused_linear_logprobs import (
    LogprobsOutput,
    fused_linear_cross_entropy,
    fused_linear_logprobs,
    fused_linear_logprobs_ref,
    logprobs_from_logits,
    logprobs_from_logits_ref,
)
from rlhf_fast.ops.gae import gae, gae_ref
from rlhf_fast.ops.masked_whiten import masked_whiten, masked_whiten_ref
from rlhf_fast.ops.ranking_loss import ranking_loss, ranking_loss_ref

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "LogprobsOutput",
    "fused_linear_cross_entropy",
    "fused_linear_logprobs",
    "fused_linear_logprobs_ref",
    "logprobs_from_logits",
    "logprobs_from_logits_ref",
    "gae",
    "gae_ref",
    "masked_whiten",
    "masked_whiten_ref",
    "ranking_loss",
    "ranking_loss_ref",
]
