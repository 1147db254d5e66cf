"""Self-distillation losses against an independent float64 NumPy reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.distill import losses as L

# ---------------------------------------------------------------------------------------------------------
# float64 NumPy reference, written from the maths in the module docstring (probability space, no log-sum-exp
# tricks except where needed to avoid overflow).


def np_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
  e = np.exp(x - m)
  return e / e.sum(-1, keepdims=True)


def np_support_probs(s, u, k):
  """Probabilities of the student's top-k ids plus the summed rest, for student and teacher."""
  ps, pt = np_softmax(s), np_softmax(u)
  order = np.argsort(-np.asarray(s, np.float64), axis=-1, kind="stable")[..., :k]
  comp = np.ones(ps.shape, bool)
  np.put_along_axis(comp, order, False, axis=-1)
  qs = np.concatenate([np.take_along_axis(ps, order, -1), (ps * comp).sum(-1, keepdims=True)], -1)
  qt = np.concatenate([np.take_along_axis(pt, order, -1), (pt * comp).sum(-1, keepdims=True)], -1)
  return qs, qt


def np_clip(qs, qt, eps_min, eps_max):
  qt = np.maximum(qt, eps_min * qs) if eps_min > 0 else qt.copy()
  if eps_max is not None:
    qt = np.minimum(qt, eps_max * qs)
  return qt / qt.sum(-1, keepdims=True)


def np_kl(p, q):
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
  return terms.sum(-1)


def np_divergence(qs, qt, alpha):
  if alpha == 1.0:
    return np_kl(qs, qt)
  if alpha == 0.0:
    return np_kl(qt, qs)
  m = alpha * qt + (1 - alpha) * qs
  return (alpha * np_kl(qt, m) + (1 - alpha) * np_kl(qs, m)) / (alpha * (1 - alpha))


def np_token_loss(s, u, k, alpha, temperature=1.0, eps_min=0.2, eps_max=None):
  s = np.asarray(s, np.float64) / temperature
  u = np.asarray(u, np.float64) / temperature
  if k:
    qs, qt = np_support_probs(s, u, k)
  else:
    qs, qt = np_softmax(s), np_softmax(u)
  return np_divergence(qs, np_clip(qs, qt, eps_min, eps_max), alpha)


def random_logits(rng, shape, scale=3.0):
  return (rng.standard_normal(shape) * scale).astype(np.float32)


def extreme_logits(rng, shape):
  """Huge scale, -inf entries (never more than V - k - 1 per row), near-degenerate rows."""
  s = random_logits(rng, shape, scale=40.0)
  v = shape[-1]
  holes = rng.random(shape) < 0.2
  holes[..., : v // 2] = False  # keep enough finite entries for any k used below
  s[holes] = -np.inf
  s[0, 0, :] = -1e4
  s[0, 0, 3] = 0.0  # one id holds essentially all the mass
  return s


ALPHAS = [1.0, 0.0, 0.3, 0.5, 0.9]


def _terms(s, u, tokens, **kw):
  cfg = L.DistillConfig(**kw)
  return L.token_terms(jnp.asarray(s), jnp.asarray(u), jnp.asarray(tokens), cfg)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("mode,k", [("topk", 5), ("full", 0)])
@pytest.mark.parametrize("kind", ["random", "extreme"])
def test_divergence_matches_numpy(alpha, mode, k, kind):
  rng = np.random.default_rng(hash((alpha, mode, kind)) % 2**32)
  shape = (2, 3, 17)
  make = random_logits if kind == "random" else extreme_logits
  s, u = make(rng, shape), make(rng, shape)
  tokens = rng.integers(0, 8, shape[:2])
  kw = dict(mode=mode, top_k=k or 100, alpha=alpha, temperature=1.3, eps_min=0.2, eps_max=5.0)
  if mode == "full":
    kw["top_k"] = 4
  want = np_token_loss(s, u, k, alpha, temperature=1.3, eps_min=0.2, eps_max=5.0)
  if kind == "random":
    got = np.asarray(_terms(s, u, tokens, **kw)["loss"], np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
  else:  # extreme logits put float32 rounding (~1e-6) above the divergences themselves: compare in float64
    with jax.enable_x64(True):
      got = np.asarray(_terms(s.astype(np.float64), u.astype(np.float64), tokens, **kw)["loss"])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  assert np.all(np.isfinite(got))


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.5])
def test_divergence_without_floor_matches_numpy(alpha):
  rng = np.random.default_rng(7)
  s, u = random_logits(rng, (1, 4, 11)), random_logits(rng, (1, 4, 11))
  got = _terms(s, u, np.zeros((1, 4), int), mode="topk", top_k=3, alpha=alpha, eps_min=0.0)["loss"]
  np.testing.assert_allclose(got, np_token_loss(s, u, 3, alpha, eps_min=0.0), rtol=2e-4, atol=2e-6)


