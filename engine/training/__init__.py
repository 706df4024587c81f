"""The training stages: supervised fine-tuning (sft), the reward model (reward), PPO (ppo),
what they share (train_utils) and the built-in programmatic rewards (rewards_builtin)."""
