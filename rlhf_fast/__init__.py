"""rlhf_fast: a fast, memory-lean RLHF trainer (InstructGPT: SFT, K-way reward model, PPO)."""

__version__ = "0.1.0"
