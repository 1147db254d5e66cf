"""Token-level self-distillation losses, computed over chunks of response positions.

What is computed, per response position t of sample b (student logits s, teacher logits u, both [V]):

1. Temperature: ls = log_softmax(s / T), lt = log_softmax(u / T).
2. Support (``DistillConfig.mode``):
   - ``topk``: the k ids with the largest stop-gradient student logits, plus one *tail* bucket holding the rest
     of the vocabulary. The tail log-probability is computed exactly as a log-sum-exp over the complement
     minus the log-sum-exp over everything (never as log(1 - sum p), which cancels catastrophically when the
     top-k mass is close to 1). Student and teacher use the same ids.
   - ``full``: all V ids, no tail.
   - ``sampled``: only the sampled token y_t (single-sample estimator; alpha must be 1, see below).
3. Teacher clip (on every support entry, the tail included):
   lt <- max(lt, sg(ls) + log eps_min)  and, if eps_max is set,  lt <- min(lt, sg(ls) + log eps_max).
   In ``topk`` and ``full`` modes the clipped teacher is then renormalised over the support (``renormalize``,
   our default), so every divergence below compares two proper distributions on the same outcomes. (After
   renormalisation the floor holds up to the normalising constant, which is >= 1 when only the floor is
   active.) The reference code does not renormalise (``renormalize=False``): the divergences are then taken
   with the clipped, unnormalised teacher as is. In ``sampled`` mode no renormalisation is possible; the
   clipped teacher log-probability is used as is.
4. Divergence by alpha (functions named by direction):
   - alpha = 1: ``kl_student_teacher`` = sum_i p_s,i (ls_i - lt_i)   (reverse KL, mode seeking);
   - alpha = 0: ``kl_teacher_student`` = sum_i p_t,i (lt_i - ls_i)   (forward KL);
   - 0 < alpha < 1: ``jsd_alpha`` = [alpha KL(P_t || M) + (1 - alpha) KL(P_s || M)] / (alpha (1 - alpha)) with
     M = alpha P_t + (1 - alpha) P_s. The 1 / (alpha (1 - alpha)) scaling (``jsd_scale``, our default) makes
     it continuous in alpha: it tends to KL(P_t || P_s) as alpha -> 0 and to KL(P_s || P_t) as alpha -> 1.
     (At alpha = 0.5 it is 4 x the usual Jensen-Shannon divergence.) The reference code does not scale
     (``jsd_scale=False``): alpha KL(P_t || M) + (1 - alpha) KL(P_s || M).
   In ``sampled`` mode the loss is d = ls_y - lt_y with value sg(d) (the one-sample estimate of
   KL(student || teacher) since y ~ student) and gradient sg(d) * grad ls_y (the score-function gradient).
5. Token weights: w = sample_weight[b] * (optionally) min(exp(sg(ls_y) - rollout_logprob), is_clip), mask =
   response_mask * sd_mask[b].
6. Aggregation as a (sum, count) pair so micro-batches combine exactly:
   ``seq_mean``: sum = sum_b [sum_t mask w D / sum_t mask], count = number of samples with a masked-in token
   (``row_mean_over="rows_with_tokens"``, ours) or number of samples with a response, the rows the teacher
   context masked out included (``"all_rows"``, the reference's mean over every row of the batch);
   ``token_mean``: sum = sum_{b,t} mask w D, count = sum_{b,t} mask. The loss is sum / max(count, 1).

Logits for the whole response are never built: ``chunked_token_terms`` scans over position chunks with
``jax.checkpoint``, so the live full-vocabulary arrays are a few of shape [B, chunk, V]. The train step uses
``fused_weighted_loss`` instead, which takes each chunk's gradient in the forward pass so the backward pass
recomputes nothing (same values and gradients, fewer FLOPs).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from resd_jax import backends

Array = jax.Array
LogitsFn = Callable[[Any], Array]

MODES = ("topk", "full", "sampled")
AGGREGATIONS = ("seq_mean", "token_mean")
ROW_MEANS = ("rows_with_tokens", "all_rows")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Settings of the self-distillation loss (validated at construction)."""
  mode: str = "topk"            # topk | full | sampled
  top_k: int = 100              # support size in topk mode; also the k of the overlap metric
  alpha: float = 1.0            # 1 = KL(student||teacher), 0 = KL(teacher||student), else jsd_alpha
  temperature: float = 1.0
  eps_min: float = 0.2          # teacher floor relative to the student; 0 disables
  eps_max: Optional[float] = None  # teacher ceiling relative to the student; None disables
  rollout_is: bool = False      # weight tokens by the clipped importance ratio student / rollout policy
  is_clip: float = 2.0          # upper clip of that ratio
  aggregation: str = "seq_mean"  # seq_mean | token_mean
  jsd_scale: bool = True        # 0 < alpha < 1: divide the alpha-JSD by alpha (1 - alpha) (reference: False)
  renormalize: bool = True      # topk / full: renormalise the clipped teacher over the support (reference: False)
  row_mean_over: str = "rows_with_tokens"  # seq_mean denominator: rows_with_tokens | all_rows (reference)
  chunk_size: int = 128         # response positions per scan step

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"distill mode must be one of {MODES}, got {self.mode!r}")
    if self.mode == "topk" and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1 in topk mode, got {self.top_k} (use mode='full' for all ids)")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
    if self.mode == "sampled" and self.alpha != 1.0:
      raise ValueError("mode='sampled' estimates KL(student||teacher) only: set alpha=1.0")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if not 0.0 <= self.eps_min < 1.0:
      raise ValueError(f"eps_min must be in [0, 1), got {self.eps_min}")
    if self.eps_max is not None and not self.eps_max > 1.0:
      raise ValueError(f"eps_max must be > 1 (or None to disable), got {self.eps_max}")
    if not self.is_clip > 0:
      raise ValueError(f"is_clip must be > 0, got {self.is_clip}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
    if self.row_mean_over not in ROW_MEANS:
      raise ValueError(f"row_mean_over must be one of {ROW_MEANS}, got {self.row_mean_over!r}")
    if self.chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


# ----------------------------------------------------------------------------------------------------------
# Numerically safe building blocks.


def safe_logsumexp(x: Array, axis: int = -1) -> Array:
  """log(sum(exp(x))) over `axis`; -inf (with zero gradient, never NaN) when every entry is -inf."""
  m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  total = jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)
  positive = total > 0
  out = jnp.where(positive, jnp.log(jnp.where(positive, total, 1.0)) + m, -jnp.inf)
  return jnp.squeeze(out, axis=axis)


