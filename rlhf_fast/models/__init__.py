"""Model-side helpers: loading HF causal LMs, value/reward heads, and per-token log-probs."""
