"""Batched ALFWorld episodes over the real text engine, for multi-turn rollouts.

A rollout loop does:

    envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=50))
    states = envs.reset(gamefiles)                  # one game per slot, chosen by the caller
    while envs.live():
      replies = {i: policy(states[i]) for i in envs.live()}
      states = envs.step(replies)                   # model replies (raw text), live slots only
    envs.metrics()                                  # {"success": (sum, count), ...}

Each slot holds its own engine, built like `AlfredTWEnv.init_env` builds one (PddlEnv + AlfredDemangler +
AlfredInfos [+ AlfredExpert]); games are listed by `AlfredTWEnv` itself (`data.list_games`). We do not use the
gym batch of `init_env` because (1) it picks the games from its own shuffled cycle, while RESD needs to know
and choose the game of every slot (solution buffer per game, G episodes per game for GRPO), (2) an exception
in one of its games aborts the whole batch step, and (3) in alfworld 0.4.2 it always builds the hand-coded
expert, whatever `expert_type` says. An exception in one slot here ends that episode only (counted).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from resd_jax.tasks.alfworld.actions import ParsedAction, parse_action
from resd_jax.tasks.alfworld.data import game_id, game_task_type, require_alfworld
from resd_jax.tasks.base import FEEDBACK_CAP

_BANNER = "-= Welcome to TextWorld, ALFRED! =-"


@dataclasses.dataclass(frozen=True)
class AlfworldEnvConfig:
  """max_steps: engine steps per episode (the paper-style budget is 50).
  expert: also compute the planner's plan at every step (`EnvState.expert_plan`); slow, for tests / DAgger.
  max_obs_chars: every observation text is cut to this length.
  engine_pool: how many loaded games to keep for reuse by later resets (each holds a parsed grammar).
  """
  max_steps: int = 50
  expert: bool = False
  max_obs_chars: int = FEEDBACK_CAP
  engine_pool: int = 64  # loaded engines kept across resets (0 disables reuse)

  def __post_init__(self):
    if self.max_steps < 1:
      raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
    if self.max_obs_chars < 100:
      raise ValueError(f"max_obs_chars must be >= 100, got {self.max_obs_chars}")
    if self.engine_pool < 0:
      raise ValueError(f"engine_pool must be >= 0, got {self.engine_pool}")


@dataclasses.dataclass
class EnvState:
  """What a rollout reads about one slot after `reset` / `step`.

  observation: the engine's answer to the last command (the room description after reset).
  admissible: the commands the engine accepts now (for prompts).
  reward: 1.0 on the step the goal is reached, else 0.0.
  """
  index: int
  game_id: str
  gamefile: str
  task_type: str
  task: str  # the goal sentence, e.g. "put a clean mug in cabinet"
  observation: str = ""
  admissible: list[str] = dataclasses.field(default_factory=list)
  reward: float = 0.0
  done: bool = False
  won: bool = False
  truncated: bool = False  # ended by the step limit
  crashed: bool = False
  steps: int = 0
  last_action: ParsedAction | None = None
  invalid_actions: int = 0  # commands outside the admissible list
  format_failures: int = 0  # replies with no usable command
  expert_plan: list[str] = dataclasses.field(default_factory=list)
  error: str = ""


def _make_engine(expert: bool):
  import textworld
  from textworld.envs import PddlEnv
  from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos
  infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
  env = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))
  if expert:
    env = AlfredExpert(env, expert_type="planner")
  return env


def _goal(text: str) -> str:
  marker = "Your task is to:"
  if marker not in text:
    return ""
  return text.rsplit(marker, 1)[1].strip().rstrip(".")


class AlfworldEnvs:
  """B independent ALFWorld episodes stepped together; see the module doc for the loop."""

  def __init__(self, config: AlfworldEnvConfig | None = None):
    require_alfworld()
    self.config = config or AlfworldEnvConfig()
    self.states: list[EnvState] = []
    self._engines: list[Any] = []
    self._idle: dict[str, list[Any]] = {}  # gamefile -> loaded engines free for reuse (load is ~2/3 of reset)
    self._metrics: dict[str, list[float]] = {}

  # -- batch control ---------------------------------------------------------------------------------
  def reset(self, gamefiles: Sequence[str]) -> list[EnvState]:
    """Starts one episode per game file (repeats allowed); returns the initial states."""
    if not gamefiles:
      raise ValueError("reset needs at least one game file")
    self._release()
    self.states, self._engines = [], []
    for i, gamefile in enumerate(gamefiles):
      state = EnvState(index=i, game_id=game_id(gamefile), gamefile=gamefile,
                       task_type=game_task_type(gamefile), task="")
      engine = None
      try:
        free = self._idle.get(gamefile)
        if free:
          engine = free.pop()
        else:
          engine = _make_engine(self.config.expert)
          engine.load(gamefile)
        self._absorb(state, engine.reset(), reset=True)
      except Exception as e:  # a broken game file ends only this slot
        self._crash(state, e)
      self.states.append(state)
      self._engines.append(engine)
    return self.states

  def live(self) -> list[int]:
    """Indices of the slots whose episode is still running."""
    return [s.index for s in self.states if not s.done]

  def step(self, replies: Mapping[int, str] | Sequence[str | None]) -> list[EnvState]:
    """Sends one model reply to each live slot named in `replies` (a {slot: text} map, or a list aligned with
    the slots where None skips a slot). Replies for finished slots are ignored. Returns all states."""
    items = replies.items() if isinstance(replies, Mapping) else enumerate(replies)
    for i, reply in items:
      if reply is None or not 0 <= i < len(self.states) or self.states[i].done:
        continue
      self._step_one(self.states[i], reply)
    return self.states

  def _step_one(self, state: EnvState, reply: str) -> None:
    action = parse_action(reply, state.admissible)
    state.last_action = action
    state.format_failures += not action.well_formed
    state.invalid_actions += not action.admissible
    try:
      game_state, _, _ = self._engines[state.index].step(action.command)
      state.steps += 1
      self._absorb(state, game_state, reset=False)
    except Exception as e:
      state.steps += 1
      self._crash(state, e)
      return
    if not state.done and state.steps >= self.config.max_steps:
      state.done = state.truncated = True
      self._finish(state)

  def _absorb(self, state: EnvState, game_state, *, reset: bool) -> None:
    text = str(game_state.feedback or "")
    if reset:
      text = text.replace(_BANNER, "").strip()
      state.task = _goal(text)
    state.observation = text[: self.config.max_obs_chars]
    state.admissible = [str(c) for c in (game_state.get("admissible_commands") or [])]
    won = bool(game_state.get("won"))
    state.reward = 1.0 if won and not state.won else 0.0
    state.won = won
    if self.config.expert:
      state.expert_plan = [str(c) for c in (game_state.get("extra.expert_plan") or [])]
    if won:
      state.done = True
      self._finish(state)

  def _crash(self, state: EnvState, error: Exception) -> None:
    state.crashed = state.done = True
    state.won, state.reward, state.admissible = False, 0.0, []
    state.error = f"{type(error).__name__}: {error}"[:500]
    state.observation = "The environment failed; the episode is over."
    self._finish(state)

  def _finish(self, state: EnvState) -> None:
    """Adds a finished episode to the metrics (once per episode)."""
    def add(name, value, count=1.0):
      pair = self._metrics.setdefault(name, [0.0, 0.0])
      pair[0] += float(value)
      pair[1] += float(count)
    add("success", state.won)
    add(f"success/{state.task_type}", state.won)
    add("episode_steps", state.steps)
    add("truncated", state.truncated)
    add("crashed", state.crashed)
    add("invalid_action_rate", state.invalid_actions, state.steps)  # per engine step
    add("format_failure_rate", state.format_failures, state.steps)

  def metrics(self) -> dict[str, tuple[float, float]]:
    """(sum, count) pairs over finished episodes since construction / `reset_metrics`."""
    return {k: (v[0], v[1]) for k, v in sorted(self._metrics.items())}

  def reset_metrics(self) -> None:
    self._metrics = {}

  def _release(self) -> None:
    """Keeps the engines of healthy slots loaded for the next `reset`; closes the rest."""
    keep = self.config.engine_pool
    for state, engine in zip(self.states, self._engines):
      if engine is None:
        continue
      pooled = sum(len(v) for v in self._idle.values())
      if not state.crashed and pooled < keep:
        self._idle.setdefault(state.gamefile, []).append(engine)
      else:
        self._close_engine(engine)
    self._engines = []

  @staticmethod
  def _close_engine(engine) -> None:
    try:
      engine.close()
    except Exception:  # closing a broken engine must not mask anything
      pass

  def close(self) -> None:
    """Closes every engine, pooled ones included."""
    for engines in self._idle.values():
      for engine in engines:
        self._close_engine(engine)
    self._idle = {}
    for engine in self._engines:
      if engine is not None:
        self._close_engine(engine)
    self._engines = []


class AlfworldEnv:
  """One ALFWorld game behind the single-env `Env` protocol of `resd_jax.tasks.base`."""

  def __init__(self, gamefile: str, config: AlfworldEnvConfig | None = None):
    self.gamefile = gamefile
    self._envs = AlfworldEnvs(config)

  @property
  def state(self) -> EnvState:
    return self._envs.states[0]

  def reset(self) -> str:
    return self._envs.reset([self.gamefile])[0].observation

  def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
    """Returns (observation, reward, done, info); info["feedback"] is the engine's answer."""
    if not self._envs.states:
      raise RuntimeError("call reset() before step()")
    s = self._envs.step({0: action_text})[0]
    info = {"feedback": s.observation, "won": s.won, "admissible_commands": list(s.admissible),
            "task_type": s.task_type, "steps": s.steps, "truncated": s.truncated, "crashed": s.crashed,
            "command": s.last_action.command if s.last_action else ""}
    return s.observation, s.reward, s.done, info

  def close(self) -> None:
    self._envs.close()
