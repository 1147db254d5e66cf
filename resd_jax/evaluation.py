"""Validation metrics: n samples per test problem -> mean@n / best@n of per-task and per-test-case accuracy,
and the rank rule that picks a checkpoint from the logged validation steps.

Which `Grade` field is "per-task" and which is "per-test-case" is a per-task attribute (`eval_fields`), because
the paper's columns map to different fields per task (docs/TASKS.md §0):
  * Manufactoria, BouncingSim: per-task = `reward` (all tests pass), per-test-case = `acc` (fraction passed).
  * FiNER: per-task = all four tags right, per-test-case = fraction of tags right. Our FiNER grader already
    puts the tag fraction in `acc`, but its `reward` is the tag fraction under `partial_credit=True`, so the
    per-task column reads `info["all_correct"]`, which is right in both modes.
A task may override the table by defining `eval_fields = (per_task_field, per_test_case_field)`; a field is
"reward", "acc" or "info.<key>".
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from resd_jax.tasks.base import Example, Grade

# The four metrics the rank rule sums over (all "higher is better").
RANK_METRICS = ("per_task/mean@n", "per_task/best@n", "per_test_case/mean@n", "per_test_case/best@n")
BEST_OF = ("exact", "bootstrap")  # best@n: the max over the n samples, or verl's bootstrap (the paper's numbers)

_DEFAULT_FIELDS = ("reward", "acc")
_TASK_FIELDS = {"finer": ("info.all_correct", "acc")}


def eval_fields(task: Any) -> tuple[str, str]:
  """(per-task field, per-test-case field) of `task`: its `eval_fields` attribute, else the table above."""
  fields = getattr(task, "eval_fields", None)
  if fields is None:
    fields = _TASK_FIELDS.get(getattr(task, "name", ""), _DEFAULT_FIELDS)
  if len(fields) != 2:
    raise ValueError(f"eval_fields must be (per_task_field, per_test_case_field), got {fields!r}")
  return tuple(fields)  # type: ignore[return-value]


def grade_value(grade: Grade, field: str) -> float:
  """The number `field` names in `grade` ("reward", "acc" or "info.<key>"); a missing info key reads 0."""
  if field == "reward":
    return float(grade.reward)
  if field == "acc":
    return float(grade.acc)
  if field.startswith("info."):
    value = grade.info.get(field[len("info."):], 0.0)
    try:
      return float(value)
    except (TypeError, ValueError):
      return 0.0
  raise ValueError(f"unknown grade field {field!r}; use 'reward', 'acc' or 'info.<key>'")


def best_at_k_unbiased(values: np.ndarray, k: int) -> np.ndarray:
  """Expected max of k of the n samples drawn WITHOUT replacement, per problem (the pass@k estimator
  generalised to graded values). values: [P, n] -> [P]. With k = n this is the plain max."""
  values = np.asarray(values, dtype=np.float64)
  n = values.shape[-1]
  if not 1 <= k <= n:
    raise ValueError(f"best@k needs 1 <= k <= n samples; got k={k}, n={n}")
  ordered = np.sort(values, axis=-1)  # [P, n] ascending
  # P(the i-th smallest (1-based) is the max of a k-subset) = C(i-1, k-1) / C(n, k).
  weights = np.array([math.comb(i - 1, k - 1) for i in range(1, n + 1)], dtype=np.float64) / math.comb(n, k)
  return ordered @ weights


def best_at_k_bootstrap(values: np.ndarray, k: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
  """Bootstrap estimate of best@k: mean over `num_resamples` draws of k samples WITH replacement of the max.
  values: [P, n] -> [P]. k may exceed n (that is what the bootstrap is for)."""
  values = np.asarray(values, dtype=np.float64)
  if k < 1:
    raise ValueError(f"best@k needs k >= 1, got {k}")
  rng = np.random.default_rng(seed)
  p, n = values.shape
  idx = rng.integers(0, n, size=(num_resamples, p, k))  # [S, P, k]
  draws = np.take_along_axis(values[None, :, :].repeat(num_resamples, 0), idx, axis=-1)
  return draws.max(-1).mean(0)


def summarize(per_task: np.ndarray, per_test_case: np.ndarray, *, ks: Sequence[int] = (),
              bootstrap: bool = False, num_resamples: int = 1000, seed: int = 0,
              best_of: str = "exact") -> dict[str, float]:
  """The validation metrics of [P, n] score arrays: mean@n, best@n for both columns, plus best@k for each k in
  `ks` (unbiased estimator, or bootstrap if `bootstrap`).

  best@n: with `best_of="exact"` the max over the n samples, averaged over problems; with "bootstrap" the
  estimate the paper reports (verl's validation metric): the mean over `num_resamples` draws of n samples
  WITH replacement of their max (below the exact max whenever a problem's samples differ)."""
  if best_of not in BEST_OF:
    raise ValueError(f"best_of must be one of {BEST_OF}, got {best_of!r}")
  out: dict[str, float] = {}
  for name, values in (("per_task", per_task), ("per_test_case", per_test_case)):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 1:
      raise ValueError(f"{name} scores must be [problems, samples] with >= 1 sample, got shape {values.shape}")
    out[f"{name}/mean@n"] = float(values.mean()) if values.size else 0.0
    if best_of == "bootstrap" and values.size:
      out[f"{name}/best@n"] = float(best_at_k_bootstrap(values, values.shape[1], num_resamples, seed).mean())
    else:
      out[f"{name}/best@n"] = float(values.max(-1).mean()) if values.size else 0.0
    for k in ks:
      est = (best_at_k_bootstrap(values, k, num_resamples, seed) if bootstrap else best_at_k_unbiased(values, k))
      out[f"{name}/best@{k}"] = float(est.mean()) if values.size else 0.0
  out["num_problems"] = float(np.asarray(per_task).shape[0])
  out["num_samples"] = float(np.asarray(per_task).shape[1])
  return out


# generate(examples, n) -> for each example, n (response_text, truncated) pairs.
GenerateN = Callable[[Sequence[Example], int], Sequence[Sequence[tuple[str, bool]]]]


@dataclasses.dataclass
class EvalResult:
  """Scores of one evaluation: [P, n] per column, the summary, and (sum, count) of grade info flags."""
  per_task: np.ndarray
  per_test_case: np.ndarray
  metrics: dict[str, float]
  info_sums: dict[str, tuple[float, int]]


def evaluate(task: Any, examples: Sequence[Example], generate: GenerateN, n: int, *, ks: Sequence[int] = (),
             bootstrap: bool = False, seed: int = 0, best_of: str = "exact") -> EvalResult:
  """Sample n responses per example with `generate`, grade each and summarise (see `summarize`)."""
  if n < 1:
    raise ValueError(f"eval.num_samples must be >= 1, got {n}")
  task_field, case_field = eval_fields(task)
  outputs = generate(examples, n) if examples else []
  if len(outputs) != len(examples):
    raise ValueError(f"generate returned {len(outputs)} groups for {len(examples)} examples")
  per_task = np.zeros((len(examples), n))
  per_case = np.zeros((len(examples), n))
  info: dict[str, tuple[float, int]] = {}
  for p, (ex, group) in enumerate(zip(examples, outputs)):
    if len(group) != n:
      raise ValueError(f"generate returned {len(group)} samples for example {ex.id!r}, expected {n}")
    for j, (text, truncated) in enumerate(group):
      grade = task.grade(ex, text, truncated=bool(truncated))
      per_task[p, j] = grade_value(grade, task_field)
      per_case[p, j] = grade_value(grade, case_field)
      for key, value in grade.info.items():
        if isinstance(value, (bool, int, float)):
          s, c = info.get(key, (0.0, 0))
          info[key] = (s + float(value), c + 1)
  metrics = summarize(per_task, per_case, ks=ks, bootstrap=bootstrap, seed=seed, best_of=best_of) if examples else {}
  return EvalResult(per_task, per_case, metrics, info)


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """Rank 1 = largest value; ties share the average of their ranks. values: [S] -> [S]."""
  order = np.argsort(-values, kind="stable")
  ranks = np.empty(len(values), dtype=np.float64)
  i = 0
  while i < len(values):
    j = i
    while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return ranks


def rank_rule(history: Mapping[int, Mapping[str, float]],
              metric_names: Sequence[str] = RANK_METRICS) -> tuple[int, dict[int, float]]:
  """Pick the checkpoint step with the smallest sum of ranks over `metric_names` across the logged steps.

  history: {step: {metric: value}}. Each metric is ranked across steps (1 = best, ties averaged); the step with
  the lowest rank sum wins, ties going to the EARLIER step. Returns (best step, {step: rank sum}).
  """
  if not history:
    raise ValueError("rank_rule needs at least one logged validation step")
  steps = sorted(history)
  totals = np.zeros(len(steps))
  for name in metric_names:
    missing = [s for s in steps if name not in history[s]]
    if missing:
      raise ValueError(f"validation metric {name!r} is missing at steps {missing[:5]}")
    totals += _average_ranks(np.array([float(history[s][name]) for s in steps]))
  sums = {s: float(t) for s, t in zip(steps, totals)}
  best = min(steps, key=lambda s: (sums[s], s))
  return best, sums


RANK_BEST_KEY = "rank_rule/best_at_save"


def kept_best_metric(cfg: Any) -> str | None:
  """The metric the checkpointer keeps its best step by: `checkpoint.best_metric` under best_rule="metric",
  `RANK_BEST_KEY` (see `rank_best_marker`) under best_rule="rank", None when neither is set."""
  if str(cfg.checkpoint.best_rule) == "rank":
    return RANK_BEST_KEY
  return cfg.checkpoint.best_metric or None


def rank_best_marker(history: Mapping[str, Mapping[str, float]], step: int) -> dict[str, float] | None:
  """Checkpoint metrics for best_rule="rank": {RANK_BEST_KEY: step} when `step` is the rank-rule best of the
  validation history at save time, else None (kept only as one of the latest). The kept best checkpoint is
  then the latest step that was rank-best when it was saved; if a later validation moves the rank rule back
  to a step whose checkpoint is gone, `RunSummary.best_step_by_rank` and the logged
  `val/rank_rule_best_step` still name it."""
  if not history:
    return None
  best, _ = rank_rule({int(s): v for s, v in history.items()})
  return {RANK_BEST_KEY: float(step)} if best == step else None
