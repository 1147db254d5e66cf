"""Pure, jitted train steps: self-distillation (`make_sd_step`) and GRPO (`make_grpo_step`).

`step(state, batch) -> (state, metrics)`; the state is donated. Inside one jit: the student forward with
gradients, the teacher forward(s) on the teacher context under stop_gradient, the chunked loss (never
[B, R, V] at once), gradient accumulation over micro-batches, the optax update (skipped, and counted, when
the loss or a gradient is non-finite), and the teacher update.

Gradient accumulation is exact: each micro-batch returns the *sum* of its loss terms and their count
(tokens or sequences, from the loss's aggregation), gradients of the sums are added, and the total is divided
by the total count once, so 4 micro-batches give the same update as one full batch.

Metrics are (sum, count) pairs of float32 scalars: loss, kl_t1 (full-vocabulary KL(student||teacher) at
temperature 1, token mean), topk_overlap, teacher_context_frac (samples with a teacher context among samples
with a response), grad_norm, lr, tokens (masked-in response tokens, per sample), skipped, and the
sampler-vs-trainer check logprob_diff_mean / logprob_diff_max: |rollout log-prob - trainer log-prob| of the
sampled response tokens, both at temperature 1, over rows whose rollout log-probs are known. Stale or wrong
weights in the sampler show up there the first step they happen. A metric whose name ends in `_max` is a
(max, 1) pair: micro-batches (and `metrics.merge_pairs`) combine it by maximum, not by sum.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from resd_jax.distill import losses, teacher as teacher_lib
from resd_jax.models import lora
from resd_jax.parallel import placement
from resd_jax.parallel import sharding as shd
from resd_jax.rl import grpo
from resd_jax.train.batch import GRPOBatch
from resd_jax.train.optim import OptimConfig, make_optimizer, make_schedule
from resd_jax.train.state import TrainState

Metrics = dict[str, tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Everything the step needs besides the model graph (validated by the member configs)."""
  distill: losses.DistillConfig = losses.DistillConfig()
  teacher: teacher_lib.TeacherConfig = teacher_lib.TeacherConfig()
  optim: OptimConfig = OptimConfig()
  grpo: grpo.GRPOConfig = grpo.GRPOConfig()
  micro_batches: int = 1
  fused_loss: bool = True   # SD loss: each chunk's gradient taken in the forward pass (losses.fused_weighted_loss)
  remat_loss: bool = True   # otherwise (and for GRPO): recompute each chunk's logits in the backward pass

  def __post_init__(self):
    if self.micro_batches < 1:
      raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")


# ----------------------------------------------------------------------------------------------------------
# Forward helpers.


def response_hidden(model: nnx.Module, tokens: jax.Array, mask: jax.Array, r: int) -> jax.Array:
  """Hidden states [B, R, D] that predict the last R tokens of left-padded `tokens` [B, L]."""
  length = tokens.shape[1]
  if length <= r:
    raise ValueError(f"sequence length {length} must exceed the response length {r} (a prompt is needed)")
  hidden, _ = model(tokens, attn_mask=mask, out_start=length - r - 1)   # [B, R + 1, D]: last layer on these only
  return hidden[:, :r]


def _logits_fn(graphdef: nnx.GraphDef, params: Any) -> Callable[[jax.Array], jax.Array]:
  return lambda h: nnx.merge(graphdef, params).logits(h)


def head_in_compute_dtype(model: nnx.Module) -> Any:
  """The model's output weights in its compute dtype, or None where matmuls do not cast (float64)."""
  cd = jnp.dtype(model.config.compute_dtype)
  return model.head_weight().astype(cd) if cd.itemsize <= 4 else None


def teacher_head_fn(graphdef: nnx.GraphDef, params: Any) -> Callable[[jax.Array], jax.Array]:
  """Stop-gradient logits of one teacher part, its output weights cast to the compute dtype once (not per chunk)."""
  model = nnx.merge(graphdef, params)
  head, head_cast = jax.lax.stop_gradient((model.head_weight(), head_in_compute_dtype(model)))
  return lambda h: jax.lax.stop_gradient(model.logits_with(head, h, head_cast))


def _sum_count(total, count) -> tuple[jax.Array, jax.Array]:
  return jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32)