def _p_log_ratio(logp: Array, logq: Array) -> Array:
  """Elementwise p * (log p - log q), with 0 where p = 0 (and +inf where p > 0 = q)."""
  p = jnp.exp(logp)
  live = p > 0
  diff = jnp.where(live, logp - jnp.where(live, logq, 0.0), 0.0)
  return jnp.where(live, p * diff, 0.0)


def kl_student_teacher(ls: Array, lt: Array) -> Array:
  """KL(P_s || P_t) over the last axis, from normalised log-probabilities (reverse KL)."""
  return jnp.sum(_p_log_ratio(ls, lt), axis=-1)


def kl_teacher_student(ls: Array, lt: Array) -> Array:
  """KL(P_t || P_s) over the last axis, from normalised log-probabilities (forward KL)."""
  return jnp.sum(_p_log_ratio(lt, ls), axis=-1)


def jsd_alpha(ls: Array, lt: Array, alpha: float, scale: bool = True) -> Array:
  """[a KL(P_t||M) + (1-a) KL(P_s||M)] / (a (1-a)), M = a P_t + (1-a) P_s, for 0 < a < 1 (see module doc).

  scale=False: without the 1 / (a (1-a)) factor (the reference code's form)."""
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"jsd_alpha needs 0 < alpha < 1, got {alpha}; use the KL functions at the endpoints")
  log_m = jnp.logaddexp(math.log(alpha) + lt, math.log1p(-alpha) + ls)
  kl_t = jnp.sum(_p_log_ratio(lt, log_m), axis=-1)
  kl_s = jnp.sum(_p_log_ratio(ls, log_m), axis=-1)
  mixed = alpha * kl_t + (1.0 - alpha) * kl_s
  return mixed / (alpha * (1.0 - alpha)) if scale else mixed


def divergence(ls: Array, lt: Array, alpha: float, jsd_scale: bool = True) -> Array:
  """The divergence selected by alpha: 1 -> KL(s||t), 0 -> KL(t||s), otherwise jsd_alpha (scaled or not)."""
  if alpha == 1.0:
    return kl_student_teacher(ls, lt)
  if alpha == 0.0:
    return kl_teacher_student(ls, lt)
  return jsd_alpha(ls, lt, alpha, jsd_scale)


