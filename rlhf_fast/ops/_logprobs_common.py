"""What every fused_linear_logprobs backend shares after its online log-sum-exp."""

from __future__ import annotations

import torch


def finish_stats(m, s, t, tgt, want_ent: bool):
    """From the online-LSE state per token, m (max z), s = sum exp(z - m), t = sum exp(z - m) (z - m),
    and the label's logit: (logprob before masking, entropy, saved) where saved = (m, log s, c) with
    c = mu - m (mu = sum p z) is what the backward needs. logprob = (z_y - m) - log s and entropy
    = log s - c avoid the cancellation of lse - mu at |z| ~ 1e4."""
    log_s = torch.log(s)
    lp = (tgt - m) - log_s
    c = t / s if want_ent else torch.zeros_like(s)
    return lp, log_s - c, (m, log_s, c)
