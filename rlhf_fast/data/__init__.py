"""Dataset formats, tokenisation and the synthetic demo task (no torch or extension imports here)."""
