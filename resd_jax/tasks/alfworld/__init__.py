"""ALFWorld on the real engine: games (official or generated), batched episodes, action parsing, prompts.

`make("alfworld", data="generated")` builds an `AlfworldTask`. Nothing here imports `alfworld` until it is
used, so the package imports without the optional extra.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from resd_jax.tasks.alfworld.actions import ParsedAction, parse_action
from resd_jax.tasks.alfworld.data import (INSTALL_HINT, canonical_split, game_id, game_task_type, list_games,
                                          require_alfworld, resolve_data_root)
from resd_jax.tasks.alfworld.env import AlfworldEnv, AlfworldEnvConfig, AlfworldEnvs, EnvState
from resd_jax.tasks.alfworld.generator import SPLITS, TASK_TYPES, ensure_generated_games
from resd_jax.tasks.alfworld.prompts import SYSTEM
from resd_jax.tasks.base import Example, Grade, RunTask, register


@register("alfworld")
@dataclasses.dataclass
class AlfworldTask(RunTask):
  """The ALFWorld task: one `Example` per game, episodes played through `make_envs()`.

  data: "generated" (default: small games written under `generated_root`), "official" (`$ALFWORLD_DATA`) or
    a folder in the official layout. n_per_type / seed: size and seed of the generated set.
  task_types: ALFWorld task type ids (1..6) to keep.
  """
  data: str = "generated"
  generated_root: str = "~/.cache/resd_jax/alfworld_generated"
  n_per_type: int = 2
  seed: int = 0
  task_types: tuple[int, ...] = tuple(TASK_TYPES)
  max_steps: int = 50
  expert: bool = False
  name: str = "alfworld"
  multi_turn = True  # class attribute (no annotation): episodes, one train row per assistant turn

  @classmethod
  def from_run(cls, run, **options):
    """env.* settings; generated games go to <env.generated_root>/n<n_per_type>_s<seed>."""
    e = run.env
    root = f"{e.generated_root.rstrip('/')}/n{e.n_per_type}_s{run.seed}"
    return cls(data=e.data, generated_root=root, n_per_type=e.n_per_type, seed=run.seed, task_types=e.task_types,
               max_steps=e.max_steps)

  @classmethod
  def turns_per_sample(cls, run):
    return run.env.max_steps

  def __post_init__(self):
    bad = [t for t in self.task_types if t not in TASK_TYPES]
    if bad or not self.task_types:
      raise ValueError(f"task_types must be a non-empty subset of {sorted(TASK_TYPES)}, got {self.task_types}")
    self.env_config = AlfworldEnvConfig(max_steps=self.max_steps, expert=self.expert)
    self.root = resolve_data_root(self.data, generated_root=self.generated_root, n_per_type=self.n_per_type,
                                  seed=self.seed)

  def games(self, split: str) -> list[str]:
    return list_games(self.root, split, tuple(self.task_types))

  def prompts(self, split: str) -> Iterable[Example]:
    """One example per game of `split` (train / valid_seen / valid_unseen; 'test' = valid_unseen), sorted.
    The messages hold only the system prompt: the first user turn is the room the episode's reset shows."""
    split = canonical_split(split)
    for gamefile in self.games(split):
      yield Example(id=game_id(gamefile), messages=({"role": "system", "content": SYSTEM},),
                    meta={"gamefile": gamefile, "task_type": game_task_type(gamefile), "split": split})

  def make_envs(self) -> AlfworldEnvs:
    return AlfworldEnvs(self.env_config)

  def make_env(self, example: Example) -> AlfworldEnv:
    return AlfworldEnv(example.meta["gamefile"], self.env_config)

  def grade(self, example: Example, response_text: str, *, truncated: bool = False) -> Grade:
    raise TypeError("ALFWorld is multi-turn: play episodes with make_envs() / make_env(), not grade()")


__all__ = ["AlfworldTask", "AlfworldEnvs", "AlfworldEnv", "AlfworldEnvConfig", "EnvState", "ParsedAction",
           "parse_action", "ensure_generated_games", "resolve_data_root", "list_games", "require_alfworld",
           "INSTALL_HINT", "SPLITS", "TASK_TYPES"]
