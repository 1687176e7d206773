"""The memory estimate (rlhf_fast.memory): exact parameter counts against a real tiny model, the
per-GPU figures shrinking with more GPUs where they are sharded, a hand-computed case, and the
script's output; and the activation formula against a measured CPU step of the tiny model."""

import os
import sys

import pytest
import torch

from rlhf_fast import memory as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def test_parameter_counts_match_the_real_tiny_model():
    from rlhf_fast.config import ModelConfig
    from rlhf_fast.data.tokenizer import load_tokenizer
    from rlhf_fast.models.loading import build_or_load_causal_lm
    from rlhf_fast.models.reward import RewardModel

    s = M.model_shapes("tiny")
    model = build_or_load_causal_lm(ModelConfig(preset="tiny"), load_tokenizer(), torch.device("cpu"))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert s.params == count(model)
    assert s.params_rm == count(RewardModel.from_causal_lm(model))
    assert s.embed == model.get_input_embeddings().weight.numel()
    assert s.embed + s.layers * s.layer + s.head == s.params  # the FSDP units cover the model
    assert (s.hidden, s.layers, s.vocab) == (model.config.hidden_size, model.config.num_hidden_layers,
                                            model.config.vocab_size)


def test_known_llama_sizes():
    # Llama-2-7B has 6,738,415,616 parameters (untied embeddings, 32k vocabulary); 70B 68,976,648,192
    assert M.model_shapes("7b").params == 6_738_415_616
    assert M.model_shapes("70b").params == 68_976_648_192


@pytest.mark.parametrize("stage", list(M.STAGES))
def test_more_gpus_less_memory_per_gpu(stage):
    s = M.model_shapes("7b")
    st = M.Setting()
    parts = {n: M.stage_bytes(s, n, stage, st) for n in (1, 8, 16, 64)}
    totals = [sum(p.values()) for p in parts.values()]
    assert totals == sorted(totals, reverse=True) and totals[0] > totals[-1]
    for n, p in parts.items():
        assert p["states"] * n == pytest.approx(parts[1]["states"])  # sharded: 1 / N
        assert p.get("frozen", 0.0) * n == pytest.approx(parts[1].get("frozen", 0.0))
        assert p["units"] == parts[1]["units"] and p["activations"] == parts[1]["activations"]  # per GPU


def test_options_lower_the_estimate():
    s = M.model_shapes("7b")
    base = M.Setting()
    assert M.per_gpu_gb(s, 8, "ppo_offload") < M.per_gpu_gb(s, 8, "ppo")
    assert M.per_gpu_gb(s, 8, "ppo_shared") < M.per_gpu_gb(s, 8, "ppo")
    no_ckpt = M.Setting(checkpointing=False)
    assert M.per_gpu_gb(s, 8, "sft", no_ckpt) > M.per_gpu_gb(s, 8, "sft", base)
    unfused = M.Setting(fused=False)
    saved = (M.per_gpu_gb(s, 8, "sft", unfused) - M.per_gpu_gb(s, 8, "sft", base)) * M.GB
    assert saved == pytest.approx(2048 * s.vocab * 4 - 2048 * 8)  # B x T x V x 4 B, less the fused op's 8 B / token


def test_hand_computed_case():
    s = M.Shapes(name="toy", hidden=4, intermediate=8, layers=2, heads=2, kv_dim=4, vocab=10, params=1000,
                 params_rm=900, embed=40, layer=200, head=44)
    st = M.Setting(micro_batch=2, seq=3, gen_batch=1, checkpointing=False, fused=True)
    # per token and layer, a = 2: norms 2 x (4*4 + 2*2*4) = 64; attention 2 x (3*4 + 2*4) = 40;
    # MLP 2 x 4*8 = 64 -> 168 B. Final norm 4*4 + 2*2*4 = 32. 6 tokens: 6 x (2*168 + 32) = 2208
    assert M.activation_bytes(s, 6, checkpointing=False) == 2208
    # checkpointing: 6 x (2 layers x 2*4 (inputs) + 168 (one layer recomputed) + 32) = 1296
    assert M.activation_bytes(s, 6, checkpointing=True) == 1296
    sft = M.stage_bytes(s, 2, "sft", st)
    assert sft["states"] == 16 * 1000 / 2  # fp32 params + grads + AdamW m, v, sharded over 2
    assert sft["units"] == 2 * 2 * 200 + 6 * 200  # two bf16 layers gathered + one layer's bf16 + fp32 grads
    assert sft["logits"] == 6 * 8  # fused: lse and mean per token
    assert sum(sft.values()) == 8000 + 2000 + 2208 + 48
    assert M.stage_bytes(s, 2, "sft", M.Setting(micro_batch=2, seq=3, checkpointing=False, fused=False))["logits"] == 6 * 10 * 4
    ppo = M.stage_bytes(s, 1, "ppo", st)
    # trained policy 1000 + value 900 at 16 B; frozen reference 1000 + reward 900 at 2 B; training phase
    # 2 models x 2208 + 48 = 4464 beats the KV cache 2 x 2 layers x 4 x 2 B x 1 sequence x 3 tokens = 96
    assert ppo == {"states": 30400, "frozen": 3800, "units": 2000, "activations": 4464}
    assert M.kv_cache_bytes(s, 1, 3) == 96


def test_script_writes_the_table(tmp_path):
    from benchmarks import memory_estimate

    out = tmp_path / "memory.md"
    assert memory_estimate.main(["--models", "tiny,7b", "--gpus", "1,8", "--no-measure", "--out", str(out)]) == 0
    text = out.read_text()
    for name, n in (("tiny", 1), ("tiny", 8), ("7b", 1), ("7b", 8)):
        assert any(line.startswith(f"| {name} |") and f"| {n} |" in line for line in text.splitlines()), (name, n)
    assert "6,738,415,616" in text


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_close_to_a_measured_cpu_step(checkpointing):
    from benchmarks.memory_estimate import measure_tiny_sft

    measured, estimated, _ = measure_tiny_sft(checkpointing, batch_rows=16)
    assert 0.7 < estimated / measured < 1.4, (measured, estimated)
