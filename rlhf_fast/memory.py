"""Per-GPU memory estimate of the three stages under FSDP2 on N GPUs: an estimate from the model's
shapes, not a measurement. Dense Llama-style decoders (any HF causal LM config whose decoder has
`.layers`); parameters are counted exactly on the `meta` device, so they match the real architecture.

Accounting, per GPU (P: a model's parameters, U: the largest FSDP unit's, N: GPUs; FSDP2 units =
the embedding, each decoder layer, the final norm + output head; `fully_shard` with
MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) and AdamW):

- trained model (SFT policy, RM, PPO policy and value): sharded fp32 parameters 4 B + fp32 gradients
  4 B + AdamW m, v 8 B per parameter, / N  ->  16 P / N;
- frozen model (PPO reference and reward model): bf16 parameters sharded, 2 P / N (0 on the GPU when
  offloaded: FSDP2's CPUOffloadPolicy keeps the shards in CPU memory);
- unsharded compute copies: the bf16 all-gathered parameters of two units at a time (the one running
  and the one prefetched), 2 x 2 B x U, and in the backward one unit's unsharded gradient in bf16 and
  its fp32 copy for the reduce-scatter, 6 B x U;
- activations kept for the backward of a micro-batch of b sequences x T tokens, per token and layer, in
  bytes, with compute dtype a = 2 (bf16), the RMSNorm upcasting to fp32 (HF LlamaRMSNorm):
      2 norms x (4 h + 2 a h)  +  a (3 h + 2 kv)  [q, attention out and o_proj's copy; k, v]
      + a 4 I  [gate, up, silu(gate), product]   (= 22 h + 4 kv + 8 I at a = 2)
  (flash / memory-efficient attention: no T x T scores; `flash=False` adds the softmax probabilities,
  a x heads x T); plus the final norm. With activation checkpointing per layer: each layer's input (a h)
  for all layers plus one layer's full set while it is recomputed;
- the LM head's log-probs: the fused op (ops.fused_linear_logprobs / fused_linear_cross_entropy) keeps
  8 B per token; the full-logits reference keeps at least the fp32 log-probs, b x T x V x 4 B (the bf16
  logits and the fp32 upcast come on top of that at the forward's peak): `fused=False` counts those
  4 B x V per token;
- PPO: peak of the training phase (policy and value forward + one backward on the same micro-batch:
  both models' activations) and of the generation phase (KV cache, 2 x layers x kv x 2 B per token, for
  gen_batch sequences of T tokens per GPU). `shared_backbone`: the value head sits on the policy (one
  trained backbone, one set of activations).

Left out: the CUDA context and NCCL buffers (~0.5-1 GB per GPU), allocator fragmentation, the
optimizer step's temporaries, temporaries inside a layer beyond what autograd saves, and the
pipelining/overlap details of a real FSDP2 run. Expect the real peak within some tens of percent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

GB = 1e9  # the tables print decimal GB

# Llama-style shapes beyond the presets (public hyperparameters), for the table.
EXTRA_SHAPES = {
    "13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,  # Llama-2-13B
            "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000},
    "34b": {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 48,  # CodeLlama-34B
            "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,  # Llama-2-70B
            "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000},
}
# Vocabularies for the presets (they take the tokenizer's): Llama-3's for 1b, Llama-2's for 7b; tiny
# uses the shipped tokenizer's.
PRESET_VOCAB = {"1b": 128256, "7b": 32000}


@dataclass
class Shapes:
    """What the estimate needs of a model; parameter counts from the real module on `meta`."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_dim: int  # key/value width: num_key_value_heads x head_dim
    vocab: int
    params: int  # the causal LM (policy, reference)
    params_rm: int  # backbone + scalar head (reward and value models)
    embed: int  # FSDP units: the embedding, one decoder layer, the final norm + LM head
    layer: int
    head: int

    @property
    def largest_unit(self) -> int:
        return max(self.embed, self.layer, self.head)


def llama_config(name: str):
    """A transformers LlamaConfig for a preset (tiny, 1b, 7b) or one of EXTRA_SHAPES."""
    from transformers import LlamaConfig

    from rlhf_fast.models.presets import PRESETS

    if name in PRESETS:
        if name in PRESET_VOCAB:
            vocab = PRESET_VOCAB[name]
        else:
            from rlhf_fast.data.tokenizer import load_tokenizer

            vocab = len(load_tokenizer())
        return LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **PRESETS[name])
    if name in EXTRA_SHAPES:
        return LlamaConfig(tie_word_embeddings=False, **EXTRA_SHAPES[name])
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(PRESETS) + sorted(EXTRA_SHAPES)} or pass a config")


def config_from_json(path: str):
    """A transformers config from a local config.json (nothing is downloaded)."""
    from transformers import AutoConfig

    with open(path) as f:
        data = json.load(f)
    return AutoConfig.for_model(**data)


