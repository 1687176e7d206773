"""Loading or building causal LMs and their tokenizers."""

from __future__ import annotations

import os

import torch

from rlhf_fast.models.attention import choose_attn_implementation
from rlhf_fast.models.presets import PRESETS

DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device={name!r} but no CUDA GPU is visible")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # fp32 master weights; trainers run bf16 autocast on GPU
        return torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


def load_tokenizer_for(model_cfg):
    """The configured tokenizer, else the model folder's, else the shipped synthetic-task one."""
    from transformers import AutoTokenizer

    source = model_cfg.tokenizer or (model_cfg.path if model_cfg.path and _has_tokenizer(model_cfg.path) else None)
    if source is None:
        from rlhf_fast.data.tokenizer import load_tokenizer

        tok = load_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code)
    if tok.pad_token is None:  # many causal LM tokenizers have none; padding is masked anyway
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _has_tokenizer(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def build_or_load_causal_lm(model_cfg, tokenizer, device: torch.device):
    """AutoModelForCausalLM from model_cfg.path, or a fresh Llama from model_cfg.preset."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    dtype = resolve_dtype(model_cfg.dtype, device)
    attn = choose_attn_implementation(model_cfg.attn_implementation, device, dtype)
    if model_cfg.path:
        if not os.path.isdir(model_cfg.path):
            raise FileNotFoundError(f"model.path {model_cfg.path!r} is not a folder (models are loaded from local folders only)")
        config = AutoConfig.from_pretrained(model_cfg.path, trust_remote_code=model_cfg.trust_remote_code)
        set_dropout(config, model_cfg.dropout)
        model = AutoModelForCausalLM.from_pretrained(model_cfg.path, config=config, dtype=dtype, attn_implementation=attn,
                                                     trust_remote_code=model_cfg.trust_remote_code)
    else:
        if model_cfg.preset not in PRESETS:
            raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {model_cfg.preset!r}")
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             tie_word_embeddings=False, **PRESETS[model_cfg.preset])
        set_dropout(config, model_cfg.dropout)
        config._attn_implementation = attn
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(device)


def set_dropout(config, p: float) -> None:
    """Sets every dropout field the architecture has (Llama: attention_dropout only)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {p}")
    for name in DROPOUT_FIELDS:
        if hasattr(config, name):
            setattr(config, name, p)
