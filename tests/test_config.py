import pytest

from rlhf_fast.config import ConfigError, PPOConfig, RMConfig, SFTConfig, field_docs, load_config, parse_overrides


def test_every_field_has_a_doc_line():
    for cls in (SFTConfig, RMConfig):
        docs = field_docs(cls)
        assert docs and all(text.strip() for text in docs.values()), [k for k, t in docs.items() if not t.strip()]


def test_yaml_section_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  optim: {lr: 0.5, max_steps: 7}\n  model: {preset: tiny}\nrm:\n  margin: 1.0\n")
    cfg = load_config(SFTConfig, "sft", str(path), ["--optim.lr", "0.25", "--run.resume=true", "--optim.betas", "[0.8, 0.9]"])
    assert cfg.optim.lr == 0.25 and cfg.optim.max_steps == 7 and cfg.run.resume is True
    assert cfg.optim.betas == [0.8, 0.9]
    assert load_config(RMConfig, "rm", str(path)).margin == 1.0


def test_presets_load_by_name():
    cfg = load_config(SFTConfig, "sft", "tiny")
    assert cfg.model.preset == "tiny"
    assert load_config(RMConfig, "rm", "tiny").model.path
    for preset in ("1b", "7b"):
        sft = load_config(SFTConfig, "sft", preset)
        assert sft.model.dropout == 0.2 and sft.model.gradient_checkpointing
        assert load_config(PPOConfig, "ppo", preset).ppo.kl_beta == 0.02


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; valid keys under optim: .*lr"):
        load_config(SFTConfig, "sft", None, ["--optim.lrr", "1"])
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  optimizer: {lr: 1}\n")
    with pytest.raises(ConfigError, match=r"c.yaml \[sft\]: unknown config key 'optimizer'; valid keys: .*optim.lr"):
        load_config(SFTConfig, "sft", str(path))


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="'optim.max_steps': cannot use 'many' as int"):
        load_config(SFTConfig, "sft", None, ["--optim.max_steps", "many"])
    with pytest.raises(ConfigError, match="'run.resume': cannot use 'maybe' as bool"):
        load_config(SFTConfig, "sft", None, ["--run.resume", "maybe"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, "sft", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing value for --optim.lr"):
        parse_overrides(["--optim.lr"])
