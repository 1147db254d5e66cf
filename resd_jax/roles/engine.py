"""`EngineRole`: a context role played by a model of ours (the policy, or a second frozen model) through the
rollout sampler, with the role's own sampling settings; one fresh key per call.

Metrics (the updater prefixes `context/`): `role/<role>/{calls,response_tokens}` plus `output.record`'s.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

from resd_jax.context.types import Metrics
from resd_jax.models import tokenizer as tk
from resd_jax.roles import output
from resd_jax.sampling import SamplingParams, generate_rollouts


class EngineRole:
  """generate(conversations) -> texts with `model_fn()` (called per call: the policy changes every step)."""

  def __init__(self, role: str, model_fn: Callable[[], Any], tokenizer: Any, params: SamplingParams,
               key_fn: Callable[[], Any], enable_thinking: bool | None, batch_size: int,
               mesh_ctx: Callable[[], Any] = contextlib.nullcontext, engine: Any = None):
    self.role, self.model_fn, self.tokenizer, self.params = role, model_fn, tokenizer, params
    self.engine = engine  # the rollout engine's EngineConfig (None: its defaults)
    self.key_fn, self.enable_thinking, self.batch_size, self.mesh_ctx = key_fn, enable_thinking, batch_size, mesh_ctx
    self._metrics = Metrics()

  def __call__(self, conversations: list[list[dict[str, str]]]) -> list[str]:
    convs = list(conversations)
    if not convs:
      return []
    opened = output.prompt_opens_reasoning(tk.chat_text(self.tokenizer, convs[0],
                                                        enable_thinking=self.enable_thinking))
    with self.mesh_ctx():
      rolls = generate_rollouts(self.model_fn(), self.tokenizer, convs, self.params, self.key_fn(),
                                self.enable_thinking, self.batch_size, self.engine)
    texts, p = [], f"role/{self.role}/"
    for ro in rolls:
      text, status = output.answer_of(output.sanitize(ro.text), ro.truncated, opened)
      output.record(self._metrics, self.role, status)
      self._metrics.add(p + "calls", 1)
      self._metrics.add(p + "response_tokens", len(ro.response_tokens))
      texts.append(text)
    return texts

  def take_metrics(self) -> dict[str, tuple[float, int]]:
    out, self._metrics = dict(self._metrics), Metrics()
    return out
