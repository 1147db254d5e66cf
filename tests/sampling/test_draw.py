"""The token-draw function on given logits: exact nucleus / top-k sets and empirical distributions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.sampling.draw import draw, kcap_for, top_k_mask, top_p_mask


def _ref_probs(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
  """Sampling distribution by the textbook recipe in float64: sort, cumulative sum, renormalise."""
  x = logits.astype(np.float64) / temperature
  order = np.argsort(-x, kind="stable")
  keep = np.zeros(x.shape, bool)
  if top_k:
    keep[order[:top_k]] = True
  else:
    keep[:] = True
  x = np.where(keep, x, -np.inf)
  p = np.exp(x - x.max())
  p /= p.sum()
  if top_p < 1:
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]          # mass strictly before each token in sorted order
    nucleus = np.zeros(x.shape, bool)
    nucleus[order[before < top_p]] = True
    p = np.where(nucleus, p, 0.0)
    p /= p.sum()
  return p


def test_top_p_set_equals_sorting_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 300)).astype(np.float32) * 3
  for top_p in (0.05, 0.5, 0.9, 0.999):
    got = np.isfinite(np.asarray(top_p_mask(jnp.asarray(logits), jnp.float32(top_p))))
    want = np.stack([_ref_probs(row, 1.0, top_p, 0) > 0 for row in logits])
    np.testing.assert_array_equal(got, want)


def test_top_k_mask_and_cap():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 100)), jnp.float32)
  assert kcap_for(0, 100) == 0 and kcap_for(5, 100) == 8 and kcap_for(100, 100) == 0 and kcap_for(70, 100) == 100
  for k in (1, 3, 5):
    kept = np.isfinite(np.asarray(top_k_mask(logits, jnp.int32(k), kcap_for(k, 100))))
    assert (kept.sum(-1) == k).all()
    want = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    assert all(set(np.flatnonzero(kept[i])) == set(want[i]) for i in range(4))


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.8, 0), (1.5, 1.0, 4), (1.0, 0.6, 5)])
def test_empirical_distribution_matches_expected(temperature, top_p, top_k):
  """50k draws from fixed logits; total variation to the float64 reference must stay under 0.015.

  With V=10 and N=50k the expected TV of an exact sampler is about 0.005 (sum of sqrt(p(1-p)/N) / 2 * 0.8);
  0.015 is three times that. Tokens outside the kept set must never be drawn.
  """
  logits = np.array([2.0, 1.5, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0], np.float32)
  n = 50_000
  keys = jax.random.split(jax.random.PRNGKey(42), n)
  toks, lp, slp = jax.jit(draw, static_argnums=5)(jnp.tile(jnp.asarray(logits), (n, 1)), keys,
                                                   jnp.float32(temperature), jnp.float32(top_p),
                                                   jnp.int32(top_k), kcap_for(top_k, 10))
  toks = np.asarray(toks)
  want = _ref_probs(logits, temperature, top_p, top_k)
  freq = np.bincount(toks, minlength=10) / n
  assert 0.5 * np.abs(freq - want).sum() < 0.015, (freq, want)
  assert freq[want == 0].sum() == 0
  # Returned log-probs: policy (raw logits) and sampling distribution, at the drawn tokens.
  ref_policy = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
  np.testing.assert_allclose(np.asarray(lp), ref_policy[toks], atol=1e-5)
  np.testing.assert_allclose(np.asarray(slp), np.log(want[toks]), atol=1e-5)


def test_greedy_draw_is_argmax_with_zero_sampling_logprob():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(8, 50)), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  tok, lp, slp = draw(logits, keys, jnp.float32(0.0), jnp.float32(0.3), jnp.int32(0), 0)
  np.testing.assert_array_equal(np.asarray(tok), np.argmax(np.asarray(logits), -1))
  assert np.all(np.asarray(slp) == 0)
  np.testing.assert_allclose(np.asarray(lp), np.asarray(jax.nn.log_softmax(logits))[np.arange(8), np.asarray(tok)],
                             atol=1e-6)