def test_teacher_minus_inf_without_floor_is_infinite_reverse_kl():
  s = np.zeros((1, 1, 4), np.float32)
  u = np.array([[[0.0, 0.0, 0.0, -np.inf]]], np.float32)
  out = _terms(s, u, np.zeros((1, 1), int), mode="full", alpha=1.0, eps_min=0.0)["loss"]
  assert np.isposinf(np.asarray(out)).all()
  floored = _terms(s, u, np.zeros((1, 1), int), mode="full", alpha=1.0, eps_min=0.2)["loss"]
  np.testing.assert_allclose(floored, np_token_loss(s, u, 0, 1.0, eps_min=0.2), rtol=1e-5)


def test_tail_bucket_is_stable_when_topk_holds_almost_all_mass():
  s = np.full((1, 1, 1000), -60.0, np.float32)
  s[..., :3] = [0.0, -1.0, -2.0]
  ls, lt, ids = L.topk_tail_logprobs(jnp.asarray(s), jnp.asarray(s), 3)
  assert sorted(np.asarray(ids).ravel().tolist()) == [0, 1, 2]
  qs, _ = np_support_probs(s, s, 3)
  # log(1 - sum p_top) would be log(0) = -inf in float32; the complement log-sum-exp is exact.
  np.testing.assert_allclose(np.asarray(ls)[..., -1], np.log(qs[..., -1]), rtol=1e-5)
  np.testing.assert_allclose(np.exp(np.asarray(ls)).sum(-1), 1.0, rtol=1e-6)


def test_directions_closed_form():
  """P_s = (1/2, 1/2), P_t = (9/10, 1/10): KL(s||t) = ln(5/3), KL(t||s) = 0.9 ln 1.8 + 0.1 ln 0.2."""
  ls = jnp.log(jnp.array([0.5, 0.5]))
  lt = jnp.log(jnp.array([0.9, 0.1]))
  rev, fwd = math.log(5 / 3), 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
  assert abs(float(L.kl_student_teacher(ls, lt)) - rev) < 1e-6
  assert abs(float(L.kl_teacher_student(ls, lt)) - fwd) < 1e-6
  assert abs(rev - fwd) > 0.1  # the example really tells the directions apart
  s = np.log(np.array([[[0.5, 0.5]]], np.float32))
  u = np.log(np.array([[[0.9, 0.1]]], np.float32))
  tok = np.zeros((1, 1), int)
  assert abs(float(_terms(s, u, tok, mode="full", alpha=1.0, eps_min=0.0)["loss"][0, 0]) - rev) < 1e-6
  assert abs(float(_terms(s, u, tok, mode="full", alpha=0.0, eps_min=0.0)["loss"][0, 0]) - fwd) < 1e-6


def test_jsd_alpha_endpoints_tend_to_the_kls():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    ls = jax.nn.log_softmax(jnp.asarray(rng.standard_normal(9)))
    lt = jax.nn.log_softmax(jnp.asarray(rng.standard_normal(9)))
    near0 = float(L.jsd_alpha(ls, lt, 1e-6))
    near1 = float(L.jsd_alpha(ls, lt, 1 - 1e-6))
    np.testing.assert_allclose(near0, float(L.kl_teacher_student(ls, lt)), rtol=1e-4)
    np.testing.assert_allclose(near1, float(L.kl_student_teacher(ls, lt)), rtol=1e-4)
  with pytest.raises(ValueError, match="0 < alpha < 1"):
    L.jsd_alpha(ls, lt, 1.0)


