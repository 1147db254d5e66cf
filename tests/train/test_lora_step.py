"""LoRA in the train step: only the adapters move and hold optimizer state; the four teacher kinds over the
adapters (frozen = the base model with fresh adapters, no second copy of the base); the sharded step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.distill.losses import DistillConfig
from resd_jax.distill.teacher import TeacherConfig, teacher_parts
from resd_jax.models import ModelConfig, Transformer, lora
from resd_jax.parallel import make_mesh
from resd_jax.rl.grpo import GRPOConfig
from resd_jax.train import state as st
from resd_jax.train import step as S
from resd_jax.train.optim import OptimConfig, make_optimizer
from tests.train.test_step import make_batch

LCFG = lora.LoRAConfig(enabled=True, rank=4, alpha=8.0)


@functools.lru_cache(maxsize=None)
def lora_parts(preset="tiny"):
  base = Transformer(ModelConfig.preset(preset), rngs=nnx.Rngs(0))
  return st.split_model(lora.attach(base, LCFG, seed=3))


def step_cfg(kind="ema"):
  return S.StepConfig(distill=DistillConfig(top_k=10, chunk_size=4), teacher=TeacherConfig(kind, 0.1),
                      optim=OptimConfig(learning_rate=1e-3, eps=1e-6, warmup_steps=0))


def flat(tree):
  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(tree)}


@functools.lru_cache(maxsize=None)
def sd_step(kind, mesh_shape, preset):
  mesh = None if mesh_shape is None else make_mesh(data=mesh_shape[0], fsdp=mesh_shape[1])
  return S.make_sd_step(lora_parts(preset)[0], step_cfg(kind), mesh)


@functools.lru_cache(maxsize=None)
def run(kind="ema", mesh_shape=None, steps=2, preset="tiny"):
  _, params = lora_parts(preset)
  cfg = step_cfg(kind)
  step = sd_step(kind, mesh_shape, preset)
  state = st.init_train_state(jax.tree.map(jnp.copy, params), make_optimizer(cfg.optim), cfg.teacher)
  state, batch = step.place(state, make_batch())
  for _ in range(steps):
    state, m = step(state, batch)
  return state, jax.tree.map(float, m)


@pytest.mark.parametrize("preset", ["tiny", pytest.param("tiny_moe", marks=pytest.mark.slow)])
def test_only_adapters_move_and_hold_optimizer_state(preset):
  _, params0 = lora_parts(preset)
  state, m = run("ema", preset=preset)
  before, after = flat(params0), flat(state.params)
  adapters = {k for k in before if k.endswith(("_lora_a", "_lora_b"))}
  assert adapters and len(adapters) < len(before)
  for k in before:
    if k in adapters:
      if k.endswith("_lora_b"):
        assert np.abs(after[k]).max() > 1e-4, k    # B leaves zero after a step
    else:
      assert np.array_equal(before[k], after[k]), k  # base bit-identical
  # AdamW moments and the EMA teacher: exactly the adapter leaves, nothing of the base.
  mu = state.opt_state[1][0].mu
  assert set(flat(mu)) == adapters
  assert set(flat(state.teacher)) == adapters
  assert m["skipped"][0] == 0.0 and m["grad_norm"][0] > 0


def test_gradient_is_taken_for_adapters_only():
  graphdef, params = lora_parts()
  cfg = step_cfg("current")
  batch = jax.tree.map(jnp.asarray, make_batch(seed=1))
  loss = lambda p, micro: S.sd_loss(graphdef, p, teacher_parts(None, p, cfg.teacher), micro, cfg)  # noqa: E731
  grads, total, count, _ = jax.jit(lambda p: S.accumulate(loss, p, batch, 1))(params)
  assert set(flat(grads)) == {k for k in flat(params) if "_lora_" in k}
  # Only B has a gradient at B = 0 from A's side too: dL/dA = x^T (g B^T) = 0 while B = 0.
  g = flat(grads)
  assert all(np.abs(v).max() == 0 for k, v in g.items() if k.endswith("_lora_a"))
  assert any(np.abs(v).max() > 0 for k, v in g.items() if k.endswith("_lora_b"))


def test_frozen_teacher_is_the_base_model_without_a_second_copy():
  graphdef, params = lora_parts()
  state, _ = run("frozen", steps=1)
  # The kept teacher is the initial adapters only (B = 0 there) ...
  assert set(flat(state.teacher)) == {k for k in flat(params) if "_lora_" in k}
  (weights, coef), = teacher_parts(state.teacher, state.params, TeacherConfig("frozen"))
  assert coef == 1.0
  # ... and its forward equals the plain base model (no adapters at all) bit for bit.
  base = Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))
  tokens = jnp.asarray(make_batch().teacher_tokens)
  want = base.logits(base(tokens)[0])
  got_model = nnx.merge(graphdef, weights)
  got = got_model.logits(got_model(tokens)[0])
  assert np.array_equal(np.asarray(got), np.asarray(want))
  student = nnx.merge(graphdef, state.params)
  assert float(jnp.abs(student.logits(student(tokens)[0]) - want).max()) > 1e-4   # the student did move


def test_ema_and_trust_region_act_on_adapters():
  _, params0 = lora_parts()
  init = flat(lora.split(params0)[0])
  state1, _ = run("ema", steps=1)   # same compiled step as the two-step run
  a1, t1 = flat(lora.split(state1.params)[0]), flat(state1.teacher)
  for k in init:
    np.testing.assert_allclose(t1[k], 0.9 * init[k] + 0.1 * a1[k], rtol=1e-6, atol=1e-9)
  state, _ = run("frozen", steps=1)   # trust_region keeps the same initial copy (init_teacher); one compile less
  parts = teacher_parts(state.teacher, state.params, TeacherConfig("trust_region", 0.1))
  assert [c for _, c in parts] == [pytest.approx(0.9), pytest.approx(0.1)]
  kept, current = flat(parts[0][0]), flat(parts[1][0])
  for k, v in flat(state.params).items():
    assert np.array_equal(current[k], v)
    assert np.array_equal(kept[k], init[k] if k in init else v)   # initial adapters over the same base


@pytest.mark.slow
def test_sharded_lora_step_equals_single_device():
  ref, ref_m = run("ema")
  got, m = run("ema", (2, 4))
  a, b = flat(ref.params), flat(got.params)
  assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6
  np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-4)
  q_b = got.params["layers"]["q_lora_b"][...]
  assert len(q_b.sharding.device_set) == 8


def test_bf16_base_keeps_float32_adapters():
  _, params = lora_parts()
  cast = lora.cast_base(params, "bfloat16")
  for k, v in flat(cast).items():
    assert v.dtype == (np.float32 if "_lora_" in k else jnp.bfloat16), k


def test_grpo_step_trains_adapters_only():
  graphdef, params = lora_parts()
  cfg = S.StepConfig(grpo=GRPOConfig(group_size=4, chunk_size=4), optim=OptimConfig(learning_rate=1e-3, warmup_steps=0),
                     teacher=TeacherConfig("current"))
  sd = make_batch()
  rng = np.random.default_rng(2)
  batch = S.GRPOBatch(sd.student_tokens, sd.student_mask, sd.response_tokens, sd.response_mask,
                      sd.rollout_logprobs, rng.normal(0, 1, sd.student_tokens.shape[0]).astype(np.float32),
                      np.ones(sd.student_tokens.shape[0], np.float32))
  state = st.init_train_state(jax.tree.map(jnp.copy, params), make_optimizer(cfg.optim), cfg.teacher)
  state, m = S.make_grpo_step(graphdef, cfg)(state, batch)
  before, after = flat(params), flat(state.params)
  assert m["skipped"][0] == 0.0
  assert all(np.array_equal(before[k], after[k]) for k in before if "_lora_" not in k)
  assert any(np.abs(after[k]).max() > 0 for k in after if k.endswith("_lora_b"))
