"""Per-token log-probs of a Hugging Face causal LM through its final hidden states and lm_head with
the fused op: the (batch x seq x vocabulary) logits are never materialized.

    out = causal_lm_logprobs(model, input_ids, attention_mask, loss_mask=mask)   # (B, T-1) each
    loss = causal_lm_cross_entropy(model, input_ids, attention_mask, labels=labels)  # SFT NLL

Position t of the outputs scores token input_ids[:, t+1] given input_ids[:, :t+1] (the usual shift).
"""

from __future__ import annotations

import torch

from rlhf_fast.ops import LogprobsOutput, fused_linear_cross_entropy, fused_linear_logprobs

IGNORE_INDEX = -100


def _decoder_and_head(model):
    for attr in ("final_logit_softcapping", "logit_scale"):
        value = getattr(getattr(model, "config", None), attr, None)
        if value not in (None, 1.0):  # logits not a plain linear map of the hidden states
            raise ValueError(f"model.config.{attr}={value!r}: the fused path computes hidden @ lm_head.weight.T "
                             "only; use the model's logits with ops.logprobs_from_logits instead")
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None:
        decoder = getattr(model, "model", None)
    head = model.get_output_embeddings()
    if decoder is None or head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} must expose get_decoder() (or .model) and a linear "
                         "get_output_embeddings() to use the fused log-prob path")
    return decoder, head


def shifted_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    loss_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T-1) int64 targets: labels[:, 1:] (HF style, -100 = ignore) when given, else
    input_ids[:, 1:]; ignored (-100) where attention_mask[:, 1:] or loss_mask[:, 1:] is 0."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("loss_mask", loss_mask), ("labels", labels)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}")
    target = (labels if labels is not None else input_ids)[:, 1:].long()
    keep = torch.ones_like(target, dtype=torch.bool)
    if attention_mask is not None:
        keep &= attention_mask[:, 1:] != 0
    if loss_mask is not None:
        keep &= loss_mask[:, 1:] != 0
    return torch.where(keep, target, IGNORE_INDEX)


def _final_hidden(model, input_ids, attention_mask, model_kwargs):
    decoder, head = _decoder_and_head(model)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    B, T, H = hidden.shape
    return hidden[:, :-1].reshape(B * (T - 1), H), head


def causal_lm_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       loss_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                       temperature: float = 1.0, ref_logprobs: torch.Tensor | None = None,
                       kl_estimator: str = "k3", compute_entropy: bool = False, backend: str = "auto",
                       **model_kwargs) -> LogprobsOutput:
    """Shifted per-token log-probs (and entropy / KL against ref_logprobs (B, T-1)) of a causal LM;
    input_ids, attention_mask, loss_mask, labels: (B, T). Each output is (B, T-1) fp32, 0 at ignored
    positions. Differentiable w.r.t. the model's parameters."""
    B, T = input_ids.shape
    target = shifted_targets(input_ids, attention_mask, loss_mask, labels)
    if ref_logprobs is not None and tuple(ref_logprobs.shape) != (B, T - 1):
        raise ValueError(f"ref_logprobs must be (B, T-1) = ({B}, {T - 1}), got {tuple(ref_logprobs.shape)}")
    hidden, head = _final_hidden(model, input_ids, attention_mask, model_kwargs)
    out = fused_linear_logprobs(hidden, head.weight, target.reshape(-1), bias=head.bias, temperature=temperature,
                                ref_logprobs=None if ref_logprobs is None else ref_logprobs.reshape(-1),
                                kl_estimator=kl_estimator, compute_entropy=compute_entropy,
                                ignore_index=IGNORE_INDEX, backend=backend)
    shape = lambda t: None if t is None else t.view(B, T - 1)
    return LogprobsOutput(shape(out.logprobs), shape(out.entropy), shape(out.kl))


def causal_lm_cross_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                            loss_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                            reduction: str = "mean", backend: str = "auto", **model_kwargs) -> torch.Tensor:
    """SFT next-token NLL of a causal LM (mean over scored tokens by default) without the logits."""
    target = shifted_targets(input_ids, attention_mask, loss_mask, labels)
    hidden, head = _final_hidden(model, input_ids, attention_mask, model_kwargs)
    return fused_linear_cross_entropy(hidden, head.weight, target.reshape(-1), bias=head.bias, reduction=reduction,
                                      ignore_index=IGNORE_INDEX, backend=backend)
