"""Data handed to the context engine by the trainer, and the metric accumulator it hands back."""
from __future__ import annotations

import dataclasses

from resd_jax.tasks.base import Example, Grade


@dataclasses.dataclass(frozen=True)
class GradedSample:
  """One rollout after grading. `response_text` is the raw decoded response (reasoning included)."""
  example: Example
  response_text: str
  response_tokens: list[int]
  rollout_logprobs: list[float] | None
  grade: Grade
  truncated: bool = False


class Metrics(dict):
  """Metrics as name -> (sum, count); `add` accumulates, `mean` divides (0 when the count is 0)."""

  def add(self, name: str, value: float, count: int = 1) -> None:
    s, c = self.get(name, (0.0, 0))
    self[name] = (s + float(value), c + int(count))

  def merge(self, other: dict[str, tuple[float, int]], prefix: str = "") -> None:
    for k, (s, c) in other.items():
      self.add(prefix + k, s, c)

  def mean(self, name: str) -> float:
    s, c = self.get(name, (0.0, 0))
    return s / c if c else 0.0