# ----------------------------------------------------------------------------------------------------------
# Support construction and teacher clip.


_TOPK_GROUP = 16  # vocabulary entries per group in ``top_k_ids``'s first stage


def top_k_ids(x: Array, k: int) -> Array:
  """The ids [..., k] that ``jax.lax.top_k(x, k)`` returns (same order and tie-breaking; rows without NaN),
  found in two stages.

  The last axis is cut into groups of 16 entries (padded with -inf); top_k of the [..., V/16] group maxima picks
  k groups, and top_k over those groups' k x 16 entries gives the answer. This is exact: an entry above the
  k-th largest group maximum lies in a picked group, and the picked groups hold at least k entries at or
  above it. Taking tied groups lowest index first and keeping the candidates in index order gives the same
  tie-breaking (lowest index first) as one top_k over the whole row. XLA:CPU's top_k costs about 2 ns per
  entry plus ~13 us per row; this reads each entry once for the group maxima and sorts 1/16 + 16k/V of the
  row (512 rows of V = 32,768: 36 -> 26 ms; of V = 151,936: 106 -> 42 ms). Rows shorter than 32 k entries
  (small test vocabularies) use one top_k. On the CPU outside a multi-device mesh, float32 rows go to our C++
  kernel instead when it builds (an optional backend: resd_jax/kernels/cpu_top_k.py; same ids).
  """
  *lead, v = x.shape
  for optional in backends.of_kind("top_k"):
    if optional.auto(x, k):
      return optional.fn(x, k)  # e.g. one pass per row in C++, same ids (resd_jax/kernels/cpu_top_k.py)
  g = _TOPK_GROUP
  if v < 2 * g * k:
    return jax.lax.top_k(x, k)[1]
  pad = -v % g
  if pad:
    x = jnp.concatenate([x, jnp.full((*lead, pad), -jnp.inf, x.dtype)], axis=-1)
  groups = x.reshape(*lead, x.shape[-1] // g, g)                                   # [..., V/g, g]
  _, gid = jax.lax.top_k(jnp.max(groups, axis=-1), k)                              # [..., k]
  gid = jnp.sort(gid, axis=-1)                                                     # index order
  cand = jnp.take_along_axis(groups, gid[..., None], axis=-2).reshape(*lead, k * g)  # [..., k g]
  _, pos = jax.lax.top_k(cand, k)
  return jnp.take_along_axis(gid, pos // g, axis=-1) * g + pos % g


def top_k_membership(x: Array, ids: Array, at: Optional[Array] = None) -> Array:
  """Whether entries of x [..., V] belong to the top-k set whose ids [..., k] ``jax.lax.top_k(x, k)`` returned.

  at=None: a [..., V] mask over all of x; otherwise the membership of the ids ``at`` [..., m] (a [..., m] mask).
  Built from comparisons with the k-th largest value instead of a scatter of the ids, so XLA fuses it into
  the reductions that use it. Ties are resolved like top_k: among entries equal to the k-th value, the lowest
  indices are in, up to the largest such index that top_k returned.

  The values are read back from x at the ids rather than taken from top_k's own output: when top_k's values
  are used, XLA:CPU lowers it to a full sort of every row (seconds at V = 32k) instead of its top-k kernel.
  """
  vals = jnp.take_along_axis(x, ids, axis=-1)                                       # [..., k] descending
  tau = vals[..., -1:]                                                              # [..., 1] k-th largest
  last_tied = jnp.max(jnp.where(vals == tau, ids, -1), axis=-1, keepdims=True)      # [..., 1]
  if at is None:
    idx = jax.lax.broadcasted_iota(ids.dtype, x.shape, x.ndim - 1)
    val = x
  else:
    idx, val = at, jnp.take_along_axis(x, at, axis=-1)
  return (val > tau) | ((val == tau) & (idx <= last_tied))


def topk_tail_logprobs(s: Array, u: Array, k: int) -> tuple[Array, Array, Array]:
  """Student and teacher log-probs on the student's top-k ids plus a tail bucket.

  s, u: temperature-scaled logits [..., V]. Returns (ls [..., k+1], lt [..., k+1], ids [..., k]); the last
  entry of ls / lt is the tail. Gradients flow into s (ids come from stop_gradient(s)).
  """
  v = s.shape[-1]
  if k > v:
    raise ValueError(f"top_k={k} exceeds the vocabulary size {v}")
  s_sg = jax.lax.stop_gradient(s)
  with jax.named_scope("top_k"):
    ids = top_k_ids(s_sg, k)                                          # [..., k]
    in_top = top_k_membership(s_sg, ids)                              # [..., V]

  def on_support(x):
    lse = safe_logsumexp(x)
    head = jnp.take_along_axis(x, ids, axis=-1) - lse[..., None]   # [..., k]
    tail = safe_logsumexp(jnp.where(in_top, -jnp.inf, x)) - lse     # [...]
    return jnp.concatenate([head, tail[..., None]], axis=-1)

  return on_support(s), on_support(u), ids


def clip_teacher(ls: Array, lt: Array, eps_min: float, eps_max: Optional[float], renormalise: bool) -> Array:
  """Floor / ceil teacher log-probs relative to the stop-gradient student, optionally renormalised."""
  ref = jax.lax.stop_gradient(ls)
  if eps_min > 0:
    lt = jnp.maximum(lt, ref + math.log(eps_min))
  if eps_max is not None:
    lt = jnp.minimum(lt, ref + math.log(eps_max))
  if renormalise:
    lt = lt - safe_logsumexp(lt)[..., None]
  return lt


# ----------------------------------------------------------------------------------------------------------
# Per-token terms on one chunk.


def token_terms(s_logits: Array, t_logits: Array, tokens: Array, cfg: DistillConfig) -> dict[str, Array]:
  """Per-token loss and diagnostics for one chunk.

  s_logits, t_logits: [B, C, V] raw logits (teacher already stop-gradient or not: it is stopped here);
  tokens: [B, C] sampled response tokens. Returns dict of [B, C]:
    loss: divergence at cfg.temperature on the cfg support (gradient into s_logits);
    logp: student log-prob of the sampled token at cfg.temperature (gradient into s_logits);
    logp_t1: the same at temperature 1 (stop-gradient; what the sampler records, for the log-prob check);
    kl_t1: full-vocabulary KL(student||teacher) at temperature 1 (stop-gradient);
    overlap: |top-k(student) ∩ top-k(teacher)| / k (stop-gradient).
  """
  ftype = jnp.promote_types(s_logits.dtype, jnp.float32)  # float32, or float64 when given float64
  s_logits = s_logits.astype(ftype)
  t_logits = jax.lax.stop_gradient(t_logits.astype(ftype))
  inv_t = 1.0 / cfg.temperature
  s = s_logits * inv_t  # [B, C, V]
  u = t_logits * inv_t
  ls_full = s - safe_logsumexp(s)[..., None]
  lt_full = u - safe_logsumexp(u)[..., None]
  logp = jnp.take_along_axis(ls_full, tokens[..., None], axis=-1)[..., 0]  # [B, C]
  k = min(cfg.top_k or 100, s.shape[-1])
  s_ids = None  # the student's top-k ids (temperature does not change them), shared with the overlap metric

  if cfg.mode == "sampled":
    lt_y = jnp.take_along_axis(lt_full, tokens[..., None], axis=-1)[..., 0]
    lt_y = clip_teacher(logp, lt_y, cfg.eps_min, cfg.eps_max, renormalise=False)
    d = jax.lax.stop_gradient(logp - lt_y)
    loss = d + d * (logp - jax.lax.stop_gradient(logp))
  else:
    if cfg.mode == "topk":
      ls, lt, s_ids = topk_tail_logprobs(s, u, cfg.top_k)
    else:
      ls, lt = ls_full, lt_full
    lt = clip_teacher(ls, lt, cfg.eps_min, cfg.eps_max, renormalise=cfg.renormalize)
    loss = divergence(ls, lt, cfg.alpha, cfg.jsd_scale)

  with jax.named_scope("diagnostics"):
    sg_s = jax.lax.stop_gradient(s_logits)
    if cfg.temperature == 1.0:
      ls1, lt1 = jax.lax.stop_gradient(ls_full), lt_full
    else:
      ls1, lt1 = sg_s - safe_logsumexp(sg_s)[..., None], t_logits - safe_logsumexp(t_logits)[..., None]
    kl_t1 = kl_student_teacher(ls1, lt1)
    logp_t1 = jnp.take_along_axis(jax.lax.stop_gradient(ls1), tokens[..., None], axis=-1)[..., 0]
    if s_ids is None:
      s_ids = top_k_ids(sg_s, k)
    t_ids = top_k_ids(t_logits, k)
    overlap = jnp.mean(top_k_membership(t_logits, t_ids, at=s_ids).astype(jnp.float32), axis=-1)
  return {"loss": loss, "logp": logp, "logp_t1": logp_t1, "kl_t1": kl_t1, "overlap": overlap}


# ----------------------------------------------------------------------------------------------------------
# Chunked scan over response positions.


def _chunk_layout(xs: Any, chunk: int) -> tuple[int, int, int, int]:
  """(B, R, C, n): batch, positions, chunk length and number of chunks for a pytree of [B, R, ...] arrays."""
  b, r = jax.tree.leaves(xs)[0].shape[:2]
  c = min(chunk, r)
  return b, r, c, -(-r // c)


def _to_chunks(x: Array, c: int, n: int) -> Array:
  """[B, R, ...] -> [n, B, C, ...], zero-padding R up to n * C."""
  b, r = x.shape[:2]
  if n * c > r:
    x = jnp.pad(x, [(0, 0), (0, n * c - r)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape((b, n, c) + x.shape[2:]), 1, 0)


def _from_chunks(y: Array, r: int) -> Array:
  """[n, B, C, ...] -> [B, R, ...], dropping the padding."""
  n, b, c = y.shape[:3]
  return jnp.moveaxis(y, 0, 1).reshape((b, n * c) + y.shape[3:])[:, :r]


def scan_position_chunks(fn: Callable[..., dict[str, Array]], xs: Any, chunk: int, remat: bool = True
                         ) -> dict[str, Array]:
  """Apply fn to position chunks of xs (a pytree of [B, R, ...] arrays) and return its [B, R] outputs.

  fn(xs_chunk) -> dict of [B, C] arrays. R is padded up to a multiple of `chunk` (padding is dropped from
  the outputs). The body is wrapped in jax.checkpoint so the backward pass recomputes each chunk's logits
  instead of storing them for every chunk.
  """
  _, r, c, n = _chunk_layout(xs, chunk)
  body = jax.checkpoint(fn) if remat else fn

  def step(carry, x):
    return carry, body(x)

  _, out = jax.lax.scan(step, None, jax.tree.map(lambda x: _to_chunks(x, c, n), xs))
  return jax.tree.map(lambda y: _from_chunks(y, r), out)


def chunked_token_terms(student_logits_fn: LogitsFn, teacher_logits_fn: LogitsFn, student_hidden: Any,
                        teacher_hidden: Any, tokens: Array, cfg: DistillConfig, remat: bool = True
                        ) -> dict[str, Array]:
  """``token_terms`` for the whole response without building [B, R, V].

  student_hidden / teacher_hidden: pytrees of [B, R, ...] arrays aligned with tokens [B, R] (position t holds
  the state that predicts tokens[:, t]); *_logits_fn maps a [B, C, ...] chunk of them to [B, C, V] logits.
  The teacher is evaluated under stop_gradient.
  """
  def fn(x):
    sh, th, tok = x
    t_logits = jax.lax.stop_gradient(teacher_logits_fn(th))
    return token_terms(student_logits_fn(sh), t_logits, tok, cfg)

  return scan_position_chunks(fn, (student_hidden, teacher_hidden, tokens), cfg.chunk_size, remat)


def chunked_token_logprobs(logits_fn: LogitsFn, hidden: Any, tokens: Array, chunk: int,
                           temperature: float = 1.0, remat: bool = True) -> Array:
  """Log-probs [B, R] of tokens under logits_fn(hidden) / temperature, chunked over positions."""
  def fn(x):
    h, tok = x
    s = logits_fn(h).astype(jnp.float32) / temperature
    ls = s - safe_logsumexp(s)[..., None]
    return {"logp": jnp.take_along_axis(ls, tok[..., None], axis=-1)[..., 0]}

  return scan_position_chunks(fn, (hidden, tokens), chunk, remat)["logp"]


def fused_weighted_loss(student_logits_fn: Callable[..., Array], head: Any, student_hidden: Array,
                        teacher_logits_fn: LogitsFn, teacher_hidden: Any, tokens: Array, coef: Array,
                        rollout_logprobs: Optional[Array], cfg: DistillConfig, head_cast: Any = None
                        ) -> tuple[Array, dict[str, Array]]:
  """The weighted loss sum, with its gradient computed chunk by chunk in the forward pass.

  Value: sum over positions with coef != 0 of coef[b,t] * w_is[b,t] * loss[b,t], with loss from
  ``token_terms`` and w_is = min(exp(sg(logp) - rollout_logprobs), is_clip) when ``cfg.rollout_is`` (else 1).
  A NaN coefficient propagates (a bad weight is not silently dropped). ``student_logits_fn(head, h)`` maps
  the output weights (any pytree) and a [B, C, D] chunk of ``student_hidden`` to logits; the gradient reaches
  ``head`` and ``student_hidden`` only (the teacher is stop-gradient). Returns (loss sum, terms), terms being
  the stop-gradient [B, R] arrays of ``token_terms``. ``head_cast``: optional compute-dtype copy of ``head``
  (same pytree), made once here outside the scan; it is then passed as ``student_logits_fn(head, h,
  head_cast)`` (see ``Transformer.logits_with``), so no chunk casts the weights again.

  Why: with ``chunked_token_terms`` under ``jax.checkpoint`` the backward pass recomputes both models' logits
  and the whole support construction of every chunk. Here each chunk's vector-Jacobian product is taken right
  after its forward, while the chunk's logits are live, and only what the backward needs is kept: the
  gradient into the hidden states ([B, R, D]) and the accumulated gradient of ``head``. The returned value is
  a surrogate ``total + <g_h, h - sg(h)> + <g_head, head - sg(head)>``: equal to the total, with exactly
  those gradients. This is exact for a loss that is linear in its per-token terms, which this one is (the
  coefficients are stop-gradient); it is not differentiable twice.
  """
  _, r, c, n = _chunk_layout(student_hidden, cfg.chunk_size)
  if cfg.rollout_is and rollout_logprobs is None:
    raise ValueError("rollout_is=True needs batch.rollout_logprobs")
  head_sg = jax.tree.map(jax.lax.stop_gradient, head)
  hidden_sg = jax.lax.stop_gradient(student_hidden)
  rollout = jnp.zeros_like(coef) if rollout_logprobs is None else rollout_logprobs
  xs = (hidden_sg, jax.lax.stop_gradient(teacher_hidden), tokens, jax.lax.stop_gradient(coef),
        jax.lax.stop_gradient(rollout))

  def body(carry, x):
    total, g_head = carry
    h, th, tok, co, rl = x
    with jax.named_scope("teacher_head"):
      t_logits = jax.lax.stop_gradient(teacher_logits_fn(th))

    def weighted(w, h):
      with jax.named_scope("student_head"):
        s_logits = student_logits_fn(w, h) if head_cast is None else student_logits_fn(w, h, head_cast)
      terms = token_terms(s_logits, t_logits, tok, cfg)
      weight = co
      if cfg.rollout_is:
        weight = weight * is_ratio(terms["logp"], rl, co != 0, cfg.is_clip)
      return jnp.sum(jnp.where(co != 0, terms["loss"] * weight, 0.0)), terms

    value, vjp, terms = jax.vjp(weighted, head_sg, h, has_aux=True)
    g_w, g_h = vjp(jnp.ones_like(value))
    g_head = jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype), g_head, g_w)
    return (total + value, g_head), (g_h, jax.tree.map(jax.lax.stop_gradient, terms))

  zeros = jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.promote_types(w.dtype, jnp.float32)), head_sg)
  chunks = jax.tree.map(lambda x: _to_chunks(x, c, n), xs)
  (total, g_head), (g_h, terms) = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), chunks)
  g_h = _from_chunks(g_h, r)                                                                # [B, R, D]
  terms = jax.tree.map(lambda y: _from_chunks(y, r), terms)                                 # each [B, R]
  link = jnp.sum(g_h * (student_hidden - hidden_sg))
  link += sum(jnp.sum(g.astype(jnp.float32) * (w - w_sg).astype(jnp.float32))
              for g, w, w_sg in zip(jax.tree.leaves(g_head), jax.tree.leaves(head), jax.tree.leaves(head_sg)))
  return total + link, terms