def test_sampled_surrogate_value_and_gradient():
  rng = np.random.default_rng(5)
  s, u = random_logits(rng, (2, 3, 7)), random_logits(rng, (2, 3, 7))
  tok = rng.integers(0, 7, (2, 3))
  cfg = L.DistillConfig(mode="sampled", eps_min=0.2)
  ps, pt = np_softmax(s), np_softmax(u)
  py = np.take_along_axis(ps, tok[..., None], -1)[..., 0]
  ty = np.maximum(np.take_along_axis(pt, tok[..., None], -1)[..., 0], 0.2 * py)
  d = np.log(py) - np.log(ty)
  got = L.token_terms(jnp.asarray(s), jnp.asarray(u), jnp.asarray(tok), cfg)["loss"]
  np.testing.assert_allclose(got, d, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda x: L.token_terms(x, jnp.asarray(u), jnp.asarray(tok), cfg)["loss"].sum())(
      jnp.asarray(s))
  onehot = np.eye(7)[tok]
  np.testing.assert_allclose(grad, d[..., None] * (onehot - ps), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="alpha=1.0"):
    L.DistillConfig(mode="sampled", alpha=0.5)


def test_metrics_kl_at_temperature_one_and_overlap():
  rng = np.random.default_rng(11)
  s, u = random_logits(rng, (1, 2, 13)), random_logits(rng, (1, 2, 13))
  out = _terms(s, u, np.zeros((1, 2), int), mode="topk", top_k=4, temperature=2.0)
  np.testing.assert_allclose(out["kl_t1"], np_kl(np_softmax(s), np_softmax(u)), rtol=1e-5)
  top_s = np.argsort(-s, -1)[..., :4]
  top_t = np.argsort(-u, -1)[..., :4]
  want = [[len(set(a) & set(b)) / 4 for a, b in zip(rs, rt)] for rs, rt in zip(top_s, top_t)]
  np.testing.assert_allclose(out["overlap"], want)


@pytest.mark.parametrize("kind", ["random", "ties", "minus_inf"])
def test_top_k_membership_is_the_set_top_k_returned(kind):
  """The comparison-built mask equals scattering top_k's ids, ties and -inf included (top_k keeps the lowest
  indices among equal values)."""
  rng = np.random.default_rng(5)
  if kind == "random":
    x = rng.standard_normal((6, 50)).astype(np.float32)
  elif kind == "ties":
    x = rng.integers(0, 4, (6, 50)).astype(np.float32)    # every row full of equal values
  else:
    x = np.full((6, 50), -np.inf, np.float32)
    x[:, :3] = rng.standard_normal((6, 3))                 # fewer finite entries than k
  k = 7
  _, ids = jax.lax.top_k(jnp.asarray(x), k)
  want = np.zeros(x.shape, bool)
  np.put_along_axis(want, np.asarray(ids), True, axis=-1)
  np.testing.assert_array_equal(np.asarray(L.top_k_membership(jnp.asarray(x), ids)), want)
  at = jnp.asarray(rng.integers(0, 50, (6, 9)))
  np.testing.assert_array_equal(np.asarray(L.top_k_membership(jnp.asarray(x), ids, at=at)),
                                np.take_along_axis(want, np.asarray(at), axis=-1))


@pytest.mark.parametrize("kind", ["random", "ties", "minus_inf", "small"])
def test_top_k_ids_equal_a_stable_sort(kind):
  """The two-stage top-k returns what a stable descending sort (lowest index first among equals) and
  jax.lax.top_k return, in the same order: rows of 1,000 (not a multiple of the group size) and 4,096."""
  rng = np.random.default_rng(7)
  k, v = 20, 1000
  if kind == "random":
    x = rng.standard_normal((5, 3, 4096)).astype(np.float32) * 4
    k = 100
  elif kind == "ties":
    x = rng.integers(0, 3, (8, v)).astype(np.float32)     # hundreds of entries tied at the k-th value
    x[0] = 0.0                                             # a row of one value
  elif kind == "minus_inf":
    x = np.full((4, v), -np.inf, np.float32)
    x[:, 990:] = rng.standard_normal((4, 10))              # fewer finite entries than k, at the row's end
    x[1, 5] = np.inf
  else:
    x = rng.standard_normal((4, 50)).astype(np.float32)   # below the two-stage threshold: one top_k
    k = 7
  got = np.asarray(jax.jit(L.top_k_ids, static_argnums=1)(jnp.asarray(x), k))
  np.testing.assert_array_equal(got, np.argsort(-x, axis=-1, kind="stable")[..., :k])
  np.testing.assert_array_equal(got, np.asarray(jax.lax.top_k(jnp.asarray(x), k)[1]))