def shapes_from_config(config, name: str | None = None) -> Shapes:
    """Builds the causal LM on the `meta` device (no memory, no weights) and counts its parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    count = lambda m: sum(p.numel() for p in m.parameters())
    decoder = model.get_decoder()
    total, backbone = count(model), count(decoder)
    embed = count(decoder.get_input_embeddings())
    blocks = [count(block) for block in decoder.layers]
    final_norm = backbone - embed - sum(blocks)
    h = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return Shapes(name=name or getattr(config, "model_type", "model"), hidden=h,
                  intermediate=config.intermediate_size, layers=config.num_hidden_layers, heads=heads,
                  kv_dim=kv_heads * head_dim, vocab=config.vocab_size, params=total, params_rm=backbone + h + 1,
                  embed=embed, layer=max(blocks), head=total - backbone + final_norm)


def model_shapes(name: str) -> Shapes:
    return shapes_from_config(llama_config(name), name)


# ----------------------------------------------------------------------------- the formulas


def activation_bytes(s: Shapes, tokens: int, checkpointing: bool, act_bytes: int = 2, flash: bool = True,
                     seq: int = 0) -> float:
    """Bytes a decoder keeps for the backward of `tokens` tokens (sequences of length `seq`)."""
    h, a = s.hidden, act_bytes
    per_layer = 2 * (4 * h + 2 * a * h) + a * (3 * h + 2 * s.kv_dim) + a * 4 * s.intermediate
    if not flash:
        per_layer += a * s.heads * seq
    final_norm = 4 * h + 2 * a * h
    if checkpointing:
        return tokens * (s.layers * a * h + per_layer + final_norm)
    return tokens * (s.layers * per_layer + final_norm)


def logits_bytes(s: Shapes, tokens: int, fused: bool) -> float:
    """What the LM head's log-probs keep: 8 B per token fused, >= 4 B x V per token from full logits."""
    return tokens * (8 if fused else 4 * s.vocab)


def kv_cache_bytes(s: Shapes, sequences: int, seq: int) -> float:
    return 2 * s.layers * s.kv_dim * 2 * sequences * seq


@dataclass
class Setting:
    """The run the estimate is for (per GPU)."""

    micro_batch: int = 1  # sequences per GPU per forward/backward
    seq: int = 2048  # tokens per sequence (PPO: prompt + response)
    gen_batch: int = 8  # PPO: sequences generated at once per GPU (their KV cache)
    checkpointing: bool = True
    fused: bool = True  # the fused log-prob / cross-entropy ops (no full-vocabulary logits)
    flash: bool = True  # flash / memory-efficient attention (no T x T scores kept)


def stage_bytes(s: Shapes, n_gpus: int, stage: str, st: Setting) -> dict[str, float]:
    """Per-GPU bytes of `stage` by part: sft, rm, ppo, ppo_offload (frozen models in CPU memory),
    ppo_shared (policy and value share the backbone)."""
    tokens = st.micro_batch * st.seq
    act = lambda: activation_bytes(s, tokens, st.checkpointing, flash=st.flash, seq=st.seq)
    units = 2 * 2 * s.largest_unit + 6 * s.largest_unit  # two gathered bf16 units + one unit's gradients
    if stage == "sft":
        return {"states": 16 * s.params / n_gpus, "units": units, "activations": act(),
                "logits": logits_bytes(s, tokens, st.fused)}
    if stage == "rm":
        return {"states": 16 * s.params_rm / n_gpus, "units": units, "activations": act(), "logits": 0.0}
    if stage not in ("ppo", "ppo_offload", "ppo_shared"):
        raise ValueError(f"unknown stage {stage!r}")
    shared = stage == "ppo_shared"
    trained = s.params + (s.hidden + 1 if shared else s.params_rm)
    frozen = 0 if stage == "ppo_offload" else s.params + s.params_rm
    train_phase = (1 if shared else 2) * act() + logits_bytes(s, tokens, st.fused)
    gen_phase = kv_cache_bytes(s, st.gen_batch, st.seq)
    return {"states": 16 * trained / n_gpus, "frozen": 2 * frozen / n_gpus, "units": units,
            "activations": max(train_phase, gen_phase)}


def per_gpu_gb(s: Shapes, n_gpus: int, stage: str, st: Setting | None = None) -> float:
    return sum(stage_bytes(s, n_gpus, stage, st or Setting()).values()) / GB


STAGES = {"sft": "SFT", "rm": "RM", "ppo": "PPO", "ppo_offload": "PPO, frozen offloaded", "ppo_shared": "PPO, shared backbone"}


def table(models: list[Shapes], gpus: list[int], st: Setting | None = None) -> str:
    """Markdown: model x GPUs -> GB per GPU per stage."""
    st = st or Setting()
    lines = ["| model | params | GPUs | " + " | ".join(STAGES.values()) + " |",
             "|---|---|---|" + "---|" * len(STAGES)]
    for s in models:
        for n in gpus:
            cells = [cell(per_gpu_gb(s, n, stage, st)) for stage in STAGES]
            lines.append(f"| {s.name} | {human(s.params)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def cell(x_gb: float) -> str:
    return f"{x_gb:.1f}" if x_gb >= 0.1 else f"{x_gb:.2g}"


def gb(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x / GB:.2f}" if x >= 0.01 * GB else f"{x / 2**20:.1f} MB"