# ----------------------------------------------------------------------------------------------------------
# Token weights and aggregation.


def is_ratio(logp: Array, rollout_logprobs: Array, mask: Array, clip: float) -> Array:
  """Stop-gradient importance ratio min(exp(logp - rollout_logprobs), clip) [B, R]; 1 where mask is off."""
  log_ratio = jax.lax.stop_gradient(logp) - rollout_logprobs.astype(jnp.float32)
  return jnp.exp(jnp.minimum(jnp.where(mask > 0, log_ratio, 0.0), math.log(clip)))


def token_mask(response_mask: Array, sd_mask: Array) -> Array:
  """[B, R] float mask of the tokens the loss sees: response_mask * sd_mask[:, None]."""
  return response_mask.astype(jnp.float32) * sd_mask.astype(jnp.float32)[:, None]


def token_weights(logp: Array, response_mask: Array, sd_mask: Array, sample_weight: Array,
                  rollout_logprobs: Optional[Array], cfg: DistillConfig) -> tuple[Array, Array]:
  """(mask [B, R], weight [B, R]) for the loss; weights are stop-gradient.

  mask = ``token_mask``; weight = sample_weight[:, None] * (if cfg.rollout_is)
  min(exp(sg(logp) - rollout_logprobs), cfg.is_clip).
  """
  mask = token_mask(response_mask, sd_mask)
  weight = jnp.broadcast_to(sample_weight.astype(jnp.float32)[:, None], mask.shape)
  if cfg.rollout_is:
    if rollout_logprobs is None:
      raise ValueError("rollout_is=True needs batch.rollout_logprobs")
    weight = weight * is_ratio(logp, rollout_logprobs, mask, cfg.is_clip)
  return mask, jax.lax.stop_gradient(weight)


