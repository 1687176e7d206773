"""Llama-style architecture presets for models built from a config (random initialisation)."""

PRESETS = {
    # The demo and test model: trains in minutes on two CPU cores.
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=256, rope_theta=10000.0),
    # Llama-3.2-1B-like.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0),
    # Llama-2-7B-like.
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, max_position_embeddings=4096, rope_theta=10000.0),
}
