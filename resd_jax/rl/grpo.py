"""GRPO: group-normalised advantages and the clipped policy-gradient surrogate.

For a group of G responses to one prompt with rewards r_1..r_G:
  A_i = (r_i - mean(r)) / (std(r) + eps), or r_i - mean(r) with std off. std: the population std (ddof = 0,
  ours) or the sample std (ddof = 1, the reference's torch.std; a group of one then gets mean 0, std 1, as
  there).
Per response token with ratio rho = exp(logp - old_logp):
  l = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))          (asymmetric PPO clip, 0.2 / 0.28)
  l = min(l, -A dual_clip)  where A < 0                                   (dual clip, c = 3.0)
  plus, when kl_coef > 0, kl_coef * k3(ref || policy) with
  k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1                        (non-negative, unbiased for KL)
Aggregation is a (sum, count) pair: ``token_mean`` sums over every response token of the batch and divides by
their number; ``seq_mean`` averages tokens within each sequence, then sequences.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """Settings of the GRPO loss (validated at construction)."""
  group_size: int = 8
  normalize_std: bool = True
  std_ddof: int = 0                  # 0: population std (ours); 1: sample std (the reference, torch.std)
  std_eps: float = 1e-6
  clip_low: float = 0.2
  clip_high: float = 0.28
  dual_clip: Optional[float] = 3.0   # None disables
  kl_coef: float = 0.0               # KL to a reference policy; 0 = off
  aggregation: str = "token_mean"    # token_mean | seq_mean
  temperature: float = 1.0           # log-probs are computed from logits / temperature
  chunk_size: int = 128

  def __post_init__(self):
    if self.group_size < 1:
      raise ValueError(f"group_size must be >= 1, got {self.group_size}")
    if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
      raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
    if self.dual_clip is not None and not self.dual_clip > 1.0:
      raise ValueError(f"dual_clip must be > 1 (or None to disable), got {self.dual_clip}")
    if self.kl_coef < 0:
      raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
    if self.std_ddof not in (0, 1):
      raise ValueError(f"std_ddof must be 0 (population std) or 1 (sample std), got {self.std_ddof}")
    if self.aggregation not in ("token_mean", "seq_mean"):
      raise ValueError(f"aggregation must be token_mean or seq_mean, got {self.aggregation!r}")
    if not self.temperature > 0 or self.chunk_size < 1 or self.std_eps < 0:
      raise ValueError("temperature must be > 0, chunk_size >= 1 and std_eps >= 0")


def group_advantages(rewards: Array, group_size: int, normalize_std: bool = True, eps: float = 1e-6,
                     ddof: int = 0) -> Array:
  """Advantages [B] for rewards [B] laid out as consecutive groups of `group_size` (std with `ddof`)."""
  b = rewards.shape[0]
  if b % group_size:
    raise ValueError(f"batch size {b} is not a multiple of group_size {group_size}")
  r = rewards.astype(jnp.float32).reshape(b // group_size, group_size)
  if ddof and group_size == 1:  # the reference: a lone sample has mean 0 and std 1
    return r.reshape(b) / (1.0 + eps) if normalize_std else r.reshape(b)
  centred = r - jnp.mean(r, axis=1, keepdims=True)
  if normalize_std:
    centred = centred / (jnp.std(r, axis=1, keepdims=True, ddof=ddof) + eps)
  return centred.reshape(b)


def host_group_advantages(rewards: list[float], group_size: int, normalize_std: bool, ddof: int,
                          metrics: Any = None) -> Any:
  """`group_advantages` of host rewards as a float32 NumPy array [B]; counts the groups whose rewards differ
  (the only ones with a gradient) as `grpo/groups_with_signal` in `metrics` (a `Metrics`)."""
  import numpy as np  # noqa: PLC0415
  r = jnp.asarray(rewards, jnp.float32)
  adv = np.asarray(group_advantages(r, group_size, normalize_std, ddof=ddof), np.float32)
  if metrics is not None:
    groups = np.asarray(r).reshape(-1, group_size)
    metrics.add("grpo/groups_with_signal", float(np.sum(groups.std(axis=1) > 0)), groups.shape[0])
  return adv


def token_surrogate(logp: Array, old_logp: Array, advantages: Array, cfg: GRPOConfig,
                    ref_logp: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
  """Per-token loss [B, R] and per-token diagnostics (clip indicators, ratio).

  logp: current policy log-probs [B, R] (with gradient); old_logp: behaviour policy log-probs [B, R];
  advantages: [B].
  """
  adv = advantages.astype(jnp.float32)[:, None]
  ratio = jnp.exp(logp - jax.lax.stop_gradient(old_logp))
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
  loss = jnp.maximum(unclipped, clipped)
  info = {"clipped": (clipped > unclipped).astype(jnp.float32), "ratio": jax.lax.stop_gradient(ratio)}
  if cfg.dual_clip is not None:
    cap = -adv * cfg.dual_clip
    dual = (adv < 0) & (loss > cap)
    loss = jnp.where(dual, cap, loss)
    info["dual_clipped"] = dual.astype(jnp.float32)
  if cfg.kl_coef > 0:
    if ref_logp is None:
      raise ValueError("kl_coef > 0 needs reference log-probs")
    d = jax.lax.stop_gradient(ref_logp) - logp
    k3 = jnp.exp(d) - d - 1.0
    loss = loss + cfg.kl_coef * k3
    info["kl_ref"] = jax.lax.stop_gradient(k3)
  return loss, info


def aggregate(values: Array, mask: Array, aggregation: str) -> tuple[Array, Array]:
  """(sum, count) of per-token values [B, R] under mask [B, R]; the mean is sum / max(count, 1)."""
  mask = mask.astype(jnp.float32)
  contrib = jnp.where(mask > 0, values * mask, 0.0)
  if aggregation == "token_mean":
    return jnp.sum(contrib), jnp.sum(mask)
  n_tok = jnp.sum(mask, axis=-1)
  return jnp.sum(jnp.sum(contrib, -1) / jnp.maximum(n_tok, 1.0)), jnp.sum((n_tok > 0).astype(jnp.float32))