def logprob_diff_metrics(trainer_logp: jax.Array, rollout_logprobs: jax.Array, response_mask: jax.Array
                         ) -> Metrics:
  """Sampler-vs-trainer check: (sum, count) of |rollout - trainer| log-prob over response tokens, and its max
  as a (max, 1) pair. Both log-probs are of the sampled tokens at temperature 1 (trainer_logp [B, R] under
  stop_gradient). Rows whose rollout log-probs are unknown (all zero: none were recorded) are left out; a batch
  without rollout log-probs (None) has no check."""
  if rollout_logprobs is None:
    return {}
  rollout = rollout_logprobs.astype(jnp.float32)
  known = jnp.any((rollout != 0) & (response_mask > 0), axis=-1, keepdims=True)            # [B, 1]
  live = (response_mask > 0) & known                                                         # [B, R]
  diff = jnp.where(live, jnp.abs(jax.lax.stop_gradient(trainer_logp).astype(jnp.float32) - rollout), 0.0)
  return {"logprob_diff_mean": _sum_count(jnp.sum(diff), jnp.sum(live)),
          "logprob_diff_max": _sum_count(jnp.max(diff), 1.0)}


def combine_metrics(a: Metrics, b: Metrics) -> Metrics:
  """Two micro-batches' metrics: pairs add, except `*_max` pairs (max, 1), which keep the larger max."""
  out = {}
  for k in a:
    if k.endswith("_max"):
      out[k] = (jnp.maximum(a[k][0], b[k][0]), jnp.maximum(a[k][1], b[k][1]))  # the scan starts from (0, 0)
    else:
      out[k] = (a[k][0] + b[k][0], a[k][1] + b[k][1])
  return out


# ----------------------------------------------------------------------------------------------------------
# Losses of one micro-batch: (sum, (count, metric sums)).


def sd_loss(graphdef: nnx.GraphDef, params: Any, parts: list[tuple[Any, float]], batch: Any, cfg: StepConfig
            ) -> tuple[jax.Array, tuple[jax.Array, Metrics]]:
  """Self-distillation loss sum of one micro-batch, its count, and metric (sum, count) pairs."""
  dcfg = cfg.distill
  r = batch.response_tokens.shape[1]
  student = nnx.merge(graphdef, params)
  with jax.named_scope("student"):
    h_s = response_hidden(student, batch.student_tokens, batch.student_mask, r)          # [B, R, D]
  # The teacher forward waits for the student's: XLA:CPU otherwise runs the two independent forwards at once,
  # and their matmuls fight over the cores (`small` preset on 2 cores: 2.88 -> 2.79 s per step, two A/B rounds).
  h_s, teacher_tokens = jax.lax.optimization_barrier((h_s, batch.teacher_tokens))
  with jax.named_scope("teacher"):
    h_t = [jax.lax.stop_gradient(response_hidden(nnx.merge(graphdef, p), teacher_tokens, batch.teacher_mask, r))
           for p, _ in parts]                                                               # each [B, R, D]
  heads = [(teacher_head_fn(graphdef, p), c) for p, c in parts]

  def teacher_logits(hs):
    return sum(c * head(h) for (head, c), h in zip(heads, hs))

  with jax.named_scope("sd_loss"):
    if cfg.fused_loss:
      mask = losses.token_mask(batch.response_mask, batch.sd_mask)                                    # [B, R]
      rows = losses.row_count(batch.response_mask, dcfg.row_mean_over)                               # [B] or None
      scale, count = losses.aggregation_scale(mask, dcfg.aggregation, rows)
      coef = scale * batch.sample_weight.astype(jnp.float32)[:, None]                                 # [B, R]
      head = student.head_weight()
      head_cast = jax.lax.stop_gradient(head_in_compute_dtype(student))  # its gradient reaches `head` (matmul.py)
      total, terms = losses.fused_weighted_loss(student.logits_with, head, h_s, teacher_logits, h_t,
                                                batch.response_tokens, coef, batch.rollout_logprobs, dcfg,
                                                head_cast=head_cast)
    else:
      terms = losses.chunked_token_terms(_logits_fn(graphdef, params), teacher_logits, h_s, h_t,
                                         batch.response_tokens, dcfg, remat=cfg.remat_loss)      # each [B, R]
      mask, weight = losses.token_weights(terms["logp"], batch.response_mask, batch.sd_mask, batch.sample_weight,
                                          batch.rollout_logprobs, dcfg)
      total, count = losses.aggregate(terms["loss"], mask, weight, dcfg.aggregation,
                                      losses.row_count(batch.response_mask, dcfg.row_mean_over))
  n_tok = jnp.sum(mask)
  has_response = (jnp.sum(batch.response_mask, axis=-1) > 0).astype(jnp.float32)         # [B]
  metrics = {
      "kl_t1": _sum_count(jnp.sum(jax.lax.stop_gradient(terms["kl_t1"]) * mask), n_tok),
      "topk_overlap": _sum_count(jnp.sum(terms["overlap"] * mask), n_tok),
      "teacher_context_frac": _sum_count(jnp.sum(has_response * (batch.sd_mask > 0)), jnp.sum(has_response)),
      "tokens": _sum_count(n_tok, batch.response_tokens.shape[0]),
      **logprob_diff_metrics(terms["logp_t1"], batch.rollout_logprobs, batch.response_mask),
  }
  return total, (count, metrics)