def aggregation_scale(mask: Array, aggregation: str, rows: Optional[Array] = None) -> tuple[Array, Array]:
  """(scale [B, R], count): the loss is sum(values * weight * scale) / max(count, 1) (see ``aggregate``).

  ``token_mean``: scale = mask, count = sum(mask); ``seq_mean``: scale = mask / (tokens of the row), count =
  rows with a masked-in token, or, when ``rows`` [B] (0/1) is given, sum(rows): the rows the mean runs over
  (``row_mean_over="all_rows"`` passes the rows that have a response, sd_mask 0 or not; see ``row_count``).
  """
  if aggregation == "token_mean":
    return mask, jnp.sum(mask)
  if aggregation == "seq_mean":
    n_tok = jnp.sum(mask, axis=-1, keepdims=True)  # [B, 1]
    count = jnp.sum((n_tok > 0).astype(jnp.float32)) if rows is None else jnp.sum(rows.astype(jnp.float32))
    return mask / jnp.maximum(n_tok, 1.0), count
  raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def row_count(response_mask: Array, row_mean_over: str) -> Optional[Array]:
  """The ``rows`` argument of ``aggregation_scale`` for a ``row_mean_over`` setting: None (rows with a
  masked-in token) or, for ``all_rows``, the [B] indicator of rows with any response token (padding rows of a
  short batch have none and stay out)."""
  if row_mean_over == "rows_with_tokens":
    return None
  if row_mean_over == "all_rows":
    return (jnp.sum(response_mask, axis=-1) > 0).astype(jnp.float32)
  raise ValueError(f"row_mean_over must be one of {ROW_MEANS}, got {row_mean_over!r}")


