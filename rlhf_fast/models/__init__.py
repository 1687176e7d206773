"""Models: Hugging Face causal LMs (from a local folder or a config preset), the reward / value
model (backbone + scalar head), and the attention-backend choice."""

from rlhf_fast.models.attention import choose_attn_implementation
from rlhf_fast.models.loading import build_or_load_causal_lm, load_tokenizer_for, resolve_device, resolve_dtype
from rlhf_fast.models.reward import RewardModel

__all__ = ["RewardModel", "build_or_load_causal_lm", "choose_attn_implementation", "load_tokenizer_for",
           "resolve_device", "resolve_dtype"]
