"""Stage configs: dataclasses whose every field has a one-line doc, filled from a YAML preset and
`--section.field value` command-line overrides. Unknown keys are rejected with the valid ones listed.

A preset file (configs/<name>.yaml) has one section per stage (`sft`, `rm`, `ppo`, `pipeline`); each
stage reads its own section. Inside it, keys mirror the dataclasses: `model.path`, `optim.lr`, ...
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def doc(default: Any, text: str, **kw):
    """A dataclass field with a one-line description (shown by `--help` and in errors)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


def section(factory, text: str):
    """A nested config section."""
    return field(default_factory=factory, metadata={"doc": text})


@dataclass
class ModelConfig:
    path: str | None = doc(None, "local Hugging Face model folder; None builds a fresh model from `preset`")
    preset: str = doc("tiny", "architecture preset when `path` is None: tiny, 1b, 7b")
    tokenizer: str | None = doc(None, "tokenizer folder or file; None uses the model folder's, else the shipped one")
    attn_implementation: str = doc("auto", "auto (flash_attention_2 when installed and supported, else sdpa), sdpa, eager, flash_attention_2")
    dtype: str = doc("auto", "parameter dtype: auto (float32, trained under bf16 autocast on GPU), float32, bfloat16")
    dropout: float = doc(0.0, "dropout probability set on the model's dropout fields (the paper used 0.2 for SFT)")
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward to save memory")
    trust_remote_code: bool = doc(False, "allow model code from the model folder (off: never run downloaded code)")


@dataclass
class DataConfig:
    train_file: str | None = doc(None, "training JSONL file or `datasets` source; None uses the synthetic task")
    eval_file: str | None = doc(None, "held-out JSONL file; None uses the synthetic task's held-out split")
    max_length: int = doc(128, "maximum tokens of prompt + response; longer rows are truncated (counted in the log)")
    skip_bad_rows: bool = doc(False, "skip malformed rows with a logged count instead of stopping with an error")
    synthetic_train: int = doc(2000, "synthetic task: number of training rows generated when train_file is None")
    synthetic_eval: int = doc(200, "synthetic task: number of held-out rows generated when eval_file is None")
    synthetic_k: int = doc(4, "synthetic task: responses ranked per prompt in the reward-model data")
    synthetic_policy_samples: int = doc(0, "synthetic task, RM: how many of the K responses are sampled from the SFT "
                                           "model (model.path) instead of hand-made, as InstructGPT ranks the policy's own samples")
    synthetic_verbose_demos: float = doc(0.0, "synthetic task, demonstrations (SFT, PPO-ptx, the RM's offset): fraction written "
                                              "by a verbose labeler who opens with a preamble ('sure, ...') that the gold labeler penalises")
    packing: bool = doc(False, "SFT: pack rows into sequences of max_length (padding-free; rows never attend to each other)")


