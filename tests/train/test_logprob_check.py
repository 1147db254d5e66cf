"""The sampler-vs-trainer log-prob check: logprob_diff_mean / logprob_diff_max equal |rollout - trainer| log-probs
computed densely in float64, over response tokens of rows with known rollout log-probs; the max survives
micro-batch accumulation as a max (not a sum); the GRPO step logs the same check."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.train.batch import Batch
from resd_jax.distill.losses import DistillConfig
from resd_jax.distill.teacher import TeacherConfig
from resd_jax.models import ModelConfig, Transformer
from resd_jax.rl.grpo import GRPOConfig
from resd_jax.train import state as st
from resd_jax.train import step as S
from resd_jax.train.optim import OptimConfig, make_optimizer

B, PS, R = 8, 5, 6


@functools.lru_cache(maxsize=None)
def parts():
  return st.split_model(Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(1)))


@functools.lru_cache(maxsize=None)
def inputs():
  graphdef, params = parts()
  rng = np.random.default_rng(0)
  tok = rng.integers(1, 512, (B, PS + R)).astype(np.int32)
  mask = np.ones((B, PS + R), bool)
  mask[:, :2] = False
  model = nnx.merge(graphdef, params)
  hidden, _ = model(jnp.asarray(tok), attn_mask=jnp.asarray(mask))
  logits = np.asarray(model.logits(hidden[:, PS - 1:PS + R - 1]), np.float64)             # [B, R, V]
  top = logits.max(-1, keepdims=True)
  logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  logp = np.take_along_axis(logits, tok[:, PS:, None], -1)[..., 0] - logz                  # [B, R] float64
  resp = np.ones((B, R), np.float32)
  resp[0, 4:] = 0
  resp[3, 1:] = 0
  delta = rng.uniform(0.05, 1.0, (B, R)) * rng.choice([-1.0, 1.0], (B, R))
  delta[6, 2] = 3.5                                            # the largest gap, on a live token
  delta[2, 5] = 9.0                                            # row 2 is "unknown" below: must not count
  rollout = (logp + delta) * resp
  rollout[2] = 0.0                                             # no log-probs recorded for row 2
  live = (resp > 0) & (np.arange(B) != 2)[:, None]
  want_sum, want_count, want_max = np.abs(delta)[live].sum(), live.sum(), np.abs(delta)[live].max()
  return tok, mask, resp, rollout.astype(np.float32), (want_sum, want_count, want_max), logp


def _sd_batch():
  tok, mask, resp, rollout, _, _ = inputs()
  return Batch(tok, mask, tok, mask, tok[:, PS:].copy(), resp, np.ones(B, np.float32), np.ones(B, np.float32),
               rollout)


@pytest.mark.slow  # ~45 s on a 2-core CPU (one compile of the 4-micro-batch step)
@pytest.mark.parametrize("micro", [4])  # 4 micro-batches: the max must combine as a max
def test_sd_step_logs_the_logprob_gap(micro):
  cfg = S.StepConfig(distill=DistillConfig(top_k=8, chunk_size=4), teacher=TeacherConfig("current"),
                     optim=OptimConfig(learning_rate=1e-4, warmup_steps=0), micro_batches=micro)
  graphdef, params = parts()
  state = st.init_train_state(jax.tree.map(jnp.copy, params), make_optimizer(cfg.optim), cfg.teacher)
  _, m = S.make_sd_step(graphdef, cfg)(state, _sd_batch())
  want_sum, want_count, want_max = inputs()[4]
  s, c = map(float, m["logprob_diff_mean"])
  assert c == want_count
  np.testing.assert_allclose(s, want_sum, rtol=1e-4)
  assert tuple(map(float, m["logprob_diff_max"]))[1] == 1.0
  np.testing.assert_allclose(float(m["logprob_diff_max"][0]), want_max, rtol=1e-4)


def test_grpo_step_logs_the_logprob_gap_and_a_fresh_sampler_shows_none():
  tok, mask, resp, rollout, (want_sum, want_count, want_max), logp = inputs()
  graphdef, params = parts()
  cfg = S.StepConfig(grpo=GRPOConfig(group_size=4, chunk_size=4), optim=OptimConfig(learning_rate=1e-4, warmup_steps=0),
                     teacher=TeacherConfig("current"))
  step = S.make_grpo_step(graphdef, cfg)
  for old, gap in ((rollout, True), ((logp * resp).astype(np.float32), False)):
    batch = S.GRPOBatch(tok, mask, tok[:, PS:].copy(), resp, old, np.zeros(B, np.float32), np.ones(B, np.float32))
    state = st.init_train_state(jax.tree.map(jnp.copy, params), make_optimizer(cfg.optim), cfg.teacher)
    _, m = step(state, batch)
    if gap:
      np.testing.assert_allclose(float(m["logprob_diff_mean"][0]), want_sum, rtol=1e-4)
      assert float(m["logprob_diff_mean"][1]) == want_count
      np.testing.assert_allclose(float(m["logprob_diff_max"][0]), want_max, rtol=1e-4)
    else:  # rollout log-probs from the very weights the trainer holds: float32 rounding only
      assert float(m["logprob_diff_max"][0]) < 1e-4


def test_combine_metrics_rule():
  a = {"loss": (jnp.float32(1.0), jnp.float32(2.0)), "logprob_diff_max": (jnp.float32(0.5), jnp.float32(1.0))}
  b = {"loss": (jnp.float32(3.0), jnp.float32(1.0)), "logprob_diff_max": (jnp.float32(0.2), jnp.float32(1.0))}
  out = jax.tree.map(float, S.combine_metrics(a, b))
  assert out == {"loss": (4.0, 3.0), "logprob_diff_max": (0.5, 1.0)}