def grpo_loss(graphdef: nnx.GraphDef, params: Any, batch: Any, cfg: StepConfig
              ) -> tuple[jax.Array, tuple[jax.Array, Metrics]]:
  """GRPO loss sum of one micro-batch (old log-probs = batch.rollout_logprobs, advantages = batch.advantages)."""
  gcfg = cfg.grpo
  r = batch.response_tokens.shape[1]
  model = nnx.merge(graphdef, params)
  h = response_hidden(model, batch.student_tokens, batch.student_mask, r)
  logp = losses.chunked_token_logprobs(_logits_fn(graphdef, params), h, batch.response_tokens, gcfg.chunk_size,
                                       gcfg.temperature, remat=cfg.remat_loss)              # [B, R]
  per_tok, info = grpo.token_surrogate(logp, batch.rollout_logprobs, batch.advantages, gcfg)
  mask = batch.response_mask.astype(jnp.float32) * batch.sample_weight.astype(jnp.float32)[:, None]
  total, count = grpo.aggregate(per_tok, mask, gcfg.aggregation)
  n_tok = jnp.sum(mask > 0)
  metrics = {"clip_frac": _sum_count(jnp.sum(info["clipped"] * (mask > 0)), n_tok),
             "tokens": _sum_count(n_tok, batch.response_tokens.shape[0])}
  if "dual_clipped" in info:
    metrics["dual_clip_frac"] = _sum_count(jnp.sum(info["dual_clipped"] * (mask > 0)), n_tok)
  # The surrogate's log-probs are at the rollout temperature (1 in every paper config), the rollout's at 1.
  metrics.update(logprob_diff_metrics(logp, batch.rollout_logprobs, batch.response_mask))
  return total, (count, metrics)


# ----------------------------------------------------------------------------------------------------------
# Accumulation and update.


