"""Where ALFWorld games come from: the official data (`$ALFWORLD_DATA`) or games we generate, plus the plain
dict config `AlfredTWEnv` takes and the game lists it selects.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

from resd_jax.tasks.alfworld.generator import SPLITS, TASK_TYPES, ensure_generated_games

INSTALL_HINT = "pip install alfworld==0.4.2 textworld==1.7.0  (or: pip install -e '.[alfworld]')"
# Read before anything imports `alfworld.info`, which sets ALFWORLD_DATA to ~/.cache/alfworld when unset.
_USER_ALFWORLD_DATA = os.environ.get("ALFWORLD_DATA")
_TRAIN_EVAL = {"train": "train", "valid_seen": "eval_in_distribution", "valid_unseen": "eval_out_of_distribution"}
SPLIT_ALIASES = {"test": "valid_unseen", "eval_in_distribution": "valid_seen",
                 "eval_out_of_distribution": "valid_unseen"}


def require_alfworld() -> None:
  """Raises a one-line ImportError naming the install command when the engine is missing."""
  try:
    import alfworld  # noqa: F401
    import textworld  # noqa: F401
  except ImportError as e:
    raise ImportError(f"ALFWorld needs the `alfworld` extra ({e.name} is missing): {INSTALL_HINT}") from None


def canonical_split(split: str) -> str:
  split = SPLIT_ALIASES.get(split, split)
  if split not in SPLITS:
    raise ValueError(f"unknown ALFWorld split {split!r}; use one of {list(SPLITS)} (or 'test')")
  return split


def _has_games(root: str) -> bool:
  return os.path.isdir(os.path.join(root, "json_2.1.1"))


def resolve_data_root(data: str = "generated", *, generated_root: str = "~/.cache/resd_jax/alfworld_generated",
                      n_per_type: int = 2, seed: int = 0) -> str:
  """The folder holding `json_2.1.1/` (and usually `logic/`).

  data: "official" (the folder `$ALFWORLD_DATA` names), "generated" (small games written on first use into
    `generated_root`, reused after) or a path to a folder in the official layout.
  """
  if data == "generated":
    require_alfworld()
    return ensure_generated_games(generated_root, n_per_type=n_per_type, seed=seed)
  if data == "official":
    root = _USER_ALFWORLD_DATA or os.environ.get("ALFWORLD_DATA")
    if not root or not _has_games(os.path.expanduser(root)):
      raise FileNotFoundError(
        f"official ALFWorld data not found (ALFWORLD_DATA={root!r} has no json_2.1.1/): run `alfworld-download` "
        "and set ALFWORLD_DATA to its folder, or use data='generated' for games written locally")
    return os.path.abspath(os.path.expanduser(root))
  root = os.path.abspath(os.path.expanduser(data))
  if not _has_games(root):
    raise FileNotFoundError(f"ALFWorld data path {root!r} has no json_2.1.1/ folder: point it at the folder that "
                            "`alfworld-download` fills (or use data='official' / data='generated')")
  return root


def alfred_config(root: str, *, task_types: tuple[int, ...] = tuple(TASK_TYPES), max_steps: int = 50,
                  expert_type: str = "planner", num_games: int = -1) -> dict[str, Any]:
  """The plain dict config `AlfredTWEnv(config, train_eval)` reads (no yaml needed)."""
  from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
  logic = os.path.join(root, "logic")
  domain = os.path.join(logic, "alfred.pddl")
  grammar = os.path.join(logic, "alfred.twl2")
  data = os.path.join(root, "json_2.1.1")
  return {
    "env": {"type": "AlfredTWEnv", "goal_desc_human_anns_prob": 0, "task_types": list(task_types),
            "domain_randomization": False, "expert_type": expert_type},
    "dataset": {"data_path": os.path.join(data, "train"), "eval_id_data_path": os.path.join(data, "valid_seen"),
                "eval_ood_data_path": os.path.join(data, "valid_unseen"),
                "num_train_games": num_games, "num_eval_games": num_games},
    "logic": {"domain": domain if os.path.exists(domain) else ALFRED_PDDL_PATH,
              "grammar": grammar if os.path.exists(grammar) else ALFRED_TWL2_PATH},
    "general": {"training_method": "dagger"},
    "dagger": {"training": {"max_nb_steps_per_episode": max_steps}},
  }


def list_games(root: str, split: str, task_types: tuple[int, ...] = tuple(TASK_TYPES)) -> list[str]:
  """Solvable game files of `split`, selected by `AlfredTWEnv` itself (task types, solvable flag), sorted."""
  require_alfworld()
  from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv
  split = canonical_split(split)
  config = alfred_config(root, task_types=task_types)
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    tw = AlfredTWEnv(config, train_eval=_TRAIN_EVAL[split])
  return sorted(tw.game_files)


def game_task_type(gamefile: str) -> str:
  """The task type of a game, read from the `traj_data.json` beside it ("unknown" when unreadable)."""
  try:
    with open(os.path.join(os.path.dirname(gamefile), "traj_data.json")) as f:
      return str(json.load(f)["task_type"])
  except (OSError, ValueError, KeyError, TypeError):
    return "unknown"


def game_id(gamefile: str) -> str:
  """A stable id: '<split>/<task dir>/<trial>' (the last three folders of the game file)."""
  parts = os.path.normpath(os.path.dirname(gamefile)).split(os.sep)
  return "/".join(parts[-3:])
