"""Multi-turn interaction (a task with `multi_turn = True`, e.g. ALFWorld): episodes instead of single responses.

One inner update:

  play B x N episodes (G for GRPO; `rollout.multi_turn.run_episodes`, one sampler call per turn)
  -> one `GradedSample` per episode: prompt = [system, first user message], attempt = the episode's commands and
     answers, feedback = outcome + last exchanges (`prompts.episode_feedback`), reward = won
  -> (the algorithm's) context update over the episodes: reflection on the whole episode, success tags,
     curation; the solution buffer keeps the latest winning episode per game
  -> one distillation row per (episode, turn): student prompt = the exact tokens the student saw at that turn,
     teacher prompt = the same windowed history with the first user message enriched by the teacher context
     (playbook, reflection, the episode as previous attempt, feedback, winning episode), response = that turn's
     assistant tokens. Environment text only ever sits in prompts, so it is never in the response mask. GRPO:
     every turn row carries its episode's group advantage.

Rows per step = episodes x env.max_steps (the task's `turns_per_sample`); unused rows are padding.
Validation: `eval.num_samples` episodes per game on valid_seen and valid_unseen; success overall and per task
type (`val/<split>/success[/<task type>]`), and the rank-rule keys (`per_task/mean@n` = success rate,
`per_task/best@n` = games won at least once; the per_test_case keys repeat them: an episode has no test cases).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import numpy as np

from resd_jax.context import GradedSample, Metrics
from resd_jax.context.playbook import Playbook
from resd_jax.context.teacher_context import TeacherContextConfig, build_teacher_context, solution_for
from resd_jax.context.updater import UpdateResult
from resd_jax.loop.single_turn import Generate, success_weights
from resd_jax.models.tokenizer import chat_tokens, pad_token_id
from resd_jax.rl.grpo import host_group_advantages
from resd_jax.rollout.multi_turn import Episode, MultiTurnConfig, RolloutTimes, episode_metrics, run_episodes
from resd_jax.sampling import SamplingParams
from resd_jax.tasks.base import Example, Grade
from resd_jax.train.batch import Batch, BatchShape, GRPOBatch, assemble_batch

EVAL_SPLITS = ("valid_seen", "valid_unseen")


# ----- episodes -> context engine -------------------------------------------------------------------------------
def episode_sample(ep: Episode, max_steps: int) -> GradedSample:
  """An episode as the context engine sees one sample: the task prompt is the head, the attempt the episode."""
  example = Example(ep.game_id, tuple(dict(m) for m in ep.head), {"gamefile": ep.gamefile, "task_type": ep.task_type})
  grade = Grade(ep.reward, ep.reward, ep.feedback(max_steps),
                {"steps": ep.steps, "truncated": int(ep.truncated), "context_overflow": int(ep.context_overflow)})
  return GradedSample(example, ep.summary(), [], None, grade, ep.truncated)


def _played(episodes: Sequence[Episode]) -> list[Episode]:
  """Episodes with at least one assistant turn (a game that crashed at reset has nothing to learn from)."""
  return [ep for ep in episodes if ep.turns]


# ----- distillation rows ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TurnRow:
  """One distillation row: which episode / turn it is, and the token sequences the batch holds."""
  episode: int
  turn: int
  student_prompt: list[int]
  teacher_prompt: list[int]
  response: list[int]
  sd_mask: int


def teacher_turn_rows(episodes: Sequence[Episode], samples: Sequence[GradedSample], result: UpdateResult,
                      playbook: Playbook, cfg: TeacherContextConfig, tokenizer: Any, max_teacher_prompt_len: int,
                      enable_thinking: bool | None = None, metrics: Metrics | None = None) -> list[TurnRow]:
  """Rows for every turn of every episode (`samples[i]` is `episode_sample(episodes[i])`).

  The teacher context of an episode is built once by the context engine on the head (its last user message,
  the first user message of the episode, gets the enrichment); the playbook is shrunk so that the longest turn
  of the episode still fits `max_teacher_prompt_len`. Each turn's teacher prompt = enriched head + that turn's
  windowed history, identical to the student's."""
  metrics = metrics if metrics is not None else Metrics()
  cfg = dataclasses.replace(cfg, max_prompt_tokens=min(cfg.max_prompt_tokens, max_teacher_prompt_len))
  tok = lambda msgs: chat_tokens(tokenizer, msgs, enable_thinking=enable_thinking)
  rows: list[TurnRow] = []
  for i, (ep, sample) in enumerate(zip(episodes, samples)):
    if not ep.turns:
      continue
    n_head = len(ep.head)
    longest = max(ep.turns, key=lambda t: len(t.prompt_tokens)).messages[n_head:]
    count = lambda msgs, rest=longest: len(tok(list(msgs) + rest))
    ctx = build_teacher_context(sample, playbook, result.reflections[i],
                                solution_for(samples, i, result.solutions_before[i], cfg), cfg, count, metrics)
    for j, turn in enumerate(ep.turns):
      teacher = tok(ctx.messages + turn.messages[n_head:]) if ctx.sd_mask else list(turn.prompt_tokens)
      rows.append(TurnRow(i, j, list(turn.prompt_tokens), teacher, list(turn.response_tokens), ctx.sd_mask))
  return rows


def rows_batch(rows: Sequence[TurnRow], episodes: Sequence[Episode], shape: BatchShape, pad_id: int,
               episode_weights: Sequence[float] | None = None, metrics: Metrics | None = None) -> Batch:
  """The fixed-shape `Batch` of the rows (rollout log-probs from the episodes' turns)."""
  if len(rows) > shape.batch_size:
    raise ValueError(f"{len(rows)} turn rows do not fit batch_size={shape.batch_size}; rows per step must be "
                     "episodes x env.max_steps")
  w = [1.0 if episode_weights is None else float(episode_weights[r.episode]) for r in rows]
  return assemble_batch([r.student_prompt for r in rows], [r.teacher_prompt for r in rows],
                        [r.response for r in rows], [episodes[r.episode].turns[r.turn].logprobs for r in rows],
                        w, [r.sd_mask for r in rows], shape, pad_id=pad_id, metrics=metrics)