# ---------------------------------------------------------------------------------------------------------
# Chunked scan vs dense; gradients vs jax.grad of an independent dense implementation.


def _dense_reference_loss(h_s, h_t, w, tokens, mask, k, alpha, eps_min):
  """Dense [B, R, V] implementation in probability space (written separately from the library)."""
  ps = jax.nn.softmax(h_s @ w, axis=-1)
  pt = jax.lax.stop_gradient(jax.nn.softmax(h_t @ w, axis=-1))
  ids = jnp.argsort(-jax.lax.stop_gradient(h_s @ w), axis=-1)[..., :k]
  top = jnp.sum(jax.nn.one_hot(ids, w.shape[1]), axis=-2)  # [B, R, V]
  qs = jnp.concatenate([jnp.take_along_axis(ps, ids, -1), jnp.sum(ps * (1 - top), -1, keepdims=True)], -1)
  qt = jnp.concatenate([jnp.take_along_axis(pt, ids, -1), jnp.sum(pt * (1 - top), -1, keepdims=True)], -1)
  qt = jnp.maximum(qt, eps_min * jax.lax.stop_gradient(qs))
  qt = qt / qt.sum(-1, keepdims=True)
  if alpha == 1.0:
    d = jnp.sum(qs * jnp.log(qs / qt), -1)
  else:
    d = jnp.sum(qt * jnp.log(qt / qs), -1)
  per_seq = jnp.sum(d * mask, -1) / jnp.maximum(mask.sum(-1), 1)
  return jnp.sum(per_seq) / jnp.sum(mask.sum(-1) > 0)


def _chunked_loss(h_s, h_t, w, tokens, mask, cfg):
  out = L.chunked_token_terms(lambda h: h @ w, lambda h: h @ w, h_s, h_t, tokens, cfg)
  ones = jnp.ones(mask.shape[0])
  m, wt = L.token_weights(out["logp"], mask, ones, ones, None, cfg)
  total, count = L.aggregate(out["loss"], m, wt, cfg.aggregation)
  return total / count


_chunked_value_and_grad = jax.jit(jax.value_and_grad(_chunked_loss, argnums=(0, 2)), static_argnums=5)


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_chunked_matches_dense_values_and_gradients(alpha):
  rng = np.random.default_rng(0)
  b, r, d, v = 2, 7, 6, 19
  h_s = jnp.asarray(rng.standard_normal((b, r, d)), jnp.float32)
  h_t = jnp.asarray(rng.standard_normal((b, r, d)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, v, (b, r)))
  mask = jnp.asarray([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]], jnp.float32)
  cfg = L.DistillConfig(top_k=5, alpha=alpha, chunk_size=3)  # 7 positions: padded to 9
  dense = L.token_terms(h_s @ w, h_t @ w, tokens, cfg)
  chunked = L.chunked_token_terms(lambda h: h @ w, lambda h: h @ w, h_s, h_t, tokens, cfg)
  for key in dense:
    np.testing.assert_allclose(chunked[key], dense[key], rtol=1e-5, atol=1e-6)
  ref_val, ref_grads = jax.jit(jax.value_and_grad(_dense_reference_loss, argnums=(0, 2)),
                               static_argnums=(5, 6, 7))(
      h_s, h_t, w, tokens, mask, 5, alpha, 0.2)
  val, grads = _chunked_value_and_grad(h_s, h_t, w, tokens, mask, cfg)
  np.testing.assert_allclose(val, ref_val, rtol=1e-5)
  for g, rg in zip(grads, ref_grads):
    np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-6)


