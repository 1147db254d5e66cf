"""The loss switches that select the reference code's behaviour (docs/FIDELITY.md), each shown both ways against
an independent float64 NumPy reference written from the reference's formula:

  * teacher floor without renormalisation: p_t <- max(p_t, eps_min p_s) on the support, left unnormalised;
  * unscaled alpha-JSD: a KL(P_t || M) + (1 - a) KL(P_s || M), M = a P_t + (1 - a) P_s (torch kl_div form,
    sum_i p_i (log p_i - log m_i), with the unnormalised teacher as is);
  * the per-sequence mean over every row of the batch (rows with sd_mask 0 count in the denominator);
  * token-level importance weights min(p_student / p_rollout, 2).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.distill import losses as L


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_reference_token_loss(s, u, k, alpha, eps_min, renormalize, scale):
  """Per-token loss [B, C] in probability space, float64: top-k of the student + tail, floor, divergence."""
  ps, pt = np.exp(np_log_softmax(s)), np.exp(np_log_softmax(u))
  order = np.argsort(-np.asarray(s, np.float64), axis=-1, kind="stable")[..., :k]
  rest = np.ones(ps.shape, bool)
  np.put_along_axis(rest, order, False, axis=-1)
  qs = np.concatenate([np.take_along_axis(ps, order, -1), (ps * rest).sum(-1, keepdims=True)], -1)
  qt = np.concatenate([np.take_along_axis(pt, order, -1), (pt * rest).sum(-1, keepdims=True)], -1)
  qt = np.maximum(qt, eps_min * qs)
  if renormalize:
    qt = qt / qt.sum(-1, keepdims=True)

  def kl(p, q):  # torch.nn.functional.kl_div(log q, log p, log_target=True).sum(-1)
    return (p * (np.log(p) - np.log(q))).sum(-1)

  if alpha == 1.0:
    return kl(qs, qt)
  m = alpha * qt + (1 - alpha) * qs
  mixed = alpha * kl(qt, m) + (1 - alpha) * kl(qs, m)
  return mixed / (alpha * (1 - alpha)) if scale else mixed


def _logits(seed, shape=(2, 3, 23)):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(shape) * 3.0 for _ in range(2)]


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
@pytest.mark.parametrize("renormalize,scale", [(False, False), (True, True), (False, True), (True, False)])
def test_floor_and_jsd_switches_match_float64_reference(alpha, renormalize, scale):
  s, u = _logits(int(alpha * 10) + 2 * renormalize + scale)
  tokens = np.zeros(s.shape[:2], np.int32)
  cfg = L.DistillConfig(top_k=6, alpha=alpha, eps_min=0.2, renormalize=renormalize, jsd_scale=scale)
  with jax.enable_x64(True):
    got = np.asarray(L.token_terms(jnp.asarray(s), jnp.asarray(u), jnp.asarray(tokens), cfg)["loss"])
  want = np_reference_token_loss(s, u, 6, alpha, 0.2, renormalize, scale)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_reference_jsd_is_the_scaled_one_times_a_one_minus_a():
  """The two JSD forms differ by exactly a (1 - a) (4x at a = 0.5), and the floor without renormalisation
  changes the value (the switch is not a no-op on these logits)."""
  s, u = _logits(11)
  tokens = jnp.zeros(s.shape[:2], jnp.int32)
  with jax.enable_x64(True):
    def loss(**kw):
      cfg = L.DistillConfig(top_k=6, alpha=0.5, **kw)
      return np.asarray(L.token_terms(jnp.asarray(s), jnp.asarray(u), tokens, cfg)["loss"])
    np.testing.assert_allclose(loss(jsd_scale=True), 4.0 * loss(jsd_scale=False), rtol=1e-12)
    assert np.max(np.abs(loss(renormalize=False) - loss(renormalize=True))) > 1e-4


def test_all_rows_mean_counts_rows_without_a_teacher_context():
  """seq_mean over rows_with_tokens divides by the rows with a masked-in token; over all_rows by every row
  with a response (row 1: sd_mask 0, row 2: padding with no response stays out)."""
  values = jnp.array([[1.0, 3.0, 0.0], [5.0, 5.0, 5.0], [9.0, 9.0, 9.0]])
  resp = jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], jnp.float32)
  mask = L.token_mask(resp, jnp.array([1.0, 0.0, 1.0]))
  weight = jnp.ones_like(mask)
  total, count = L.aggregate(values, mask, weight, "seq_mean", L.row_count(resp, "rows_with_tokens"))
  assert (float(total), float(count)) == (2.0, 1.0)
  total, count = L.aggregate(values, mask, weight, "seq_mean", L.row_count(resp, "all_rows"))
  assert (float(total), float(count)) == (2.0, 2.0)  # the reference: (2 + 0) / 2 rows
  with pytest.raises(ValueError, match="row_mean_over"):
    L.DistillConfig(row_mean_over="every")


def test_token_importance_weights_clip_at_two():
  """rollout_is (config: distill.is_level='token'): weight min(exp(logp - rollout logp), is_clip) per token."""
  logp = jnp.log(jnp.array([[0.9, 0.2, 0.5]]))
  rollout = jnp.log(jnp.array([[0.3, 0.4, 0.5]]))
  resp = jnp.ones((1, 3))
  on = L.DistillConfig(rollout_is=True, is_clip=2.0)
  _, w = L.token_weights(logp, resp, jnp.ones(1), jnp.ones(1), rollout, on)
  np.testing.assert_allclose(w, [[2.0, 0.5, 1.0]], rtol=1e-6)  # 3 -> clipped to 2
  _, w = L.token_weights(logp, resp, jnp.ones(1), jnp.ones(1), rollout, L.DistillConfig())
  np.testing.assert_allclose(w, [[1.0, 1.0, 1.0]])
