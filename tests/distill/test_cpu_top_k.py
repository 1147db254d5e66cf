"""The C++ top-k kernel (resd_jax/kernels/cpu_top_k.cc) returns jax.lax.top_k's ids exactly: descending values,
ties lowest index first, on random, heavily tied, -inf and constant rows, both builds; and the loss's
`top_k_ids` uses it where it applies."""
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.distill import losses
from resd_jax.kernels import cpu_top_k

def _builds() -> bool:
  try:
    cpu_top_k.KERNEL.load()
    return True
  except Exception:  # noqa: BLE001  (no compiler, say)
    return False


pytestmark = pytest.mark.skipif(not _builds(), reason="the CPU top-k kernel did not build here")
_MARCHES = ["native"] + (["x86-64-v3"] if platform.machine() == "x86_64" else [])


def _rows(kind, shape, rng):
  if kind == "random":
    return rng.standard_normal(shape).astype(np.float32)
  if kind == "ties":  # a handful of distinct values: long runs of ties at the k-th value
    return rng.integers(0, 6, shape).astype(np.float32)
  if kind == "minus_inf":  # fewer finite entries than k in some rows
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.97] = -np.inf
    x[0] = -np.inf
    return x
  if kind == "constant":
    return np.full(shape, 0.5, np.float32)
  if kind == "increasing":  # the threshold rises with every entry: the buffer is cut many times
    return np.broadcast_to(np.arange(shape[-1], dtype=np.float32), shape).copy()
  raise ValueError(kind)


@pytest.mark.parametrize("march", _MARCHES)
@pytest.mark.parametrize("kind", ["random", "ties", "minus_inf", "constant", "increasing"])
@pytest.mark.parametrize("shape,k", [((3, 5, 4099), 100), ((7, 300), 1), ((4, 37), 37), ((2, 33), 20)])
def test_ids_equal_lax_top_k(march, kind, shape, k):
  x = jnp.asarray(_rows(kind, shape, np.random.default_rng(len(shape) + k)))
  got = jax.jit(lambda x: cpu_top_k.top_k_ids(x, k, march=march))(x)
  want = jax.lax.top_k(x, k)[1]
  assert got.shape == want.shape and got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bad_input_and_vmap():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 50)).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(jax.vmap(lambda r: cpu_top_k.top_k_ids(r, 7))(x)),
                                np.asarray(jax.lax.top_k(x, 7)[1]))
  with pytest.raises(ValueError, match="must be float32"):
    cpu_top_k.top_k_ids(x.astype(jnp.bfloat16), 3)
  with pytest.raises(ValueError, match=r"k=51 must be in \[1, 50\]"):
    cpu_top_k.top_k_ids(x, 51)


@pytest.mark.skipif(not cpu_top_k.available(), reason="no AVX-512 on this CPU: the loss keeps XLA's top_k")
def test_loss_top_k_ids_uses_the_kernel_on_one_cpu(monkeypatch):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 3200)).astype(np.float32))
  calls = []
  real = cpu_top_k.top_k_ids
  monkeypatch.setattr(cpu_top_k, "top_k_ids", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  got = losses.top_k_ids(jax.lax.stop_gradient(x), 100)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.lax.top_k(x, 100)[1]))
  assert calls
  calls.clear()
  with jax.set_mesh(jax.make_mesh((8,), ("data",))):  # a multi-device mesh: the XLA version
    got = jax.jit(lambda x: losses.top_k_ids(x, 100))(x)
  assert not calls
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.lax.top_k(x, 100)[1]))
  monkeypatch.setenv("RESD_JAX_CPU_KERNELS", "0")
  losses.top_k_ids(x, 100)
  assert not calls


def test_inside_a_differentiated_loss():
  """The kernel sits on stop-gradient logits inside the loss; the gradient still flows through the values."""
  rng = np.random.default_rng(2)
  s = jnp.asarray(rng.standard_normal((2, 3, 4000)).astype(np.float32))
  u = jnp.asarray(rng.standard_normal((2, 3, 4000)).astype(np.float32))
  tokens = jnp.zeros((2, 3), jnp.int32)
  cfg = losses.DistillConfig(top_k=100)
  grad_kernel = jax.grad(lambda s: jnp.sum(losses.token_terms(s, u, tokens, cfg)["loss"]))(s)
  with jax.set_mesh(jax.make_mesh((8,), ("data",))):
    grad_xla = jax.jit(jax.grad(lambda s: jnp.sum(losses.token_terms(s, u, tokens, cfg)["loss"])))(s)
  np.testing.assert_allclose(np.asarray(grad_kernel), np.asarray(grad_xla), rtol=1e-6, atol=1e-7)


def test_builds_cover_both_code_paths():
  assert cpu_top_k.KERNEL.has_simd("native") == cpu_top_k.available()
  if "x86-64-v3" in _MARCHES:
    assert not cpu_top_k.KERNEL.has_simd("x86-64-v3")