def _fused_loss(h_s, h_t, w, tokens, mask, cfg, rollout=None, sample_weight=None):
  """Mean loss through fused_weighted_loss (gradient taken chunk by chunk in the forward pass)."""
  sw = jnp.ones(mask.shape[0]) if sample_weight is None else sample_weight
  scale, count = L.aggregation_scale(mask, cfg.aggregation)
  total, terms = L.fused_weighted_loss(lambda wt, h: h @ wt, w, h_s, lambda h: h @ w, h_t, tokens,
                                       scale * sw[:, None], rollout, cfg)
  return total / count, terms


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_fused_loss_matches_dense_values_and_gradients(alpha):
  rng = np.random.default_rng(0)
  b, r, d, v = 2, 7, 6, 19
  h_s, h_t = (jnp.asarray(rng.standard_normal((b, r, d)), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, v, (b, r)))
  mask = jnp.asarray([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]], jnp.float32)
  cfg = L.DistillConfig(top_k=5, alpha=alpha, chunk_size=3)  # 7 positions: padded to 9
  ref_val, ref_grads = jax.value_and_grad(_dense_reference_loss, argnums=(0, 2))(
      h_s, h_t, w, tokens, mask, 5, alpha, 0.2)
  (val, terms), grads = jax.jit(jax.value_and_grad(_fused_loss, argnums=(0, 2), has_aux=True),
                                static_argnums=5)(h_s, h_t, w, tokens, mask, cfg)
  np.testing.assert_allclose(val, ref_val, rtol=1e-5)
  for g, rg in zip(grads, ref_grads):
    np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-6)
  dense = L.token_terms(h_s @ w, h_t @ w, tokens, cfg)
  for key in dense:
    np.testing.assert_allclose(terms[key], dense[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
def test_fused_loss_equals_autodiff_with_weights_and_importance_ratios(aggregation):
  """Sample weights, rollout importance ratios (some clipped) and both aggregations: the fused gradient equals
  jax.grad through the rematerialised chunks."""
  rng = np.random.default_rng(3)
  b, r, d, v = 3, 5, 4, 13
  h_s, h_t = (jnp.asarray(rng.standard_normal((b, r, d)), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.standard_normal((d, v)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, v, (b, r)))
  mask = jnp.asarray(rng.uniform(size=(b, r)) > 0.3, jnp.float32).at[2].set(0.0)  # row 2: nothing to learn
  rollout = jnp.asarray(np.log(rng.uniform(0.01, 0.3, (b, r))), jnp.float32)
  sw = jnp.asarray([0.5, 2.0, 1.0], jnp.float32)
  cfg = L.DistillConfig(top_k=4, alpha=0.5, chunk_size=2, rollout_is=True, is_clip=2.0, aggregation=aggregation)

  def autodiff(h_s, w):
    out = L.chunked_token_terms(lambda h: h @ w, lambda h: h @ w, h_s, h_t, tokens, cfg)
    m, wt = L.token_weights(out["logp"], mask, jnp.ones(b), sw, rollout, cfg)
    total, count = L.aggregate(out["loss"], m, wt, cfg.aggregation)
    return total / count

  ref_val, ref_grads = jax.value_and_grad(autodiff, argnums=(0, 1))(h_s, w)
  (val, _), grads = jax.value_and_grad(lambda h, w: _fused_loss(h, h_t, w, tokens, mask, cfg, rollout, sw),
                                       argnums=(0, 1), has_aux=True)(h_s, w)
  assert float(val) > 0
  np.testing.assert_allclose(val, ref_val, rtol=1e-5)
  for g, rg in zip(grads, ref_grads):
    np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(grads[0][2]))) == 0.0  # the masked-out row gets no gradient


def test_fused_loss_propagates_a_nan_weight_and_needs_rollout_logprobs():
  h = jnp.ones((2, 3, 4))
  w = jnp.ones((4, 7))
  tokens = jnp.zeros((2, 3), jnp.int32)
  cfg = L.DistillConfig(top_k=2, chunk_size=2)
  coef = jnp.ones((2, 3)).at[1, 0].set(jnp.nan)
  total, _ = L.fused_weighted_loss(lambda wt, x: x @ wt, w, h, lambda x: x @ w, h, tokens, coef, None, cfg)
  assert np.isnan(float(total))  # so the train step counts a skipped update instead of dropping the row
  with pytest.raises(ValueError, match="rollout_logprobs"):
    L.fused_weighted_loss(lambda wt, x: x @ wt, w, h, lambda x: x @ w, h, tokens, jnp.ones((2, 3)), None,
                          L.DistillConfig(top_k=2, rollout_is=True))


def test_identical_teacher_gives_zero_loss_and_zero_gradient():
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.standard_normal((2, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 23)), jnp.float32)
  tokens = jnp.zeros((2, 5), jnp.int32)
  mask = jnp.ones((2, 5))
  for alpha in (1.0, 0.0, 0.5):
    cfg = L.DistillConfig(top_k=6, alpha=alpha, chunk_size=2)
    val, grads = _chunked_value_and_grad(h, h, w, tokens, mask, cfg)
    assert abs(float(val)) < 1e-7
    for g in grads:
      assert float(jnp.max(jnp.abs(g))) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# Weights and aggregation.


