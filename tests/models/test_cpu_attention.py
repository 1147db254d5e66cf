"""attn_impl="cpu_fused": the C++ attention kernel (resd_jax/kernels/cpu_attention.cc) against a float64 NumPy
reference (values) and autodiff of a dense float32 reference (gradients), on padded batches, grouped heads,
query offsets and sizes that do not fill the kernel's tiles; both the AVX512-BF16 build and the portable one;
and how the model chooses it."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.kernels import cpu_attention
from resd_jax.models import ModelConfig, Transformer
from resd_jax.models.attention import attention_impl

def _builds() -> bool:
  try:
    cpu_attention.KERNEL.load()
    return True
  except Exception:  # noqa: BLE001  (no compiler, say: nothing here can run)
    return False


pytestmark = pytest.mark.skipif(not _builds(), reason="the CPU attention kernel did not build here")
# The model uses the kernel only where its AVX512-BF16 path compiled; elsewhere the tests still check the
# portable path against the references.
needs_fast_path = pytest.mark.skipif(not cpu_attention.available(), reason="no AVX512-BF16 on this CPU")

# The kernel's own build, and one without AVX-512 (the portable code path), where the compiler can target it.
_MARCHES = ["native"] + (["x86-64-v3"] if jax.devices()[0].platform == "cpu" and
                         __import__("platform").machine() == "x86_64" else [])


def _bf16(x):
  return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def _inputs(b, t, h, kvh, q_offset, seed=0, pad=True, dh=64):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, t - q_offset, h, dh)).astype(np.float32) * 2
  k, v = (rng.standard_normal((b, t, kvh, dh)).astype(np.float32) for _ in range(2))
  mask = np.ones((b, t), bool)
  if pad and b > 1:
    mask[0, : t // 3] = False               # left padding
    mask[1, t - t // 4:] = False            # right padding
  if pad and b > 2:
    mask[2, t // 2: t // 2 + 5] = False     # a hole inside the row
  return q, k, v, mask


def _reference(q, k, v, mask, q_offset):
  """float64 softmax attention on the kernel's bf16 inputs; rows that see no key are None-masked."""
  b, tq, h, dh = q.shape
  t, kvh = k.shape[1], k.shape[2]
  qs = _bf16(q * dh ** -0.5)
  kk, vv = _bf16(k), _bf16(v)
  kk, vv = (np.repeat(x, h // kvh, axis=2) for x in (kk, vv))                 # [B, T, H, Dh]
  s = np.einsum("bthd,bshd->bhts", qs, kk)
  allowed = (np.arange(t)[None, :] <= (q_offset + np.arange(tq))[:, None])[None] & mask[:, None, :]
  s = np.where(allowed[:, None], s, -np.inf)
  seen = allowed.any(-1)                                                        # [B, Tq]
  s = s - np.where(seen[:, None, :, None], s.max(-1, keepdims=True), 0)
  p = np.where(allowed[:, None], np.exp(s), 0)
  p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
  return np.einsum("bhts,bshd->bthd", p, vv), seen


@pytest.mark.parametrize("march", _MARCHES)
@pytest.mark.parametrize("b,t,h,kvh,q_offset,dh", [(4, 150, 4, 2, 0, 64), (3, 70, 4, 4, 9, 64),
                                                   (1, 37, 8, 2, 0, 64), (2, 200, 2, 1, 131, 64),
                                                   (3, 100, 4, 2, 0, 128), (2, 50, 2, 2, 7, 256)])
def test_values_equal_float64_reference(march, b, t, h, kvh, q_offset, dh):
  q, k, v, mask = _inputs(b, t, h, kvh, q_offset, dh=dh)
  got = np.asarray(cpu_attention.cpu_causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                                      jnp.asarray(mask), q_offset=q_offset, march=march))
  want, seen = _reference(q, k, v, mask, q_offset)
  assert got.shape == want.shape and got.dtype == np.float32
  # The kernel rounds the unnormalised probabilities to bf16 before the PV sum (as the blocked path does):
  # a relative error of up to 2^-8 per term.
  np.testing.assert_allclose(got[seen], want[seen], atol=2e-2, rtol=2e-2)
  assert np.abs(got[seen] - want[seen]).mean() < 2e-3
  np.testing.assert_array_equal(got[~seen], 0.0)  # rows that see no key: zeros


def _dense(q, k, v, mask, q_offset):
  """Dense float32 attention in JAX on bf16-rounded inputs (for autodiff)."""
  b, tq, h, dh = q.shape
  t, kvh = k.shape[1], k.shape[2]
  r = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  qs = r(q * dh ** -0.5)
  kk, vv = (jnp.repeat(r(x), h // kvh, axis=2) for x in (k, v))
  s = jnp.einsum("bthd,bshd->bhts", qs, kk, precision="highest")
  allowed = (jnp.arange(t)[None, :] <= (q_offset + jnp.arange(tq))[:, None])[None] & mask[:, None, :]
  p = jax.nn.softmax(jnp.where(allowed[:, None], s, -1e30), axis=-1)
  return jnp.einsum("bhts,bshd->bthd", p, vv, precision="highest")


@pytest.mark.parametrize("march", _MARCHES)
@pytest.mark.parametrize("b,t,h,kvh,q_offset,dh", [(4, 150, 4, 2, 0, 64), (2, 90, 4, 1, 17, 64),
                                                   (3, 70, 4, 2, 5, 128)])
def test_gradients_equal_dense_autodiff(march, b, t, h, kvh, q_offset, dh):
  q, k, v, mask = (jnp.asarray(x) for x in _inputs(b, t, h, kvh, q_offset, seed=1, dh=dh))
  _, seen = _reference(*(np.asarray(x) for x in (q, k, v, mask)), q_offset)
  w = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape).astype(np.float32) * seen[:, :, None, None])

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

  kernel = loss(lambda q, k, v: cpu_attention.cpu_causal_attention(q, k, v, mask, q_offset=q_offset, march=march))
  dense = loss(lambda q, k, v: _dense(q, k, v, mask, q_offset))
  got = jax.jit(jax.grad(kernel, argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(dense, argnums=(0, 1, 2))(q, k, v)
  for name, g, w_ in zip("qkv", got, want):
    g, w_ = np.asarray(g), np.asarray(w_)
    assert g.dtype == np.float32, name
    scale = np.abs(w_).max()
    assert np.abs(g - w_).max() < 2e-2 * scale, (name, np.abs(g - w_).max(), scale)
    assert np.abs(g - w_).mean() < 2e-3 * scale, name


def test_rows_without_keys_pass_no_gradient():
  q, k, v, mask = (jnp.asarray(x) for x in _inputs(2, 80, 2, 1, 0))
  mask = mask.at[1].set(False)  # a row of padding only
  grads = jax.grad(lambda q, k, v: jnp.sum(cpu_attention.cpu_causal_attention(q, k, v, mask)),
                   argnums=(0, 1, 2))(q, k, v)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(np.asarray(g)[1], 0.0)
  # Left padding: the queries before the first real key get no gradient, nor do the padding keys.
  dq, dk, _ = grads
  np.testing.assert_array_equal(np.asarray(dq)[0, : 80 // 3], 0.0)
  np.testing.assert_array_equal(np.asarray(dk)[0, : 80 // 3], 0.0)


def test_vmap_and_bad_input():
  q, k, v, mask = (jnp.asarray(x) for x in _inputs(2, 40, 2, 1, 0))
  stacked = jax.vmap(lambda q: cpu_attention.cpu_causal_attention(q, k, v, mask))(jnp.stack([q, 2 * q]))
  for i, s in enumerate((1, 2)):
    np.testing.assert_array_equal(np.asarray(stacked[i]), np.asarray(cpu_attention.cpu_causal_attention(s * q, k, v, mask)))
  with pytest.raises(ValueError, match="do not end at the 40 keys"):
    cpu_attention.cpu_causal_attention(q[:, 1:], k, v, mask)
  with pytest.raises(ValueError, match="head_dim 32 is not supported"):
    cpu_attention.cpu_causal_attention(q[..., :32], k[..., :32], v[..., :32], mask)


def test_build_failure_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises((RuntimeError, OSError)):
    cpu_attention.KERNEL.build(out_dir=tmp_path)
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
  with pytest.raises(RuntimeError, match="compiling cpu_attention.cc failed"):
    cpu_attention.KERNEL.build(out_dir=tmp_path)
  assert not list(tmp_path.glob("*.so"))


@needs_fast_path
def test_unavailable_kernel_falls_back_to_blocked(monkeypatch):
  cfg = ModelConfig.preset("small", compute_dtype="bfloat16", num_layers=1)
  assert attention_impl(cfg) == "cpu_fused"
  monkeypatch.setattr(cpu_attention.KERNEL, "_state", {"error": "no compiler"})
  assert attention_impl(cfg) == "blocked"


@needs_fast_path
def test_auto_choice_and_config_errors():
  small = ModelConfig.preset("small", compute_dtype="bfloat16")
  assert attention_impl(small) == "cpu_fused"
  assert attention_impl(small.replace(compute_dtype="float32")) == "blocked"
  assert attention_impl(ModelConfig.preset("tiny", compute_dtype="bfloat16")) == "blocked"  # head_dim 16
  assert attention_impl(small.replace(attn_impl="blocked")) == "blocked"
  with jax.set_mesh(jax.make_mesh((8,), ("data",))):
    assert attention_impl(small) == "blocked"
    with pytest.raises(ValueError, match="attn_impl='cpu_fused' runs on the CPU backend outside a multi-device"):
      attention_impl(small.replace(attn_impl="cpu_fused"))
  with pytest.raises(ValueError, match="attn_impl='cpu_fused' needs compute_dtype bfloat16 and head_dim 64, 128"):
    ModelConfig.preset("small", attn_impl="cpu_fused", compute_dtype="float32")
  with pytest.raises(ValueError, match="attn_impl='cpu_fused' needs compute_dtype bfloat16 and head_dim 64, 128"):
    ModelConfig.preset("tiny", attn_impl="cpu_fused", compute_dtype="bfloat16")
  assert attention_impl(ModelConfig.preset("qwen3_0p6b", compute_dtype="bfloat16")) == "cpu_fused"  # head_dim 128


@needs_fast_path
def test_model_with_kernel_equals_blocked():
  """A 2-layer `small`-shaped model (head_dim 64) in bf16: logits and gradients with cpu_fused against blocked
  attention, on a left-padded batch with a response-only last layer (q_offset > 0 inside the model)."""
  cfg = ModelConfig.preset("small", num_layers=2, vocab_size=256, compute_dtype="bfloat16", attn_block=32)
  models = {impl: Transformer(cfg.replace(attn_impl=impl), rngs=nnx.Rngs(0)) for impl in ("blocked", "cpu_fused")}
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 256, (2, 96)))
  mask = np.ones((2, 96), bool)
  mask[1, :20] = False
  mask = jnp.asarray(mask)

  def loss(model):
    hidden, _ = model(tokens, attn_mask=mask, out_start=40)
    return jnp.sum(jnp.where(mask[:, 40:, None], model.logits(hidden), 0.0) ** 2) / 1e3, hidden

  out = {}
  for impl, model in models.items():
    (value, hidden), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    out[impl] = (value, np.asarray(hidden)[np.asarray(mask[:, 40:])], jax.tree.leaves(nnx.to_pure_dict(grads)))
  (v0, h0, g0), (v1, h1, g1) = out["blocked"], out["cpu_fused"]
  np.testing.assert_allclose(h1, h0, atol=3e-2, rtol=3e-2)
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-2)
  for a, b in zip(g0, g1):
    scale = max(np.abs(np.asarray(a)).max(), 1e-6)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 5e-2 * scale


def test_warns_once_when_build_fails(monkeypatch, tmp_path):
  monkeypatch.setattr(cpu_attention.KERNEL, "_state", {})
  monkeypatch.setenv("CXX", "false")
  monkeypatch.setenv("RESD_JAX_CACHE", str(tmp_path))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert not cpu_attention.available()
    assert not cpu_attention.available()
  assert len([w for w in caught if "cpu_attention kernel is unavailable, using blocked attention" in str(w.message)]) == 1


def test_builds_cover_both_code_paths():
  """The native build has the vector path where the CPU has AVX512-BF16; the x86-64-v3 build never does, so
  the tests above run the portable code too."""
  assert cpu_attention.KERNEL.has_simd("native") == cpu_attention.available()
  if "x86-64-v3" in _MARCHES:
    assert not cpu_attention.KERNEL.has_simd("x86-64-v3")