def aggregate(values: Array, mask: Array, weight: Array, aggregation: str, rows: Optional[Array] = None
              ) -> tuple[Array, Array]:
  """(sum, count) of weighted per-token values [B, R]; the mean is sum / max(count, 1)."""
  scale, count = aggregation_scale(mask, aggregation, rows)
  return jnp.sum(jnp.where(mask > 0, values * weight * scale, 0.0)), count


def success_rate_weights(success: Array, a: float = 1.0, b: float = 1.0, valid: Optional[Array] = None
                         ) -> Array:
  """Per-sample weights [B] that up-weight the rarer outcome of the batch.

  s = success rate over valid samples, clipped to [1/B, 1 - 1/B] (B = number of valid samples);
  weight = (1 - s)^a for successes and s^b for failures, then divided by its mean over valid samples so
  it averages to 1. Invalid samples get weight 0; with fewer than 2 valid samples every valid weight is 1.
  """
  success = success.astype(jnp.float32)
  valid = jnp.ones_like(success) if valid is None else valid.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(valid), 1.0)
  s = jnp.clip(jnp.sum(success * valid) / n, 1.0 / n, 1.0 - 1.0 / n)
  w = jnp.where(success > 0, (1.0 - s) ** a, s ** b) * valid
  w = w / jnp.maximum(jnp.sum(w) / n, 1e-12)
  return jnp.where(jnp.sum(valid) >= 2, w, valid)  # one sample: no rate to speak of, weight 1
