"""attn_impl: the fused-kernel attention (rows rotated so that left padding moves behind the real tokens) equals
our blocked attention on padded batches. On CPU the fused path runs jax.nn's "xla" implementation; the GPU run
of "cudnn" against "blocked" is bench/gpu_train_step.sh's parity check. Also: the blocked path's hand-written
backward against autodiff of a dense reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.models import ModelConfig, Transformer
from resd_jax.models.attention import (attention_head_loop, attention_impl, causal_attention,
                                       cudnn_flash_supported, fused_causal_attention)

# Rows: left- and right-padded, unpadded, all padding, right-padded only.
_T = 13
_MASK = np.zeros((4, _T), bool)
_MASK[0, 3:10] = True
_MASK[1, :] = True
_MASK[3, :6] = True


@pytest.mark.parametrize("q_offset", [0, 5])
def test_fused_attention_equals_blocked_on_padded_rows(q_offset):
  rng = np.random.default_rng(0)
  b, h, kvh, dh = 4, 4, 2, 8
  q = jnp.asarray(rng.standard_normal((b, _T - q_offset, h, dh)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((b, _T, kvh, dh)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(_MASK)
  want = causal_attention(q, k, v, mask, block=4, dtype=jnp.float32, q_offset=q_offset)
  got = fused_causal_attention(q, k, v, mask, impl="xla", dtype=jnp.float32, q_offset=q_offset)
  real = _MASK[:, q_offset:]
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(got)).all()
  with pytest.raises(ValueError, match="do not end at the 13 keys"):
    fused_causal_attention(q[:, 1:], k, v, mask, impl="xla", dtype=jnp.float32, q_offset=q_offset)


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe"])
def test_model_with_fused_attention_equals_blocked(preset):
  """Hidden states at real positions and parameter gradients of a loss on them, full and with out_start."""
  blocked = Transformer(ModelConfig.preset(preset, attn_impl="blocked", attn_block=4), rngs=nnx.Rngs(0))
  fused = Transformer(ModelConfig.preset(preset, attn_impl="xla"), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  toks = jnp.asarray(rng.integers(1, 512, _MASK.shape), jnp.int32)
  mask = jnp.asarray(_MASK)
  weights = jnp.asarray(rng.standard_normal((*_MASK.shape, blocked.config.hidden_size)), jnp.float32)
  weights = weights * mask[..., None]  # the loss reads real positions only
  for start in (0, 7):
    hb, _ = blocked(toks, None, mask, out_start=start)
    hf, _ = fused(toks, None, mask, out_start=start)
    real = _MASK[:, start:]
    np.testing.assert_allclose(np.asarray(hf)[real], np.asarray(hb)[real], rtol=1e-5, atol=1e-5)

    def loss(m, start=start):
      return jnp.sum(m(toks, None, mask, out_start=start)[0] * weights[:, start:])

    gb, gf = nnx.grad(loss)(blocked), nnx.grad(loss)(fused)
    for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gb)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()) + 1e-7)


def test_auto_picks_cudnn_only_where_it_runs():
  assert cudnn_flash_supported("9.0", 128) and cudnn_flash_supported("8.0", 128) and cudnn_flash_supported("9.0", 256)
  assert not cudnn_flash_supported("7.5", 128)        # Turing (e.g. Colab's T4)
  assert not cudnn_flash_supported("8.6", 256)        # head_dim > 128 before Hopper
  assert not cudnn_flash_supported("9.0", 100)        # not a multiple of 8
  assert not cudnn_flash_supported(None, 128)         # not a CUDA device (e.g. ROCm)
  assert not cudnn_flash_supported("gfx90a", 128)


def test_attn_impl_config():
  assert attention_impl(ModelConfig.preset("tiny", compute_dtype="bfloat16")) == (
      "cudnn" if jax.default_backend() == "gpu" else "blocked")
  assert attention_impl(ModelConfig.preset("tiny", attn_impl="xla")) == "xla"
  with pytest.raises(ValueError, match="attn_impl='flash'; expected one of"):
    ModelConfig.preset("tiny", attn_impl="flash")
  with pytest.raises(ValueError, match="attn_impl='cudnn' needs compute_dtype bfloat16 or float16"):
    ModelConfig.preset("tiny", attn_impl="cudnn", compute_dtype="float32")


@pytest.mark.parametrize("head_loop", [False, True])
@pytest.mark.parametrize("block,q_offset", [(4, 0), (4, 5), (2, 0)])
def test_blocked_attention_gradients_equal_autodiff_of_a_dense_reference(block, q_offset, head_loop):
  """The blocked path's values and hand-written backward (float32 and bf16 compute), all (sequence, KV head)
  pairs at once and one at a time, against autodiff of a plain dense masked softmax attention in float32;
  (2, 0) has more blocks than max_unrolled_blocks, so it takes the scan."""
  rng = np.random.default_rng(2)
  b, h, kvh, dh = 4, 4, 2, 8
  q = jnp.asarray(rng.standard_normal((b, _T - q_offset, h, dh)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((b, _T, kvh, dh)), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.standard_normal(q.shape), jnp.float32) * jnp.asarray(_MASK[:, q_offset:, None, None])
  mask = jnp.asarray(_MASK)

  def dense(q, k, v):
    qg = q.reshape(b, -1, kvh, h // kvh, dh) * dh ** -0.5
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k)
    rows = q_offset + jnp.arange(q.shape[1])
    ok = (rows[:, None] >= jnp.arange(_T)[None]) & mask[:, None, :]                    # [B, Tq, T]
    p = jax.nn.softmax(jnp.where(ok[:, None, None], s, -1e30), axis=-1)
    return jnp.einsum("bkgts,bskd->btkgd", p, v).reshape(q.shape)

  def blocked(dtype):
    return lambda q, k, v: causal_attention(q, k, v, mask, block=block, dtype=dtype, max_unrolled_blocks=4,
                                            q_offset=q_offset, head_loop=head_loop)

  real = _MASK[:, q_offset:]
  np.testing.assert_allclose(np.asarray(blocked(jnp.float32)(q, k, v))[real], np.asarray(dense(q, k, v))[real],
                             rtol=1e-5, atol=1e-5)
  want = jax.grad(lambda *a: jnp.sum(dense(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)):
    got = jax.grad(lambda *a: jnp.sum(blocked(dtype)(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
      assert np.isfinite(np.asarray(g)).all()
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=tol * float(jnp.abs(r).max()), rtol=0)


def test_attn_head_loop_config():
  """auto: on for the CPU outside a multi-device mesh (a map over a sharded batch would gather it), off
  elsewhere; on / off force it; other values are refused. The loop's values are checked above and in
  test_model_with_head_loop_equals_without."""
  cpu = jax.default_backend() == "cpu"
  assert attention_head_loop(ModelConfig.preset("tiny")) == cpu
  assert attention_head_loop(ModelConfig.preset("tiny", attn_head_loop="on"))
  assert not attention_head_loop(ModelConfig.preset("tiny", attn_head_loop="off"))
  if jax.device_count() > 1:
    with jax.set_mesh(jax.make_mesh((jax.device_count(),), ("fsdp",))):
      assert not attention_head_loop(ModelConfig.preset("tiny"))
      assert attention_head_loop(ModelConfig.preset("tiny", attn_head_loop="on"))
  with jax.set_mesh(jax.make_mesh((1,), ("fsdp",), devices=jax.devices()[:1])):
    assert attention_head_loop(ModelConfig.preset("tiny")) == cpu
  with pytest.raises(ValueError, match="attn_head_loop='yes'; expected one of"):
    ModelConfig.preset("tiny", attn_head_loop="yes")


def test_model_with_head_loop_equals_without():
  """The whole model (GQA: 4 query heads over 2 KV heads) on padded rows: hidden states and parameter
  gradients with the (sequence, KV head) loop equal those without, in float32."""
  on, off = (Transformer(ModelConfig.preset("tiny", attn_impl="blocked", attn_block=4, attn_head_loop=x),
                         rngs=nnx.Rngs(0)) for x in ("on", "off"))
  assert on.config.num_heads > on.config.num_kv_heads > 1
  rng = np.random.default_rng(3)
  toks = jnp.asarray(rng.integers(1, 512, _MASK.shape), jnp.int32)
  mask = jnp.asarray(_MASK)
  weights = jnp.asarray(rng.standard_normal((*_MASK.shape, on.config.hidden_size)), jnp.float32) * mask[..., None]

  def loss(m):
    return jnp.sum(m(toks, None, mask)[0] * weights)

  np.testing.assert_allclose(np.asarray(on(toks, None, mask)[0]), np.asarray(off(toks, None, mask)[0]),
                             rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(nnx.grad(loss)(on)), jax.tree.leaves(nnx.grad(loss)(off))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))
