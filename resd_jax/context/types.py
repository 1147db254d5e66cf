"""Data handed to the context engine by the trainer, and the metric accumulator it hands back."""
from __future__ import annotations

import dataclasses

from resd_jax.metrics import Metrics  # noqa: F401 (the accumulator the context engine hands back)
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
