"""The optimizer from config: AdamW with global-norm clipping and a warm-up + constant/cosine schedule."""
from __future__ import annotations

import dataclasses

import jax
import optax

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW settings (validated at construction). Weight decay applies to parameters with >= 2 dimensions."""
  learning_rate: float = 1e-6
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  clip_norm: float = 1.0        # global-norm clip; 0 disables
  warmup_steps: int = 10        # linear warm-up from 0 over this many steps
  schedule: str = "constant"    # after warm-up: constant | cosine
  total_steps: int = 0          # cosine: decay ends here (warm-up included); required for cosine
  min_lr_ratio: float = 0.0     # cosine: final learning rate / peak

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
    if not self.eps > 0 or self.weight_decay < 0 or self.clip_norm < 0:
      raise ValueError("need eps > 0, weight_decay >= 0 and clip_norm >= 0")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
      raise ValueError(f"cosine schedule needs total_steps > warmup_steps, got {self.total_steps} <= "
                       f"{self.warmup_steps}")
    if not 0 <= self.min_lr_ratio <= 1:
      raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Learning rate of update i (0-based): peak * (i + 1) / W for i < W warm-up steps, then constant or cosine."""
  peak = cfg.learning_rate
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, cfg.total_steps - cfg.warmup_steps, alpha=cfg.min_lr_ratio)
  else:
    after = optax.constant_schedule(peak)
  if cfg.warmup_steps == 0:
    return after
  warm = optax.linear_schedule(peak / cfg.warmup_steps, peak, cfg.warmup_steps - 1) if cfg.warmup_steps > 1 \
      else optax.constant_schedule(peak)
  return optax.join_schedules([warm, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule), weight decay masked to matrices."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)
