"""Teacher weights for self-distillation: frozen, ema, current, trust_region.

- ``frozen``: the initial weights, kept as a copy and never changed.
- ``ema``: a copy updated after every finite optimizer step: theta_T <- (1 - r) theta_T + r theta.
- ``current``: the student's own weights under stop_gradient (no copy is kept).
- ``trust_region``: teacher logits = (1 - r) logits(initial weights) + r logits(current weights), i.e. two
  teacher forwards on the teacher context; a copy of the initial weights is kept.

With LoRA adapters (models/lora.py) the kept weights are the adapter leaves only, and a part's weights are
the student's frozen base with those adapters: ``frozen`` is the base with its initial adapters (a fresh
adapter has B = 0, so that is the base model itself), ``ema`` averages the adapters, ``trust_region`` keeps the
initial ones; no second copy of the base weights is held.

The step sees a teacher as a list of (weights, logit coefficient) pairs from ``teacher_parts``; the teacher
logits are the coefficient-weighted sum of the logits of each part.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from resd_jax.models import lora

KINDS = ("frozen", "ema", "current", "trust_region")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """Which teacher and its rate r (EMA rate or trust-region interpolation)."""
  kind: str = "ema"
  rate: float = 1e-4

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"teacher kind must be one of {KINDS}, got {self.kind!r}")
    if self.kind in ("ema", "trust_region") and not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"teacher rate must be in [0, 1] for kind={self.kind!r}, got {self.rate}")

  @property
  def keeps_copy(self) -> bool:
    """Whether the train state holds separate teacher weights."""
    return self.kind != "current"


def init_teacher(params: Any, cfg: TeacherConfig) -> Optional[Any]:
  """The teacher weights to keep in the train state (a copy of params, the trainable part of the model's
  weights: the adapters of a LoRA model), or None for ``current``."""
  if not cfg.keeps_copy:
    return None
  return jax.tree.map(jnp.copy, params)


def update_teacher(teacher: Optional[Any], params: Any, cfg: TeacherConfig) -> Optional[Any]:
  """Teacher weights after one finite optimizer step (only ``ema`` changes them); params: the trainable part."""
  if cfg.kind != "ema":
    return teacher
  r = cfg.rate
  return jax.tree.map(lambda t, p: ((1.0 - r) * t + r * p.astype(t.dtype)).astype(t.dtype), teacher, params)


def teacher_parts(teacher: Optional[Any], params: Any, cfg: TeacherConfig) -> list[tuple[Any, float]]:
  """(weights, logit coefficient) pairs whose weighted logits form the teacher (all under stop_gradient)."""
  current = jax.lax.stop_gradient(params)
  if cfg.kind == "current":
    return [(current, 1.0)]
  if teacher is None:
    raise ValueError(f"teacher kind {cfg.kind!r} needs teacher weights in the train state")
  kept = jax.lax.stop_gradient(lora.with_trainable(params, teacher))   # a LoRA model: base + kept adapters
  if cfg.kind == "trust_region":
    return [(kept, 1.0 - cfg.rate), (current, cfg.rate)]
  return [(kept, 1.0)]
