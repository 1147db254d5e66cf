"""Batched multi-turn episodes: many environments stepped together, one sampler call per turn.

    episodes = run_episodes(envs, gamefiles, sample, tokenizer, MultiTurnConfig(max_prompt_len=4096))

Every turn, the live episodes' conversations go to `sample` in one call; each reply is sent to its environment,
whose answer becomes the next user message. A conversation is

    [system, first user (room + task + commands)] + [assistant_1, user_1, ..., assistant_j, user_j]

cut to a *history window*: the head (system + first user message) always stays; of the past exchanges
(assistant reply, environment answer; only the latest answer lists the admissible commands) only the last
`history_turns` are kept, fewer when they do not fit in
`max_prompt_len` tokens (oldest first out). An episode whose head plus latest exchange no longer fits ends
(counted as `context_overflow`).

Per turn we record what distillation needs: the exact prompt tokens the sampler saw (chat template with the
generation prompt), the windowed messages that produced them (the teacher rebuilds its prompt from the same
history), the sampled response tokens, their rollout log-probs and the finish reason. Only response tokens are
ever trained on; environment text lives in the prompts, so it is masked by construction.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

from resd_jax.models.tokenizer import chat_tokens
from resd_jax.tasks.alfworld.prompts import SYSTEM, episode_feedback, first_user_message, turn_user_message

Messages = list[dict[str, str]]
# sample(conversations, turn) -> one rollout (resd_jax.sampling.Rollout-like) per conversation, same order.
SampleFn = Callable[[list[Messages], int], Sequence[Any]]

MAX_SUMMARY_CHARS = 6000


@dataclasses.dataclass(frozen=True)
class MultiTurnConfig:
  """max_prompt_len: token budget of every student prompt (the batch's Ps).
  history_turns: past exchanges kept in the window (0 = as many as fit).
  show_admissible: list the admissible commands in every user message.
  """
  max_prompt_len: int = 4096
  history_turns: int = 0
  show_admissible: bool = True
  enable_thinking: bool | None = None

  def __post_init__(self):
    if self.max_prompt_len < 16:
      raise ValueError(f"max_prompt_len must be >= 16 tokens, got {self.max_prompt_len}")
    if self.history_turns < 0:
      raise ValueError(f"history_turns must be >= 0 (0 = all that fit), got {self.history_turns}")


@dataclasses.dataclass
class Turn:
  """One assistant turn of an episode."""
  messages: Messages             # the student's windowed conversation (no assistant reply of this turn)
  prompt_tokens: list[int]       # exactly what the sampler saw: chat template + generation prompt
  response_tokens: list[int]     # sampled tokens (with the stop token when there is one)
  logprobs: list[float]          # rollout log-probs of response_tokens
  finish_reason: str             # 'stop' | 'length'
  text: str                      # decoded reply
  command: str = ""              # what the environment received
  answer: str = ""               # the environment's answer
  exchanges_dropped: int = 0     # past exchanges left out of the window


@dataclasses.dataclass
class Episode:
  """One played game. `head` = [system, first user message]; `turns` in order."""
  slot: int
  game_id: str
  gamefile: str
  task_type: str
  task: str
  head: Messages
  turns: list[Turn] = dataclasses.field(default_factory=list)
  won: bool = False
  steps: int = 0
  truncated: bool = False
  crashed: bool = False
  context_overflow: bool = False
  invalid_actions: int = 0
  format_failures: int = 0

  @property
  def reward(self) -> float:
    return 1.0 if self.won else 0.0

  def transcript(self) -> list[tuple[str, str]]:
    """(command sent, environment answer) per step."""
    return [(t.command, t.answer) for t in self.turns]

  def summary(self, cap: int = MAX_SUMMARY_CHARS) -> str:
    """The episode as the reflector and teacher read it: the commands in order with short answers."""
    lines = [f"{i + 1}. > {c[:120]}\n   {a.strip()[:200]}" for i, (c, a) in enumerate(self.transcript())]
    text = "\n".join(lines) or "(no command was sent)"
    return text if len(text) <= cap else "...\n" + text[-cap:]

  def feedback(self, max_steps: int) -> str:
    """The episode's feedback text (outcome + last exchanges), see `prompts.episode_feedback`."""
    fb = episode_feedback(self.task or "(unknown)", self.transcript(), self.won, self.steps, max_steps)
    if self.context_overflow:
      fb += "\nThe episode was stopped because the conversation no longer fit in the context window."
    return fb


def window(head: Messages, exchanges: Sequence[tuple[str, str]], history_turns: int, max_prompt_len: int,
           count: Callable[[Messages], int]) -> tuple[Messages, int] | None:
  """The head plus the longest suffix of `exchanges` (at most `history_turns`, 0 = no cap) whose templated
  length fits `max_prompt_len`; at least the latest exchange when there is one. Returns (messages, number of
  exchanges dropped) or None when nothing fits."""
  n = len(exchanges)
  keep = n if history_turns == 0 else min(n, history_turns)
  least = 1 if n else 0
  while keep >= least:
    msgs = [dict(m) for m in head]
    for reply, answer in exchanges[n - keep:]:
      msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": answer}]
    if count(msgs) <= max_prompt_len:
      return msgs, n - keep
    keep -= 1
  return None


def _render(exchanges: Sequence[tuple[str, str, list[str]]], show_admissible: bool) -> list[tuple[str, str]]:
  """(reply, user message) pairs; only the latest answer lists the admissible commands (older lists are stale
  and would fill the window)."""
  last = len(exchanges) - 1
  return [(reply, turn_user_message(answer, admissible if show_admissible and k == last else None))
          for k, (reply, answer, admissible) in enumerate(exchanges)]


@dataclasses.dataclass
class RolloutTimes:
  """Wall-clock split of `run_episodes` (seconds) and how many sampler calls / engine steps it made."""
  sample_s: float = 0.0
  env_s: float = 0.0
  other_s: float = 0.0
  sampler_calls: int = 0
  env_steps: int = 0


def run_episodes(envs: Any, gamefiles: Sequence[str], sample: SampleFn, tokenizer: Any, cfg: MultiTurnConfig,
                 times: RolloutTimes | None = None) -> list[Episode]:
  """Plays one episode per game file (repeats allowed: G episodes of a game) on `envs` (an `AlfworldEnvs`).

  `sample` is called once per turn with the conversations of all live episodes. Returns the episodes in the
  order of `gamefiles`."""
  times = times if times is not None else RolloutTimes()
  count = lambda msgs: len(chat_tokens(tokenizer, msgs, enable_thinking=cfg.enable_thinking))
  t0 = time.perf_counter()
  states = envs.reset(list(gamefiles))
  times.env_s += time.perf_counter() - t0
  episodes: list[Episode] = []
  exchanges: list[list[tuple[str, str, list[str]]]] = []  # per episode: (reply, answer, admissible after it)
  for s in states:
    head = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": first_user_message(s.observation,
                                                           s.admissible if cfg.show_admissible else None)}]
    episodes.append(Episode(s.index, s.game_id, s.gamefile, s.task_type, s.task, head, crashed=s.crashed))
    exchanges.append([])
  turn = 0
  while True:
    t0 = time.perf_counter()
    live, convs, dropped = [], [], []
    for i in envs.live():
      fit = window(episodes[i].head, _render(exchanges[i], cfg.show_admissible), cfg.history_turns,
                   cfg.max_prompt_len, count)
      if fit is None:  # the latest exchange no longer fits: end the episode here
        episodes[i].context_overflow = True
        envs.states[i].done = True
        continue
      live.append(i)
      convs.append(fit[0])
      dropped.append(fit[1])
    times.other_s += time.perf_counter() - t0
    if not live:
      break
    t0 = time.perf_counter()
    rolls = list(sample(convs, turn))
    times.sample_s += time.perf_counter() - t0
    times.sampler_calls += 1
    if len(rolls) != len(live):
      raise ValueError(f"sample returned {len(rolls)} rollouts for {len(live)} conversations")
    t0 = time.perf_counter()
    states = envs.step({i: r.text for i, r in zip(live, rolls)})
    times.env_s += time.perf_counter() - t0
    times.env_steps += len(live)
    for i, conv, ro, d in zip(live, convs, rolls, dropped):
      s = states[i]
      answer = s.observation
      episodes[i].turns.append(Turn(messages=conv, prompt_tokens=list(ro.prompt_tokens),
                                    response_tokens=list(ro.response_tokens), logprobs=list(ro.logprobs),
                                    finish_reason=str(ro.finish_reason), text=ro.text,
                                    command=s.last_action.command if s.last_action else "", answer=answer,
                                    exchanges_dropped=d))
      exchanges[i].append((ro.text, answer, list(s.admissible)))
    turn += 1
  for ep, s in zip(episodes, envs.states):
    ep.won, ep.steps, ep.truncated, ep.crashed = s.won, s.steps, s.truncated, s.crashed
    ep.invalid_actions, ep.format_failures = s.invalid_actions, s.format_failures
    ep.task = ep.task or s.task
  return episodes


def episode_metrics(episodes: Sequence[Episode], prefix: str = "rollout/") -> dict[str, tuple[float, int]]:
  """(sum, count) pairs: success overall and per task type, steps, turns, truncation, overflow, tokens."""
  out: dict[str, tuple[float, int]] = {}

  def add(name: str, value: float, count: int = 1) -> None:
    s, c = out.get(prefix + name, (0.0, 0))
    out[prefix + name] = (s + float(value), c + int(count))

  for ep in episodes:
    add("success", ep.won)
    add(f"success/{ep.task_type}", ep.won)
    add("episode_steps", ep.steps)
    add("truncated", ep.truncated)
    add("crashed", ep.crashed)
    add("context_overflow", ep.context_overflow)
    add("invalid_action_rate", ep.invalid_actions, max(ep.steps, 0))
    add("format_failure_rate", ep.format_failures, max(ep.steps, 0))
    for t in ep.turns:
      add("response_tokens", len(t.response_tokens))
      add("prompt_tokens", len(t.prompt_tokens))
      add("response_truncated", t.finish_reason == "length")
      add("exchanges_dropped", t.exchanges_dropped)
  return out