def test_token_weights_and_aggregation():
  logp = jnp.log(jnp.array([[0.5, 0.2, 0.9], [0.1, 0.3, 0.3]]))
  rollout = jnp.log(jnp.array([[0.1, 0.4, 0.9], [0.1, 0.3, 0.3]]))
  resp = jnp.array([[1, 1, 1], [1, 1, 0]])
  sd = jnp.array([1, 0])
  sw = jnp.array([2.0, 1.0])
  cfg = L.DistillConfig(rollout_is=True, is_clip=2.0)
  mask, weight = L.token_weights(logp, resp, sd, sw, rollout, cfg)
  np.testing.assert_allclose(mask, [[1, 1, 1], [0, 0, 0]])
  # ratios 5 -> clipped 2, 0.5, 1; times sample weight 2
  np.testing.assert_allclose(weight[0], [4.0, 1.0, 2.0], rtol=1e-6)
  values = jnp.array([[1.0, 2.0, 3.0], [7.0, 7.0, 7.0]])
  total, count = L.aggregate(values, mask, weight, "seq_mean")
  np.testing.assert_allclose([total, count], [(4 + 2 + 6) / 3, 1], rtol=1e-6)
  total, count = L.aggregate(values, mask, weight, "token_mean")
  np.testing.assert_allclose([total, count], [12.0, 3.0], rtol=1e-6)
  with pytest.raises(ValueError, match="rollout_logprobs"):
    L.token_weights(logp, resp, sd, sw, None, cfg)


def np_success_weights(success, a, b):
  success = np.asarray(success, bool)
  n = len(success)
  s = min(max(success.mean(), 1 / n), 1 - 1 / n)
  w = np.where(success, (1 - s) ** a, s ** b)
  return w / w.mean()


@pytest.mark.parametrize("success", [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 1, 0, 0, 0, 0]])
def test_success_rate_weights(success):
  got = L.success_rate_weights(jnp.asarray(success), a=1.0, b=0.5)
  np.testing.assert_allclose(got, np_success_weights(success, 1.0, 0.5), rtol=1e-6)
  np.testing.assert_allclose(np.mean(got), 1.0, rtol=1e-6)


def test_success_rate_weights_single_sample_and_invalid():
  np.testing.assert_allclose(L.success_rate_weights(jnp.array([0])), [1.0])
  got = L.success_rate_weights(jnp.array([1, 0, 0, 1]), valid=jnp.array([1, 1, 1, 0]))
  np.testing.assert_allclose(got, np.append(np_success_weights([1, 0, 0], 1.0, 1.0), 0.0), rtol=1e-6)


@pytest.mark.parametrize("kw,msg", [
    (dict(mode="nope"), "mode"), (dict(top_k=0), "top_k"), (dict(alpha=1.5), "alpha"),
    (dict(eps_min=1.0), "eps_min"), (dict(eps_max=0.5), "eps_max"), (dict(aggregation="x"), "aggregation"),
    (dict(temperature=0.0), "temperature"), (dict(chunk_size=0), "chunk_size")])
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    L.DistillConfig(**kw)
