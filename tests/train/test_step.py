"""The jitted train steps: mesh parity, exact micro-batch accumulation, EMA teacher, skipped non-finite
updates, zero loss for an identical teacher, and the GRPO step against a dense NumPy reference."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.train.batch import Batch
from resd_jax.distill.losses import DistillConfig
from resd_jax.distill.teacher import TeacherConfig, teacher_parts, update_teacher
from resd_jax.models import ModelConfig, Transformer
from resd_jax.parallel import make_mesh
from resd_jax.rl.grpo import GRPOConfig
from resd_jax.train import state as st
from resd_jax.train import step as S
from resd_jax.train.optim import OptimConfig, make_optimizer

B, PS, PT, R = 8, 5, 9, 6
# Small lr and a non-negligible Adam eps keep reduction-order noise in near-zero gradients from being
# amplified to O(lr) by Adam's normalisation; a real sharding error still moves params by ~lr.
CFG = S.StepConfig(distill=DistillConfig(top_k=10, chunk_size=4, rollout_is=True),
                   teacher=TeacherConfig("ema", 0.1), optim=OptimConfig(learning_rate=1e-4, eps=1e-6, warmup_steps=0))


@functools.lru_cache(maxsize=None)
def model_parts():
  model = Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))
  return st.split_model(model)


def make_batch(seed=0, teacher_same=False):
  rng = np.random.default_rng(seed)
  st_tok = rng.integers(1, 512, (B, PS + R)).astype(np.int32)
  st_mask = np.ones((B, PS + R), bool)
  st_mask[:, :2] = False
  if teacher_same:
    t_tok, t_mask = st_tok.copy(), st_mask.copy()
  else:
    t_tok = rng.integers(1, 512, (B, PT + R)).astype(np.int32)
    t_tok[:, PT:] = st_tok[:, PS:]
    t_mask = np.ones((B, PT + R), bool)
    t_mask[:, : rng.integers(0, 4)] = False
  resp_mask = np.ones((B, R), np.float32)
  resp_mask[0, 4:] = 0
  resp_mask[3, 1:] = 0
  sd_mask = np.ones(B, np.float32)
  sd_mask[5] = 0
  weight = rng.uniform(0.5, 1.5, B).astype(np.float32)
  rollout = np.log(rng.uniform(0.001, 0.01, (B, R))).astype(np.float32)
  return Batch(st_tok, st_mask, t_tok, t_mask, st_tok[:, PS:].copy(), resp_mask, weight, sd_mask, rollout)


def fresh_state(cfg=CFG):
  _, params = model_parts()
  return st.init_train_state(jax.tree.map(jnp.copy, params), make_optimizer(cfg.optim), cfg.teacher)


@functools.lru_cache(maxsize=None)
def sd_step(mesh_shape=None, micro=1):
  mesh = None if mesh_shape is None else make_mesh(data=mesh_shape[0], fsdp=mesh_shape[1])
  cfg = S.StepConfig(**{**CFG.__dict__, "micro_batches": micro})
  return S.make_sd_step(model_parts()[0], cfg, mesh)


def run(mesh_shape=None, micro=1, steps=3):
  """Params (as NumPy) after each step, the final state and the metrics of each step."""
  step = sd_step(mesh_shape, micro)
  state, batch = step.place(fresh_state(), make_batch())
  history, metrics = [], []
  for _ in range(steps):
    state, m = step(state, batch)
    history.append(jax.tree.map(np.asarray, state.params))
    metrics.append(jax.tree.map(float, m))
  return history, state, metrics


@functools.lru_cache(maxsize=None)
def single_device_run():
  history, state, metrics = run(None)
  return history, jax.tree.map(np.asarray, state.teacher), metrics


def max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


@pytest.mark.parametrize("mesh_shape", [(2, 4), (8, 1)])
def test_sharded_step_equals_single_device(mesh_shape):
  ref, _, ref_metrics = single_device_run()
  got, state, metrics = run(mesh_shape)
  moved = max_diff(ref[-1], jax.tree.map(np.asarray, model_parts()[1]))
  assert moved > 1e-4  # the steps really changed the parameters
  assert max_diff(got[-1], ref[-1]) < 1e-6
  # atol as in the micro-batch test below: the loss (~3e-3 here) is a small difference of log-probabilities summed
  # in another order across 8 shards; on a Sapphire Rapids host the (8, 1) mesh's loss differs by 4.8e-7 (1.6e-4
  # relative) while the parameters agree to 1e-6; a wrong loss would be off by a large fraction.
  np.testing.assert_allclose(metrics[-1]["loss"], ref_metrics[-1]["loss"], rtol=1e-4, atol=2e-6)
  # parameters live sharded on the mesh, not replicated
  q = state.params["layers"]["q"][...]
  assert len(q.sharding.device_set) == 8


def test_four_micro_batches_equal_one_full_batch():
  ref, _, ref_metrics = single_device_run()
  got, _, metrics = run(None, micro=4, steps=1)
  assert max_diff(got[0], ref[0]) < 1e-6
  # atol: the micro-batches run the model at another batch shape, so XLA sums in another order; loss and kl_t1
  # are ~5e-3 here and agree to ~6e-7, while a wrong accumulation would be off by a large fraction.
  for key in ("loss", "kl_t1", "tokens", "teacher_context_frac"):
    np.testing.assert_allclose(metrics[0][key], ref_metrics[0][key], rtol=1e-5, atol=2e-6, err_msg=key)


def test_metrics_are_sum_count_pairs_with_expected_counts():
  _, _, metrics = single_device_run()
  m = metrics[0]
  batch = make_batch()
  masked_in = batch.response_mask * batch.sd_mask[:, None]
  assert m["tokens"] == (float(masked_in.sum()), float(B))
  assert m["loss"][1] == float(((masked_in.sum(1)) > 0).sum())  # seq_mean: sequences with tokens
  assert m["teacher_context_frac"] == (7.0, 8.0)
  assert m["skipped"] == (0.0, 1.0)
  np.testing.assert_allclose(m["lr"], (1e-4, 1.0), rtol=1e-6)
  assert 0.0 <= m["topk_overlap"][0] <= m["topk_overlap"][1]
  assert m["kl_t1"][0] > 0 and m["grad_norm"][0] > 0


def test_ema_teacher_follows_the_student():
  history, teacher, _ = single_device_run()
  _, params0 = model_parts()
  want = jax.tree.map(np.asarray, params0)
  for params in history:
    want = jax.tree.map(lambda t, p: (1 - 0.1) * t + 0.1 * p, want, params)
  for got_leaf, want_leaf in zip(jax.tree.leaves(teacher), jax.tree.leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=3e-7, atol=1e-8)  # float32 rounding of one step


def test_ema_arithmetic_is_exact():
  cfg = TeacherConfig("ema", 0.25)
  t = {"w": jnp.array([1.0, -2.0, 0.5, 8.0])}
  p = {"w": jnp.array([3.0, 2.0, -0.5, 0.0])}
  out = update_teacher(t, p, cfg)["w"]
  assert np.array_equal(np.asarray(out), np.array([1.5, -1.0, 0.25, 6.0], np.float32))
  assert update_teacher(t, p, TeacherConfig("frozen")) is t


def test_non_finite_gradient_skips_the_update():
  step = sd_step(None, 1)
  state = fresh_state()
  before = jax.tree.map(np.asarray, (state.params, state.opt_state, state.teacher))
  bad = make_batch()
  bad.sample_weight[2] = np.nan
  state, m = step(state, bad)
  after = jax.tree.map(np.asarray, (state.params, state.opt_state, state.teacher))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  assert int(state.skipped) == 1 and int(state.step) == 1
  assert float(m["skipped"][0]) == 1.0
  state, m = step(state, make_batch())  # a good batch afterwards is applied
  assert int(state.skipped) == 1 and float(m["skipped"][0]) == 0.0


def test_identical_context_and_current_teacher_give_zero_loss_and_gradient():
  graphdef, params = model_parts()
  cfg = S.StepConfig(distill=DistillConfig(top_k=10, chunk_size=4, alpha=0.5), teacher=TeacherConfig("current"),
                     optim=OptimConfig(warmup_steps=0))
  batch = make_batch(teacher_same=True)

  @jax.jit
  def f(p):
    parts = teacher_parts(None, p, cfg.teacher)
    total, (count, _) = S.sd_loss(graphdef, p, parts, batch, cfg)
    return total / count

  val, grads = jax.value_and_grad(f)(params)
  assert abs(float(val)) < 1e-7
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-6


@pytest.mark.parametrize("teacher,tied", [("ema", False), ("trust_region", True)])
def test_fused_loss_step_equals_autodiff_step(teacher, tied):
  """The default SD loss (gradient taken per chunk in the forward pass) equals jax.grad through the
  rematerialised chunks, on the tiny model (untied and tied output head) with masks, sample weights and
  importance ratios."""
  graphdef, params = model_parts() if not tied else st.split_model(
      Transformer(ModelConfig.preset("tiny", tie_embeddings=True), rngs=nnx.Rngs(0)))
  tcfg = TeacherConfig(teacher, 0.3)
  teacher_params = jax.tree.map(lambda x: x * 1.01, params)
  batch = jax.tree.map(jnp.asarray, make_batch(seed=2))

  def loss(p, fused):
    cfg = S.StepConfig(**{**CFG.__dict__, "teacher": tcfg, "fused_loss": fused})
    total, (count, metrics) = S.sd_loss(graphdef, p, teacher_parts(teacher_params, p, tcfg), batch, cfg)
    return total / count, metrics

  (ref, ref_m), ref_g = jax.jit(jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
  (val, m), g = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
  assert float(ref) > 0
  np.testing.assert_allclose(val, ref, rtol=1e-5)
  for key in ("kl_t1", "topk_overlap", "tokens"):
    np.testing.assert_allclose(m[key][0], ref_m[key][0], rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ref_g))
  assert max_diff(g, ref_g) < 1e-4 * scale


def test_trust_region_parts():
  p, t = {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}
  parts = teacher_parts(t, p, TeacherConfig("trust_region", 0.3))
  assert [c for _, c in parts] == [pytest.approx(0.7), pytest.approx(0.3)]
  with pytest.raises(ValueError, match="teacher weights"):
    teacher_parts(None, p, TeacherConfig("frozen"))
  with pytest.raises(ValueError, match="teacher kind"):
    TeacherConfig("bogus")


def test_grpo_step_loss_matches_dense_numpy():
  graphdef, params = model_parts()
  cfg = S.StepConfig(grpo=GRPOConfig(group_size=4, chunk_size=4), optim=OptimConfig(learning_rate=1e-4, warmup_steps=0),
                     teacher=TeacherConfig("current"))
  sd = make_batch()
  model = nnx.merge(graphdef, params)
  hidden, _ = model(jnp.asarray(sd.student_tokens), attn_mask=jnp.asarray(sd.student_mask))
  logits = np.asarray(model.logits(hidden[:, PS - 1:PS + R - 1]), np.float64)          # dense [B, R, V]
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  logp = np.take_along_axis(logits, sd.response_tokens[..., None], -1)[..., 0] - logz
  rng = np.random.default_rng(1)
  old = logp + rng.normal(0, 0.4, logp.shape)
  adv = rng.normal(0, 1, B)
  rho = np.exp(logp - old)
  a = adv[:, None]
  per_tok = np.maximum(-a * rho, -a * np.clip(rho, 0.8, 1.28))
  per_tok = np.where(a < 0, np.minimum(per_tok, -a * 3.0), per_tok)
  mask = sd.response_mask
  batch = S.GRPOBatch(sd.student_tokens, sd.student_mask, sd.response_tokens, mask, old.astype(np.float32),
                      adv.astype(np.float32), np.ones(B, np.float32))
  step = S.make_grpo_step(graphdef, cfg)
  state, m = step(fresh_state(cfg), batch)
  np.testing.assert_allclose(float(m["loss"][0]), (per_tok * mask).sum(), rtol=1e-4)
  assert float(m["loss"][1]) == mask.sum()
  assert max_diff(state.params, params) > 1e-5