def grpo_turn_batch(episodes: Sequence[Episode], group_size: int, normalize_std: bool, shape: BatchShape,
                    pad_id: int, metrics: Metrics, ddof: int = 0) -> GRPOBatch:
  """Episodes in consecutive groups of G (same game): every assistant token of an episode gets the episode's
  group-normalised advantage. Padding rows have advantage 0 and weight 0."""
  adv = host_group_advantages([ep.reward for ep in episodes], group_size, normalize_std, ddof, metrics)
  rows = [TurnRow(i, j, list(t.prompt_tokens), list(t.prompt_tokens), list(t.response_tokens), 0)
          for i, ep in enumerate(episodes) for j, t in enumerate(ep.turns)]
  b = rows_batch(rows, episodes, shape, pad_id, metrics=metrics)
  return GRPOBatch.from_batch(b, [adv[r.episode] for r in rows])


# ----- the interaction ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Episodes:
  """One inner update's episodes (prompt-major: a game's episodes are consecutive)."""
  episodes: list[Episode]
  max_steps: int
  n_tokens: int
  throughput: dict[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.played = _played(self.episodes)
    self.samples = [episode_sample(ep, self.max_steps) for ep in self.played]  # what the context engine sees

  def distill_batch(self, result: UpdateResult, kit: Any) -> Batch:
    shape = kit.shape
    rows = teacher_turn_rows(self.played, self.samples, result, kit.playbook, kit.teacher_context, kit.tokenizer,
                             shape.max_teacher_prompt_len, kit.run.model.enable_thinking, kit.metrics)
    weights = success_weights(kit.run, [float(ep.won) for ep in self.played])
    batch = rows_batch(rows, self.played, shape, pad_token_id(kit.tokenizer), weights, kit.metrics)
    kit.metrics.add("batch/turn_rows", len(rows), shape.batch_size)
    return batch

  def grpo_batch(self, kit: Any) -> GRPOBatch:
    g = kit.run.grpo_config()
    return grpo_turn_batch(self.episodes, g.group_size, g.normalize_std, kit.shape, pad_token_id(kit.tokenizer),
                           kit.metrics, ddof=g.std_ddof)


class MultiTurn:
  """Episodes in the task's environments; one sampler call per turn."""

  def __init__(self, run: Any, task: Any, data: Any, tokenizer: Any, generate: Generate):
    self.run, self.task, self.tokenizer, self.generate = run, task, tokenizer, generate
    self.max_steps = run.env.max_steps
    self.envs = task.make_envs()
    self.mt = MultiTurnConfig(max_prompt_len=run.rollout.max_prompt_len, history_turns=run.env.history_turns,
                              show_admissible=run.env.show_admissible, enable_thinking=run.model.enable_thinking)
    limit = run.data.test_limit
    self.eval_sets = {s: list(task.prompts(s))[:limit or None] for s in EVAL_SPLITS}

  def play(self, examples: Sequence[Example], per_prompt: int, params: SamplingParams, key: jax.Array,
           times: RolloutTimes | None = None) -> list[Episode]:
    gamefiles = [ex.meta["gamefile"] for ex in examples for _ in range(per_prompt)]
    sample = lambda convs, turn: self.generate(convs, params, jax.random.fold_in(key, turn))
    return run_episodes(self.envs, gamefiles, sample, self.tokenizer, self.mt, times)

  def collect(self, examples: Sequence[Any], per_prompt: int, params: SamplingParams, key: jax.Array,
              m: Metrics, times: dict[str, float]) -> Episodes:
    rt = RolloutTimes()
    t0 = time.perf_counter()
    episodes = self.play(examples, per_prompt, params, key, rt)
    times["rollout"] = time.perf_counter() - t0
    times.update({"rollout_sampling": rt.sample_s, "rollout_env": rt.env_s})
    m.merge(episode_metrics(episodes))
    n_tokens = sum(len(t.response_tokens) for ep in episodes for t in ep.turns)
    return Episodes(episodes, self.max_steps, n_tokens,
                    {"throughput/env_steps_per_s": rt.env_steps / max(times["rollout"], 1e-9)})

  def validate(self, key: jax.Array) -> tuple[dict[str, float], dict[str, Any]]:
    if not any(self.eval_sets.values()):
      return {}, {}
    n = self.run.eval.num_samples
    params = self.run.eval_sampling()
    res: dict[str, float] = {}
    won_all, games_won = [], []
    for k, (split, examples) in enumerate(self.eval_sets.items()):
      if not examples:
        continue
      episodes = self.play(examples, n, params, jax.random.fold_in(key, k))
      for name, (s, c) in episode_metrics(episodes, prefix=f"{split}/").items():
        if name.startswith(f"{split}/success") or name == f"{split}/episode_steps":
          res[name] = s / c if c else 0.0
      won = np.asarray([ep.won for ep in episodes], np.float32).reshape(len(examples), n)
      won_all.append(won.reshape(-1))
      games_won.append(won.max(axis=1))
    mean, best = float(np.concatenate(won_all).mean()), float(np.concatenate(games_won).mean())
    res.update({"per_task/mean@n": mean, "per_task/best@n": best, "per_test_case/mean@n": mean,
                "per_test_case/best@n": best})
    return res, {}

  def close(self) -> None:
    self.envs.close()
