"""Optimizer from config: schedule values and one AdamW update against NumPy."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.train.optim import OptimConfig, make_optimizer, make_schedule


def test_warmup_then_constant_and_cosine():
  sched = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=4))
  np.testing.assert_allclose([float(sched(i)) for i in range(6)], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rtol=1e-6)
  cos = make_schedule(OptimConfig(learning_rate=2.0, warmup_steps=2, schedule="cosine", total_steps=12,
                                  min_lr_ratio=0.1))
  got = [float(cos(i)) for i in range(14)]
  want = [1.0, 2.0] + [2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(j, 10) / 10))) for j in range(12)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(make_schedule(OptimConfig(learning_rate=3.0, warmup_steps=0))(100)) == 3.0


def test_adamw_step_matches_numpy():
  cfg = OptimConfig(learning_rate=0.1, weight_decay=0.01, clip_norm=1.0, warmup_steps=0)
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.array([3.0, -1.0])}
  grads = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "b": jnp.array([0.0, 0.0])}
  opt = make_optimizer(cfg)
  updates, _ = opt.update(grads, opt.init(params), params)
  # clip: global norm 5 -> scale 1/5; first Adam step: m_hat / (sqrt(v_hat) + eps) = sign(g) where g != 0
  gw = np.array([[3.0, 0.0], [0.0, 4.0]]) / 5.0
  step_w = gw / (np.abs(gw) + 1e-8)
  want_w = -0.1 * (step_w + 0.01 * np.array([[1.0, -2.0], [0.5, 0.0]]))
  np.testing.assert_allclose(updates["w"], want_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(updates["b"], [0.0, 0.0], atol=1e-7)  # 1-D: no weight decay


@pytest.mark.parametrize("kw,msg", [(dict(learning_rate=0.0), "learning_rate"), (dict(b1=1.0), "b1"),
                                    (dict(schedule="linear"), "schedule"),
                                    (dict(schedule="cosine", total_steps=0), "total_steps"),
                                    (dict(warmup_steps=-1), "warmup_steps"), (dict(min_lr_ratio=2.0), "min_lr")])
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    OptimConfig(**kw)