@dataclass
class OptimConfig:
    lr: float = doc(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    betas: list = doc([0.9, 0.95], "AdamW betas")
    warmup_steps: int = doc(20, "linear warm-up steps before the cosine decay")
    min_lr_ratio: float = doc(0.1, "final learning rate as a fraction of lr")
    max_steps: int = doc(300, "optimizer steps to train")
    batch_size: int = doc(16, "rows per micro-batch")
    grad_accum: int = doc(1, "micro-batches per optimizer step")
    grad_reduce_every_micro_batch: bool = doc(False, "under torchrun: reduce gradients after every micro-batch instead of "
                                                     "the last only (less memory: no full-size fp32 gradient between them)")
    grad_clip: float = doc(1.0, "clip the global gradient norm to this (0 disables)")


@dataclass
class RunConfig:
    output_dir: str = doc("outputs/run", "folder for checkpoints, metrics.jsonl, plots")
    seed: int = doc(0, "seed for data order, initialisation and sampling")
    device: str = doc("auto", "auto (cuda when available), cpu, cuda")
    log_every: int = doc(10, "steps between progress-bar / TensorBoard updates (metrics.jsonl gets every step)")
    eval_every: int = doc(0, "steps between evaluations (0: only at the end)")
    save_every: int = doc(0, "steps between checkpoints (0: only at the end)")
    resume: bool = doc(False, "continue from the latest checkpoint in output_dir")
    progress: bool = doc(True, "show a progress bar")
    threads: int = doc(0, "CPU threads for torch (0 keeps torch's default)")


@dataclass
class SFTConfig:
    """Stage 1: supervised fine-tuning on demonstrations (loss on response tokens only)."""

    model: ModelConfig = section(ModelConfig, "the policy model")
    data: DataConfig = section(DataConfig, "demonstrations")
    optim: OptimConfig = section(OptimConfig, "optimizer and schedule")
    run: RunConfig = section(lambda: RunConfig(output_dir="outputs/sft"), "run control")


@dataclass
class RMConfig:
    """Stage 2: reward model on K-way rankings, all C(K,2) pairs of a prompt in one batch element."""

    model: ModelConfig = section(ModelConfig, "initialisation (the SFT checkpoint)")
    data: DataConfig = section(DataConfig, "ranked comparisons")
    optim: OptimConfig = section(lambda: OptimConfig(lr=5e-4, batch_size=8), "optimizer and schedule")
    run: RunConfig = section(lambda: RunConfig(output_dir="outputs/rm"), "run control")
    margin: float = doc(0.0, "margin subtracted from every reward gap in the ranking loss")
    normalize_on_sft: bool = doc(True, "after training, set the bias so SFT demonstrations score mean 0 (as in the paper)")
    demonstrations_file: str | None = doc(None, "SFT JSONL whose demonstrations define reward 0; None uses the synthetic task's")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass."""


def field_docs(cls) -> dict[str, str]:
    """Dotted key -> one-line doc, for every leaf field of a config class."""
    out = {}
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f)
        if sub is not None:
            out.update({f"{f.name}.{k}": v for k, v in field_docs(sub).items()})
        else:
            out[f.name] = f.metadata.get("doc", "")
    return out


def _dataclass_type(cls, f):
    hint = typing.get_type_hints(cls)[f.name]
    return hint if dataclasses.is_dataclass(hint) else None


def _coerce(value: Any, hint, key: str):
    """Converts YAML / command-line values to the field's type, with an error naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
        if hint is list or origin is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            return list(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def _apply(obj, updates: dict, prefix: str = "") -> None:
    valid = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in valid:
            options = ", ".join(sorted(field_docs(type(obj))))
            raise ConfigError(f"unknown config key {dotted!r}; valid keys{' under ' + prefix[:-1] if prefix else ''}: {options}")
        sub = _dataclass_type(type(obj), valid[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a section; give a mapping, got {value!r}")
            _apply(getattr(obj, key), value, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def parse_overrides(args: list[str]) -> dict:
    """`--a.b value` / `--a.b=value` pairs -> nested dict (values parsed as YAML scalars)."""
    nested: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"expected --key value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"missing value for {arg}")
            key, value = arg[2:], args[i + 1]
            i += 2
        node = nested
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def resolve_config_path(path: str) -> str:
    """A file path, or a preset name looked up in configs/ (e.g. `tiny`)."""
    if os.path.exists(path):
        return path
    candidate = os.path.join(CONFIG_DIR, f"{path}.yaml")
    if os.path.exists(candidate):
        return candidate
    raise ConfigError(f"config file {path!r} not found (nor {candidate})")


def load_config(cls, section: str, path: str | None = None, overrides: list[str] | None = None):
    """An instance of `cls` from the `section` of a YAML file, then the command-line overrides."""
    cfg = cls()
    if path:
        path = resolve_config_path(path)
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of stage sections, got {type(data).__name__}")
        if section in data:
            try:
                _apply(cfg, data[section] or {})
            except ConfigError as exc:
                raise ConfigError(f"{path} [{section}]: {exc}") from None
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


@dataclass
class RolloutConfig:
    batch_size: int = doc(64, "prompts (episodes) sampled per PPO iteration")
    max_new_tokens: int = doc(24, "longest response sampled")
    temperature: float = doc(1.0, "sampling temperature (the paper: 1)")
    top_p: float = doc(1.0, "nucleus sampling threshold (1 disables)")


@dataclass
class PPOHyperConfig:
    epochs: int = doc(1, "passes over each rollout batch (the paper: 1)")
    minibatch_size: int = doc(16, "episodes per gradient step")
    clip: float = doc(0.2, "policy ratio clip")
    value_clip: float = doc(0.2, "value clip around the rollout's values")
    vf_coef: float = doc(0.5, "value-loss weight")
    value_lr: float | None = doc(None, "learning rate of the value model (None: optim.lr)")
    critic_warmup_steps: int = doc(0, "first iterations that train only the value model (the policy stays put)")
    entropy_coef: float = doc(0.0, "entropy bonus weight")
    kl_beta: float = doc(0.02, "per-token KL penalty coefficient (the paper: 0.02)")
    kl_estimator: str = doc("k1", "per-token KL estimate in the reward: k1 (log-ratio) or k3")
    adaptive_kl: bool = doc(False, "adapt kl_beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = doc(6.0, "adaptive KL: target KL per episode")
    kl_horizon: int = doc(10000, "adaptive KL: horizon in episodes")
    gamma: float = doc(1.0, "discount")
    lam: float = doc(0.95, "GAE lambda")
    whiten_advantages: bool = doc(True, "whiten advantages over the rollout batch")
    score_clip: float = doc(0.0, "clip reward-model scores to [-score_clip, score_clip] (0 disables)")
    score_normalize: bool = doc(False, "normalise reward-model scores with running mean / std")
    no_eos_penalty: float = doc(0.0, "score given instead of the RM's to responses cut at max_new_tokens without EOS (0 disables)")
    ptx_coef: float = doc(0.0, "PPO-ptx: weight of the pretraining NLL mixed into each step (the paper: 27.8)")
    ptx_file: str | None = doc(None, "PPO-ptx data (SFT JSONL rows); None uses the synthetic demonstrations")
    offload_frozen: bool = doc(False, "keep the reference and reward models on the CPU between uses")
    shared_backbone: bool = doc(False, "value head on the policy's backbone (one trained network instead of two: less "
                                       "memory; the value loss then also trains the policy's backbone)")


@dataclass
class PPOConfig:
    """Stage 3: PPO against the reward model with a per-token KL penalty to the SFT model."""

    model: ModelConfig = section(ModelConfig, "the policy, initialised from the SFT model (also the frozen reference)")
    reward_model: str | None = doc(None, "reward-model folder (frozen); None: a fresh preset model (tests only)")
    value_model: str | None = doc(None, "value-model initialisation; None uses reward_model (as in the paper)")
    data: DataConfig = section(DataConfig, "prompts")
    optim: OptimConfig = section(lambda: OptimConfig(lr=1e-4, max_steps=40, warmup_steps=0, min_lr_ratio=1.0), "optimizer; max_steps counts PPO iterations")
    run: RunConfig = section(lambda: RunConfig(output_dir="outputs/ppo"), "run control")
    rollout: RolloutConfig = section(RolloutConfig, "sampling")
    ppo: PPOHyperConfig = section(PPOHyperConfig, "PPO hyper-parameters")
