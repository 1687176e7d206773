"""rlhf_fast benchmarks: every kernel against its PyTorch reference (correctness, speed, memory)."""
