"""The reward model (and PPO's value model): a causal LM's backbone without its LM head, plus a
linear head giving one scalar per token. The reward of a sequence is the head read at its last
response token; the value model uses every token's scalar.

Saved as the backbone's `save_pretrained` folder (safetensors) plus `reward_head.safetensors` and
`reward_head.json` (hidden size, and the offset applied so SFT demonstrations score mean 0)."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

HEAD_WEIGHTS = "reward_head.safetensors"
HEAD_META = "reward_head.json"


class RewardModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None, offset: float = 0.0):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head.to(device=next(backbone.parameters()).device, dtype=next(backbone.parameters()).dtype)
        self.offset = offset  # already folded into head.bias; kept for the record

    @property
    def config(self):
        return self.backbone.config

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T) fp32 scalar per token (the value model's values)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.head(hidden).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                last_index: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) fp32 rewards read at `last_index` (default: the last non-padding token, right padding)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        if last_index is None:
            last_index = attention_mask.long().sum(-1) - 1
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index.clamp_min(0)]
        return self.head(last).squeeze(-1).float()

    @torch.no_grad()
    def add_offset(self, delta: float) -> None:
        """Shifts every score by `delta` (used to centre the SFT demonstrations at 0)."""
        self.head.bias.add_(delta)
        self.offset += delta

    @classmethod
    def from_causal_lm(cls, causal_lm: nn.Module) -> "RewardModel":
        """A fresh head on the backbone of an (SFT) causal LM; the LM head is dropped."""
        return cls(causal_lm.get_decoder())

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                        attn_implementation: str = "sdpa", trust_remote_code: bool = False) -> "RewardModel":
        """A saved reward model, or (without a head file) a causal LM checkpoint with a fresh head."""
        from transformers import AutoModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward model folder {path!r} does not exist")
        backbone = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                             trust_remote_code=trust_remote_code).to(device)
        head, offset = load_head(path)
        return cls(backbone, head=head, offset=offset)

    def save_pretrained(self, path: str, state_dict: dict | None = None) -> None:
        """state_dict: this module's tensors to save instead of its own (a sharded model's, gathered)."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        if state_dict is None:
            self.backbone.save_pretrained(path, safe_serialization=True)
            head = self.head.state_dict()
        else:
            self.backbone.save_pretrained(path, safe_serialization=True, state_dict={
                k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")})
            head = {k[len("head."):]: v for k, v in state_dict.items() if k.startswith("head.")}
        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, os.path.join(path, HEAD_WEIGHTS))
        with open(os.path.join(path, HEAD_META), "w") as f:
            json.dump({"hidden_size": self.head.in_features, "offset": self.offset,
                       "read_at": "last response token"}, f, indent=1)


def load_head(path: str) -> tuple[nn.Linear | None, float]:
    """The saved head of a reward-model folder and its offset; (None, 0.0) for a causal LM folder."""
    from safetensors.torch import load_file

    if not os.path.exists(os.path.join(path, HEAD_WEIGHTS)):
        return None, 0.0
    with open(os.path.join(path, HEAD_META)) as f:
        meta = json.load(f)
    head = nn.Linear(meta["hidden_size"], 1)
    head.load_state_dict(load_file(os.path.join(path, HEAD_WEIGHTS)))
    return head, meta.get("offset", 0.0)
