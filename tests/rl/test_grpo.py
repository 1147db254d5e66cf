"""GRPO advantages and clipped surrogate against a float64 NumPy reference, branch by branch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.rl import grpo


def np_advantages(r, g, norm, eps=1e-6):
  r = np.asarray(r, np.float64).reshape(-1, g)
  a = r - r.mean(1, keepdims=True)
  if norm:
    a = a / (np.sqrt(((r - r.mean(1, keepdims=True)) ** 2).mean(1, keepdims=True)) + eps)
  return a.ravel()


def np_token_loss(logp, old, adv, lo, hi, dual):
  """Scalar-by-scalar PPO loss with the branches written out."""
  out = np.zeros(np.shape(logp))
  for idx in np.ndindex(*np.shape(logp)):
    a = adv[idx[0]]
    rho = np.exp(logp[idx] - old[idx])
    if a >= 0:
      loss = -a * min(rho, 1 + hi)          # pessimistic: the clip only bites above 1 + hi
    else:
      loss = -a * max(rho, 1 - lo)          # ... and only below 1 - lo for negative advantages
      if dual is not None:
        loss = min(loss, -a * dual)
    out[idx] = loss
  return out


@pytest.mark.parametrize("norm", [True, False])
def test_group_advantages(norm):
  r = np.array([1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 1, 1, 0, 0.25])
  got = grpo.group_advantages(jnp.asarray(r), 4, normalize_std=norm)
  np.testing.assert_allclose(got, np_advantages(r, 4, norm), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="multiple of group_size"):
    grpo.group_advantages(jnp.zeros(6), 4)


def test_surrogate_branches():
  cfg = grpo.GRPOConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
  # ratios chosen to land in every branch: inside, above 1+hi, below 1-lo, and beyond the dual clip
  ratios = np.array([[1.0, 1.1, 1.5, 0.5], [1.0, 0.7, 1.5, 5.0]])
  adv = np.array([2.0, -1.0])
  old = np.log(np.full(ratios.shape, 0.3))
  logp = old + np.log(ratios)
  loss, info = grpo.token_surrogate(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), cfg)
  want = np_token_loss(logp, old, adv, 0.2, 0.28, 3.0)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # spelled out: A=2: -2, -2.2, -2*1.28, -2*0.5 ; A=-1: 1, 0.8 (clip at 0.8), 1.5, min(5, 3) = 3
  np.testing.assert_allclose(loss, [[-2, -2.2, -2.56, -1.0], [1.0, 0.8, 1.5, 3.0]], rtol=1e-5)
  np.testing.assert_allclose(info["clipped"], [[0, 0, 1, 0], [0, 1, 0, 0]])
  np.testing.assert_allclose(info["dual_clipped"], [[0, 0, 0, 0], [0, 0, 0, 1]])


def test_surrogate_random_and_gradient():
  rng = np.random.default_rng(0)
  cfg = grpo.GRPOConfig(dual_clip=3.0)
  logp = np.log(rng.uniform(0.05, 1, (6, 9)))
  old = logp + rng.normal(0, 0.6, logp.shape)
  adv = rng.normal(0, 1, 6)
  loss, _ = grpo.token_surrogate(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                 jnp.asarray(adv, jnp.float32), cfg)
  np.testing.assert_allclose(loss, np_token_loss(logp, old, adv, 0.2, 0.28, 3.0), rtol=1e-4, atol=1e-6)
  # gradient wrt logp: -A rho where the unclipped branch is active, 0 where a clip is active
  g = jax.grad(lambda x: grpo.token_surrogate(x, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                                              cfg)[0].sum())(jnp.asarray(logp, jnp.float32))
  rho = np.exp(logp - old)
  a = adv[:, None]
  active = np.where(a >= 0, rho <= 1.28, (rho >= 0.8) & (-a * rho <= -a * 3.0))
  np.testing.assert_allclose(g, np.where(active, -a * rho, 0.0), rtol=1e-4, atol=1e-6)


def test_token_mean_and_seq_mean_and_kl():
  vals = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0]])
  s, c = grpo.aggregate(vals, mask, "token_mean")
  assert (float(s), float(c)) == (10.0, 4.0)
  s, c = grpo.aggregate(vals, mask, "seq_mean")
  assert (float(s), float(c)) == (6.0, 2.0)
  cfg = grpo.GRPOConfig(kl_coef=0.5, dual_clip=None)
  logp = jnp.log(jnp.array([[0.5]]))
  ref = jnp.log(jnp.array([[0.25]]))
  loss, info = grpo.token_surrogate(logp, logp, jnp.array([0.0]), cfg, ref_logp=ref)
  d = np.log(0.25) - np.log(0.5)
  np.testing.assert_allclose(loss, [[0.5 * (np.exp(d) - d - 1)]], rtol=1e-6)
  with pytest.raises(ValueError, match="reference"):
    grpo.token_surrogate(logp, logp, jnp.array([0.0]), cfg)


@pytest.mark.parametrize("kw", [dict(group_size=0), dict(clip_low=1.0), dict(dual_clip=0.5), dict(kl_coef=-1),
                                dict(aggregation="sum")])
def test_config_validation(kw):
  with pytest.raises(ValueError):
    grpo.GRPOConfig(**kw)
