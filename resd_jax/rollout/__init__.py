"""Rollout loops: batched multi-turn episodes over many environments (`multi_turn`)."""
from resd_jax.rollout.multi_turn import (Episode, MultiTurnConfig, RolloutTimes, Turn, episode_metrics,
                                         run_episodes, window)

__all__ = ["Episode", "MultiTurnConfig", "RolloutTimes", "Turn", "episode_metrics", "run_episodes", "window"]
