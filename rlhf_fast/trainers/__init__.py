"""Stage trainers: SFT, reward model, PPO, and what they share."""