def _split_micro(batch: Any, n: int) -> Any:
  """[B, ...] leaves -> [n, B/n, ...]; micro-batch i holds rows i, i + n, ... (each shard keeps its rows)."""
  def one(x):
    b = x.shape[0]
    if b % n:
      raise ValueError(f"batch size {b} is not divisible by micro_batches={n}")
    return jnp.moveaxis(x.reshape((b // n, n) + x.shape[1:]), 1, 0)
  return jax.tree.map(one, batch)


def accumulate(loss_fn: Callable, params: Any, batch: Any, n: int) -> tuple[Any, jax.Array, jax.Array, Metrics]:
  """Gradient of the summed loss over n micro-batches, with the summed loss, count and metrics.

  The gradient is taken with respect to the trainable part of params only (`lora.trainable`: the adapters of a
  LoRA model, whose frozen base then gets no gradient buffers); loss_fn still receives the whole params.
  """
  full = params
  params = lora.trainable(full)
  grad_fn = jax.value_and_grad(lambda train, micro: loss_fn(lora.with_trainable(full, train), micro), has_aux=True)
  if n == 1:
    (total, (count, metrics)), grads = grad_fn(params, batch)
    return grads, total, count, metrics

  def body(carry, micro):
    (total, (count, metrics)), grads = grad_fn(params, micro)
    g, t, c, m = carry
    return (jax.tree.map(jnp.add, (g, t, c), (grads, total, count)) + (combine_metrics(m, metrics),)), None

  micro = _split_micro(batch, n)
  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(lambda: grad_fn(params, first))
  (t0, (c0, m0)), g0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (grads, total, count, metrics), _ = jax.lax.scan(body, (g0, t0, c0, m0), micro)
  return grads, total, count, metrics


def apply_gradients(state: TrainState, grads: Any, total: jax.Array, count: jax.Array,
                    optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    teacher_cfg: Optional[teacher_lib.TeacherConfig]) -> tuple[TrainState, Metrics]:
  """Mean gradient -> optax update, unless the loss or a gradient is non-finite (then count a skip).

  grads are those of the trainable part of state.params (`lora.trainable`: the adapters of a LoRA model).
  """
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
  train = lora.trainable(state.params)
  updates, new_opt = optimizer.update(safe_grads, state.opt_state, train)
  new_train = optax.apply_updates(train, updates)
  new_teacher = state.teacher
  if teacher_cfg is not None:
    new_teacher = teacher_lib.update_teacher(state.teacher, new_train, teacher_cfg)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
  lr = schedule(state.step - state.skipped)
  skipped_now = (~finite).astype(jnp.int32)
  new_params = lora.with_trainable(state.params, keep(new_train, train))
  new_state = TrainState(params=new_params, opt_state=keep(new_opt, state.opt_state),
                         teacher=keep(new_teacher, state.teacher), step=state.step + 1,
                         skipped=state.skipped + skipped_now, rng=jax.random.fold_in(state.rng, state.step))
  metrics = {"loss": _sum_count(total, count), "grad_norm": _sum_count(grad_norm, 1.0), "lr": _sum_count(lr, 1.0),
             "skipped": _sum_count(skipped_now, 1.0)}
  return new_state, metrics


# ----------------------------------------------------------------------------------------------------------
# Jitted steps with explicit shardings.


def batch_shardings(batch: Any, mesh: Any, rules: Optional[shd.Rules] = None) -> Any:
  """NamedSharding per batch field: the leading axis over the batch mesh axes, the rest replicated."""
  return jax.tree.map(
      lambda x: NamedSharding(mesh, shd.spec_for(x.shape, ("batch",) + (None,) * (len(x.shape) - 1), mesh, rules)),
      batch)


def state_shardings(state: Any, mesh: Any, rules: Optional[shd.Rules] = None) -> Any:
  """NamedSharding for every TrainState leaf (params, moments, teacher by their logical axes)."""
  return shd.state_shardings(state, mesh, rules)


class JittedStep:
  """`step(state, batch) -> (state, metrics)` compiled once, under the mesh and axis rules when given."""

  def __init__(self, fn: Callable, mesh: Any = None, rules: Optional[shd.Rules] = None):
    self._fn, self.mesh, self.rules = fn, mesh, rules or shd.DEFAULT_RULES
    self._jitted = None

  def _build(self, state, batch):
    if self.mesh is None:
      return jax.jit(self._fn, donate_argnums=0)
    s_sh = state_shardings(state, self.mesh, self.rules)
    b_sh = batch_shardings(batch, self.mesh, self.rules)
    return jax.jit(self._fn, in_shardings=(s_sh, b_sh), out_shardings=(s_sh, NamedSharding(self.mesh, P())),
                   donate_argnums=0)

  def place(self, state: TrainState, batch: Any) -> tuple[TrainState, Any]:
    """Put state and batch on the mesh with the step's shardings (identity without a mesh)."""
    if self.mesh is None:
      return state, batch
    return (placement.put_tree(state, state_shardings(state, self.mesh, self.rules)),
            placement.put_tree(batch, batch_shardings(batch, self.mesh, self.rules)))

  def lower(self, state: Any, batch: Any):
    """Lower for abstract (ShapeDtypeStruct) or concrete inputs, e.g. to read memory_analysis()."""
    with self._context():
      return self._jit_for(state, batch).lower(state, batch)

  def _jit_for(self, state, batch):
    if self._jitted is None:
      self._jitted = self._build(state, batch)
    return self._jitted

  def _context(self):
    import contextlib  # noqa: PLC0415
    stack = contextlib.ExitStack()
    stack.enter_context(shd.axis_rules(self.rules))
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
    return stack

  def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
    if self.mesh is not None and placement.is_multiprocess():  # host batches -> global arrays (jit does it on one)
      batch = placement.put_tree(batch, batch_shardings(batch, self.mesh, self.rules))
    with self._context():
      return self._jit_for(state, batch)(state, batch)


def make_sd_step(graphdef: nnx.GraphDef, cfg: StepConfig, mesh: Any = None, rules: Optional[shd.Rules] = None
                 ) -> JittedStep:
  """The self-distillation train step for a model graph (see the module docstring)."""
  optimizer, schedule = make_optimizer(cfg.optim), make_schedule(cfg.optim)

  def step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
    parts = teacher_lib.teacher_parts(state.teacher, state.params, cfg.teacher)
    loss_fn = lambda params, micro: sd_loss(graphdef, params, parts, micro, cfg)  # noqa: E731
    grads, total, count, metrics = accumulate(loss_fn, state.params, batch, cfg.micro_batches)
    with jax.named_scope("optimizer"):
      state, update_metrics = apply_gradients(state, grads, total, count, optimizer, schedule, cfg.teacher)
    return state, {**metrics, **update_metrics}

  return JittedStep(step, mesh, rules)


def make_grpo_step(graphdef: nnx.GraphDef, cfg: StepConfig, mesh: Any = None, rules: Optional[shd.Rules] = None
                   ) -> JittedStep:
  """The GRPO train step (no teacher; state.teacher is ignored and kept)."""
  optimizer, schedule = make_optimizer(cfg.optim), make_schedule(cfg.optim)

  def step(state: TrainState, batch: GRPOBatch) -> tuple[TrainState, Metrics]:
    loss_fn = lambda params, micro: grpo_loss(graphdef, params, micro, cfg)  # noqa: E731
    grads, total, count, metrics = accumulate(loss_fn, state.params, batch, cfg.micro_batches)
    with jax.named_scope("optimizer"):
      state, update_metrics = apply_gradients(state, grads, total, count, optimizer, schedule, None)
    return state, {**metrics, **update_metrics}

  return JittedStep(step, mesh, rules)
