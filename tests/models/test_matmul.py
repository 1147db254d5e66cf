"""mixed_einsum: float32 = jnp.einsum exactly; bfloat16 backward in bfloat16 and close to autodiff's."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.models.matmul import batched_matmul_einsum, mixed_einsum

EQS = [("btd,dhk->bthk", (2, 5, 8), (8, 3, 4)), ("btkgd,bskd->bkgts", (2, 5, 2, 3, 4), (2, 6, 2, 4)),
       ("...d,vd->...v", (2, 3, 8), (11, 8))]


def _args(sx, sw, seed=0):
  kx, kw = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, sx), jax.random.normal(kw, sw)


@pytest.mark.parametrize("eq,sx,sw,batched", [e + (False,) for e in EQS] + [e + (True,) for e in EQS[:2]])
def test_float32_matches_plain_einsum(eq, sx, sw, batched):
  """float32 takes the hand-written backward too (for XLA's layouts): same maths, float32 rounding only."""
  x, w = _args(sx, sw)
  f = lambda x, w: jnp.sum(jnp.sin(mixed_einsum(eq, x, w, jnp.float32, batched)))  # noqa: E731
  g = lambda x, w: jnp.sum(jnp.sin(jnp.einsum(eq, x, w)))  # noqa: E731
  np.testing.assert_allclose(f(x, w), g(x, w), rtol=1e-5)
  for a, b in zip(jax.grad(f, (0, 1))(x, w), jax.grad(g, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eq,sx,sw", EQS[:2] + [("bkgts,bskd->btkgd", (2, 2, 3, 5, 6), (2, 6, 2, 4))])
def test_batched_matmul_einsum_equals_einsum(eq, sx, sw):
  x, w = _args(sx, sw, seed=2)
  np.testing.assert_allclose(batched_matmul_einsum(eq, x, w), jnp.einsum(eq, x, w), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="ellipsis"):
    batched_matmul_einsum("...d,vd->...v", x, w)


@pytest.mark.parametrize("eq,sx,sw,batched", [e + (False,) for e in EQS] + [e + (True,) for e in EQS[:2]])
def test_bfloat16_gradients_match_autodiff_to_bf16_rounding(eq, sx, sw, batched):
  x, w = _args(sx, sw, seed=1)

  def plain(x, w):
    return jnp.einsum(eq, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)

  out = mixed_einsum(eq, x, w, jnp.bfloat16, batched)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, plain(x, w), rtol=1e-5, atol=1e-5)  # same forward
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  got = jax.grad(loss(lambda x, w: mixed_einsum(eq, x, w, jnp.bfloat16, batched)), (0, 1))(x, w)
  ref = jax.grad(loss(plain), (0, 1))(x, w)
  for a, b in zip(got, ref):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02 * float(jnp.max(jnp.abs(b))))


def test_bfloat16_backward_dots_take_bfloat16_operands():
  """What the custom backward is for: no float32 x bfloat16 dot (XLA:CPU runs those in float32)."""
  x, w = _args((4, 6, 8), (8, 5))
  jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(mixed_einsum("btd,df->btf", x, w, jnp.bfloat16) ** 2),
                                  (0, 1)))(x, w)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  dots += [e for eqn in jaxpr.jaxpr.eqns for sub in jax.extend.core.jaxprs_in_params(eqn.params)
           for e in sub.eqns if e.primitive.name == "dot_general"]
  assert len(dots) >= 3  # forward + two transposes
  for e in dots:
    assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars), e


def test_bad_equations_are_rejected():
  x, w = _args((2, 3), (3, 4))
  with pytest.raises(ValueError, match="two operands and an explicit output"):
    mixed_einsum("ab,bc", x, w, jnp.bfloat16)
  with pytest.raises(ValueError, match="appears nowhere else"):
    mixed_einsum("ab,bc->c", x, w, jnp.bfloat16)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("eq,sx,sw,batched", [e + (False,) for e in EQS] + [EQS[1] + (True,)])
def test_precast_weights_give_the_same_values_and_gradients(eq, sx, sw, batched, dtype):
  """w_cast (the caller's w.astype(dtype)) changes where the cast happens, not the result: the output and both
  gradients equal the casting path's, and w's gradient keeps w's float32 dtype."""
  x, w = _args(sx, sw, seed=3)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  plain = loss(lambda x, w: mixed_einsum(eq, x, w, dtype, batched))
  precast = loss(lambda x, w: mixed_einsum(eq, x, w, dtype, batched, w_cast=jax.lax.stop_gradient(w).astype(dtype)))
  np.testing.assert_allclose(precast(x, w), plain(x, w), rtol=1e-6)
  for a, b in zip(jax.grad(precast, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_precast_weights_of_the_wrong_dtype_or_shape_are_refused():
  x, w = _args((2, 3, 8), (8, 5))
  with pytest.raises(ValueError, match="w_cast must be w.astype"):
    mixed_einsum("btd,df->btf", x, w, jnp.bfloat16, w_cast=w)                       # not cast
  with pytest.raises(ValueError, match="w_cast must be w.astype"):
    mixed_einsum("btd,df->btf", x, w, jnp.bfloat16, w_cast=w[:4].astype(jnp.bfloat16))
