"""Decoder-only transformer in Flax NNX: Qwen3, Qwen2/2.5, Llama 3 and SmolLM2 (and Qwen3-MoE via moe.py).

`Transformer(cfg, rngs=...)` holds the parameters; its layers are stacked on a leading `layers` axis and run
with `jax.lax.scan`, so compile time does not grow with depth (`scan_layers=False` runs them in a Python loop
instead: no stacked activation buffers, compile time linear in depth; the parameters are the same either way). The forward
returns final-normed hidden states; `logits(hidden)` is separate so losses can work on chunks of positions and
never hold [B, L, V] at once.

Left-padded batches are exact: positions are derived from the padding mask and padded keys are masked, so a
real token's output does not depend on how much padding precedes it.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resd_jax.kernels import cpu_attention
from resd_jax.kernels.build import on_one_cpu
from resd_jax.models.config import ModelConfig
from resd_jax.models.kv_cache import KVCache
from resd_jax.models.matmul import batched_matmul_einsum, mixed_einsum
from resd_jax.parallel import sharding as shd

# A large finite negative: fully masked rows (padding queries) stay finite instead of NaN.
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
_F32 = jnp.float32


def _dot(eq: str, x: jax.Array, w: jax.Array, dtype, batched: bool = False, w_cast=None) -> jax.Array:
  """einsum with inputs in the compute dtype and float32 accumulation/output (backward too: see matmul.py)."""
  return mixed_einsum(eq, x, w, dtype, batched, w_cast)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  x = x.astype(_F32)
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(_F32)


# ------------------------------------------------------------------------------------------------ rotary
def inv_frequencies(cfg: ModelConfig) -> jax.Array:
  """[Dh/2] rotary frequencies, with Llama 3 scaling when configured."""
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=_F32) / d))
  if cfg.rope_scaling is None:
    return inv
  s = dict(cfg.rope_scaling)
  factor, lo, hi, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > old / lo, inv / factor, inv)      # long wavelengths: divide by factor
  smooth = (old / wavelen - lo) / (hi - lo)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old / hi) & (wavelen <= old / lo)
  return jnp.where(medium, blended, scaled)


def rotary_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, T, Dh] for integer positions [B, T]."""
  ang = positions.astype(_F32)[..., None] * inv_frequencies(cfg)   # [B, T, Dh/2]
  ang = jnp.concatenate([ang, ang], axis=-1)                        # [B, T, Dh]
  return jnp.cos(ang), jnp.sin(ang)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, H, Dh] rotated by (cos, sin) [B, T, Dh] (half-split convention)."""
  half = x.shape[-1] // 2
  rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


# ------------------------------------------------------------------------------------------------ attention
def causal_attention(q, k, v, kv_mask, *, block: int, dtype, max_unrolled_blocks: int = 16,
                     q_offset: int = 0, head_loop: bool = False) -> jax.Array:
  """Causal self-attention computed in query blocks.

  q [B, Tq, H, Dh] holds the queries of positions q_offset .. T-1 (Tq = T - q_offset; all of them by default),
  k/v [B, T, KVH, Dh], kv_mask [B, T] (False = padding). Returns [B, Tq, H, Dh] float32.

  Up to `max_unrolled_blocks` blocks, the blocks are unrolled and each attends only to the keys at or before
  its last row, skipping the masked upper triangle (about 2x fewer FLOPs). Beyond that (long contexts), the
  blocks run under `jax.lax.scan` with each block rematerialised, so the backward pass keeps one block's
  [blk, T] probabilities alive instead of all of them; that costs the triangle skip but bounds memory.
  For compute dtypes up to 4 bytes each block has a hand-written backward (`_block_softmax_attention`).

  head_loop=True computes one (sequence, KV head) pair at a time, under `jax.lax.map`: a block's float32
  scores are then [tb, G, S] (2.6 MB for 256 rows, G = 2, S = 1,280), small enough for a CPU's caches, where
  those of all pairs at once ([B, KVH, tb, G, S]) go through memory on every pass the masking and softmax make
  over them. Same values; a CPU setting (ModelConfig.attn_head_loop), worth 5-8% of the `small` preset's
  forward on 2 cores (bench/RESULTS.md).
  """
  b, tq, h, dh = q.shape
  t, kvh = k.shape[1], k.shape[2]
  if q_offset + tq != t:
    raise ValueError(f"causal_attention: {tq} queries from position {q_offset} do not end at the {t} keys")
  g = h // kvh
  q = (q * (dh ** -0.5)).reshape(b, tq, kvh, g, dh)
  blocks = functools.partial(_blocked_attention, block=block, dtype=dtype, max_unrolled_blocks=max_unrolled_blocks,
                             q_offset=q_offset)
  if not head_loop:
    return blocks(q, k, v, kv_mask).reshape(b, tq, h, dh)
  # [B, Tq, KVH, G, Dh] -> B*KVH items of [1, Tq, 1, G, Dh]; k, v [B, T, KVH, Dh] -> [1, T, 1, Dh] each.
  qs = jnp.moveaxis(q, 2, 1).reshape(b * kvh, 1, tq, 1, g, dh)
  ks, vs = (jnp.moveaxis(x, 2, 1).reshape(b * kvh, 1, t, 1, dh) for x in (k, v))
  masks = jnp.repeat(kv_mask, kvh, axis=0)[:, None]                             # [B*KVH, 1, T]
  outs = jax.lax.map(lambda xs: blocks(*xs), (qs, ks, vs, masks))               # [B*KVH, 1, Tq, 1, G, Dh]
  return jnp.moveaxis(outs.reshape(b, kvh, tq, g, dh), 1, 2).reshape(b, tq, h, dh)


def _blocked_attention(q, k, v, kv_mask, *, block: int, dtype, max_unrolled_blocks: int, q_offset: int):
  """causal_attention's blocks: q [B, Tq, KVH, G, Dh] (pre-scaled), k/v [B, T, KVH, Dh] -> [B, Tq, KVH, G, Dh]."""
  b, tq = q.shape[:2]
  t = k.shape[1]
  n_blocks = -(-tq // block)

  def one_block(qb, start, key_len):
    rows = start + jnp.arange(qb.shape[1])
    allowed = rows[:, None] >= jnp.arange(key_len)[None, :]                    # [tb, key_len]
    allowed = (allowed[None] & kv_mask[:, None, :key_len])[:, None, :, None]  # [B, 1, tb, 1, key_len]
    if jnp.dtype(dtype).itemsize <= 4:
      return _block_softmax_attention(qb, k[:, :key_len], v[:, :key_len], allowed, jnp.dtype(dtype))
    s = _dot("btkgd,bskd->bktgs", qb, k[:, :key_len], dtype, batched=True)     # [B, KVH, tb, G, key_len]
    p = jax.nn.softmax(jnp.where(allowed, s, _NEG), axis=-1)
    return _dot("bktgs,bskd->btkgd", p, v[:, :key_len], dtype, batched=True)   # [B, tb, KVH, G, Dh]

  if n_blocks <= max_unrolled_blocks:
    outs = [one_block(q[:, i:min(tq, i + block)], q_offset + i, q_offset + min(tq, i + block))
            for i in range(0, tq, block)]
    return jnp.concatenate(outs, axis=1)
  pad = n_blocks * block - tq
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
  qs = jnp.moveaxis(qp.reshape(b, n_blocks, block, *q.shape[2:]), 1, 0)        # [nb, B, blk, KVH, G, Dh]
  body = jax.checkpoint(lambda _, xs: (None, one_block(xs[0], xs[1], t)))
  starts = q_offset + jnp.arange(n_blocks) * block
  _, outs = jax.lax.scan(body, None, (qs, starts))                             # [nb, B, blk, KVH, G, Dh]
  return jnp.moveaxis(outs, 0, 1).reshape(b, n_blocks * block, *q.shape[2:])[:, :tq]


def _masked_scores(q, k, allowed, dtype):
  """Float32 scores [B, KVH, tb, G, S] of q [B, tb, KVH, G, Dh] by k [B, S, KVH, Dh], _NEG where not allowed."""
  return jnp.where(allowed, batched_matmul_einsum("btkgd,bskd->bktgs", q.astype(dtype), k.astype(dtype)), _NEG)


# One query block's attention, softmax(masked q k^T) v, with a hand-written backward in the style of flash
# attention: under differentiation the forward keeps only per-row statistics and the backward recomputes the
# probabilities from them. With autodiff, XLA:CPU ran the [B, KVH, tb, G, keys] float32 elementwise work of the
# softmax's transpose with selects and layout copies; this made the `small` preset's student forward + backward
# 7% faster (bf16, interleaved A/B: 1.484 -> 1.383 s). Without differentiation (the teacher) the plain softmax
# runs, which kept the forward as fast as before.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _block_softmax_attention(q, k, v, allowed, dtype):
  """q [B, tb, KVH, G, Dh] (pre-scaled), k/v [B, S, KVH, Dh], allowed [B, 1, tb, 1, S] bool -> [B, tb, KVH, G, Dh].

  Scores are laid out [B, KVH, tb, G, S]: the order in which the batched matmul of q [B, tb, KVH, G, Dh] by k
  produces them, so no score-sized transpose is needed on the way in or out (see the module's batched matmul).
  """
  p = jax.nn.softmax(_masked_scores(q, k, allowed, dtype), axis=-1)
  return batched_matmul_einsum("bktgs,bskd->btkgd", p.astype(dtype), v.astype(dtype))


def _block_attention_fwd(q, k, v, allowed, dtype):
  s = _masked_scores(q, k, allowed, dtype)
  m = jnp.max(s, axis=-1, keepdims=True)                                          # [B, KVH, tb, G, 1]
  e = jnp.exp(s - m)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  out = batched_matmul_einsum("bktgs,bskd->btkgd", e.astype(dtype), v.astype(dtype)) / jnp.moveaxis(denom, 1, 2)
  # The row max and 1/denominator rather than their log-sum-exp: for an all-padding row (every score _NEG)
  # m + log(denom) would round back to _NEG and the recomputed probabilities would be 1 instead of 1/S.
  return out, (q, k, v, allowed, out, m, 1.0 / denom)


def _block_attention_bwd(dtype, res, g):
  q, k, v, allowed, out, m, inv_denom = res
  qc, kc, vc, gc = q.astype(dtype), k.astype(dtype), v.astype(dtype), g.astype(dtype)
  p = jnp.exp(_masked_scores(qc, kc, allowed, dtype) - m) * inv_denom          # [B, KVH, tb, G, S]
  dp = batched_matmul_einsum("btkgd,bskd->bktgs", gc, vc)
  row = jnp.moveaxis(jnp.sum(g * out, axis=-1), 1, 2)[..., None]                   # [B, KVH, tb, G, 1]
  ds = (p * (dp - row)).astype(dtype)
  dq = batched_matmul_einsum("bktgs,bskd->btkgd", ds, kc)
  # dk and dv with the [B, KVH, tb, G, S] operand on the right: the matmul then reads it as laid out, and only
  # the small [.., Dh] operands are transposed.
  dk = batched_matmul_einsum("btkgd,bktgs->bskd", qc, ds)
  dv = batched_matmul_einsum("btkgd,bktgs->bskd", gc, p.astype(dtype))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_block_softmax_attention.defvjp(_block_attention_fwd, _block_attention_bwd)


def fused_causal_attention(q, k, v, kv_mask, *, impl: str, dtype, q_offset: int = 0) -> jax.Array:
  """Causal self-attention through `jax.nn.dot_product_attention` (impl "cudnn": the fused flash kernel of
  NVIDIA GPUs, which never materialises [T, T] scores; "xla": JAX's reference). Same arguments and result as
  `causal_attention`.

  Those kernels take a causal mask and right padding, while our rows are left-padded (and right-padded after
  the response). So each row is rotated until its first real token sits at position 0, which moves all its
  padding behind the real tokens where causality already hides it from every real query; the result is rotated
  back. That is exact for rows whose kv_mask is one contiguous run of True, which is what `Batch` builds
  (left-padded prompt, response, right padding); a row with interior holes (masked tokens between real ones)
  would attend to them, so such masks need attn_impl="blocked". Outputs at padding positions are unspecified
  (finite) and never used. (The sampler's prefill and decode go through the KV cache's attention instead.)
  With q_offset > 0 the queries are zero-padded in front to all T positions and the result sliced.
  """
  b, tq, h, dh = q.shape
  t = k.shape[1]
  if q_offset + tq != t:
    raise ValueError(f"fused_causal_attention: {tq} queries from position {q_offset} do not end at the {t} keys")
  if q_offset:
    q = jnp.pad(q, ((0, 0), (q_offset, 0), (0, 0), (0, 0)))
  shift = jnp.argmax(kv_mask, axis=1).astype(jnp.int32)                        # [B] leading padding
  pos = jnp.arange(t, dtype=jnp.int32)[None]

  def rotate(x, by):  # x [B, T, N, Dh]; out[b, i] = x[b, (i + by[b]) % T]
    return jnp.take_along_axis(x, ((pos + by[:, None]) % t)[:, :, None, None], axis=1)

  q, k, v = (rotate(x.astype(dtype), shift) for x in (q, k, v))                # cast first: half the bytes moved
  out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)   # [B, T, H, Dh]
  return rotate(out, -shift)[:, q_offset:].astype(_F32)


def cudnn_flash_supported(compute_capability: str | None, head_dim: int) -> bool:
  """Whether cuDNN's fused attention takes this GPU and head size: an NVIDIA GPU of compute capability 8.0
  (Ampere) or newer (None: not a CUDA device), head_dim a multiple of 8 up to 128 (256 from Hopper, 9.0)."""
  try:
    major, minor = (int(x) for x in str(compute_capability).split(".")[:2])
  except ValueError:
    return False
  return (major, minor) >= (8, 0) and head_dim % 8 == 0 and head_dim <= (256 if major >= 9 else 128)


def attention_impl(cfg: ModelConfig) -> str:
  """The full-sequence attention cfg.attn_impl resolves to on the default backend: `auto` is cudnn on an
  NVIDIA GPU that supports it (see cudnn_flash_supported) with bf16/fp16 compute; cpu_fused on the CPU outside
  a multi-device mesh with bf16 compute and a head size the kernel takes, if it compiles here; else blocked."""
  if cfg.attn_impl == "cpu_fused" and not on_one_cpu():
    raise ValueError("attn_impl='cpu_fused' runs on the CPU backend outside a multi-device mesh; "
                     "use attn_impl='auto' or 'blocked' here")
  if cfg.attn_impl != "auto":
    return cfg.attn_impl
  if on_one_cpu() and cpu_attention.supports(cfg.head_dim, cfg.compute_dtype) and cpu_attention.available():
    return "cpu_fused"
  if jax.default_backend() != "gpu" or cfg.compute_dtype not in ("bfloat16", "float16"):
    return "blocked"
  capability = getattr(jax.devices()[0], "compute_capability", None)
  return "cudnn" if cudnn_flash_supported(capability, cfg.head_dim) else "blocked"


def attention_head_loop(cfg: ModelConfig) -> bool:
  """Whether blocked attention loops over (sequence, KV head) pairs: cfg.attn_head_loop, where `auto` is on
  for the CPU backend outside a mesh of more than one device."""
  if cfg.attn_head_loop != "auto":
    return cfg.attn_head_loop == "on"
  return on_one_cpu()


def cached_attention(q, k_new, v_new, new_mask, k_old, v_old, old_mask, *, dtype) -> jax.Array:
  """Attention of T new queries over the S cached keys plus the T new keys (causal among the new).

  q [B, T, H, Dh]; k_new/v_new [B, T, KVH, Dh]; new_mask [B, T]; k_old/v_old [B, S, KVH, Dh]; old_mask [B, S].
  One softmax over the concatenated scores; the cache itself is never concatenated or copied.
  """
  b, t, h, dh = q.shape
  kvh = k_new.shape[2]
  s_len = k_old.shape[1]
  q = (q * (dh ** -0.5)).reshape(b, t, kvh, h // kvh, dh)
  s_old = _dot("btkgd,bskd->bkgts", q, k_old, dtype)                         # [B, KVH, G, T, S]
  s_old = jnp.where(old_mask[:, None, None, None, :], s_old, _NEG)
  s_new = _dot("btkgd,bskd->bkgts", q, k_new, dtype)                         # [B, KVH, G, T, T]
  allowed = (jnp.arange(t)[:, None] >= jnp.arange(t)[None, :])[None, None, None]
  s_new = jnp.where(allowed & new_mask[:, None, None, None, :], s_new, _NEG)
  p = jax.nn.softmax(jnp.concatenate([s_old, s_new], axis=-1), axis=-1)
  out = _dot("bkgts,bskd->btkgd", p[..., :s_len], v_old, dtype) + _dot("bkgts,bskd->btkgd", p[..., s_len:], v_new, dtype)
  return out.reshape(b, t, h, dh)


# ------------------------------------------------------------------------------------------------ layers
def _param(rngs: nnx.Rngs, shape, axes, dtype, std=0.02):
  return nnx.Param((std * jax.random.normal(rngs.params(), shape, _F32)).astype(dtype), axes=axes)


def _ones(shape, axes, dtype):
  return nnx.Param(jnp.ones(shape, dtype), axes=axes)


def _zeros(shape, axes, dtype):
  return nnx.Param(jnp.zeros(shape, dtype), axes=axes)


class DecoderLayers(nnx.Module):
  """All decoder layers, each parameter stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    L, D, H, K, Dh, F = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.intermediate_size)
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = _ones((L, D), ("layers", None), pd)
    self.q = _param(rngs, (L, D, H, Dh), ("layers", "embed", "heads", None), pd)
    self.k = _param(rngs, (L, D, K, Dh), ("layers", "embed", "kv_heads", None), pd)
    self.v = _param(rngs, (L, D, K, Dh), ("layers", "embed", "kv_heads", None), pd)
    self.o = _param(rngs, (L, H, Dh, D), ("layers", "heads", None, "embed"), pd)
    if cfg.qkv_bias:
      self.q_bias = _zeros((L, H, Dh), ("layers", "heads", None), pd)
      self.k_bias = _zeros((L, K, Dh), ("layers", "kv_heads", None), pd)
      self.v_bias = _zeros((L, K, Dh), ("layers", "kv_heads", None), pd)
    if cfg.qk_norm:
      self.q_norm = _ones((L, Dh), ("layers", None), pd)
      self.k_norm = _ones((L, Dh), ("layers", None), pd)
    self.mlp_norm = _ones((L, D), ("layers", None), pd)
    if cfg.num_experts:
      from resd_jax.models import moe  # noqa: PLC0415  (MoE parameters live with the MoE code)
      moe.init_params(self, cfg, rngs)
    else:
      self.gate = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), pd)
      self.up = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), pd)
      self.down = _param(rngs, (L, F, D), ("layers", "mlp", "embed"), pd)

  def arrays(self) -> dict[str, jax.Array]:
    """The stacked parameter arrays by name (what `jax.lax.scan` slices per layer)."""
    return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


def decoder_layer(cfg: ModelConfig, p: dict[str, jax.Array], x, cos, sin, attn_mask, cache_kv=None, q_start: int = 0):
  """One pre-norm decoder layer. x [B, T, D] float32. Returns (x, (k, v), aux) with k/v [B, T, KVH, Dh].

  cache_kv: None, a dense cache's (k, v, mask), or an attention callable (q, k, v, attn_mask) -> [B, T, H, Dh]
  float32 that owns its cache (the paged engine's, resd_jax/sampling/paged_forward.py).
  q_start > 0 (no cache): keys and values from all T positions, everything else (queries, attention output,
  MLP) only for positions q_start..T-1, so the returned x is [B, T - q_start, D].

  Named scopes (`qkv`, `attention`, `attn_out`, `mlp`) label the ops in profiles (bench/profile_step.py).
  """
  cd = jnp.dtype(cfg.compute_dtype)
  with jax.named_scope("qkv"):
    q, k, v, x = _qkv(cfg, p, x, cos, sin, q_start)
  with jax.named_scope("attention"):
    a = _attend(cfg, q, k, v, attn_mask, cache_kv, q_start)
  with jax.named_scope("attn_out"):
    x = x + _dot("bthk,hkd->btd", a, p["o"], cd)
    x = shd.constrain(x, ("batch", None, None))
  with jax.named_scope("mlp"):
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    aux = {}
    if cfg.num_experts:
      from resd_jax.models import moe  # noqa: PLC0415
      y, aux = moe.moe_mlp(cfg, p, h, attn_mask[:, q_start:])
    else:
      g = _dot("btd,df->btf", h, p["gate"], cd)
      u = _dot("btd,df->btf", h, p["up"], cd)
      y = _dot("btf,fd->btd", jax.nn.silu(g) * u, p["down"], cd)
    x = shd.constrain(x + y, ("batch", None, None))
  return x, (k, v), aux


def _qkv(cfg: ModelConfig, p: dict[str, jax.Array], x, cos, sin, q_start: int):
  """Normed, projected, rotated q [B, Tq, H, Dh] and k, v [B, T, KVH, Dh], and x cut to the query rows."""
  cd = jnp.dtype(cfg.compute_dtype)
  h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  if q_start:
    x, cos_q, sin_q = x[:, q_start:], cos[:, q_start:], sin[:, q_start:]
  else:
    cos_q, sin_q = cos, sin
  q = _dot("btd,dhk->bthk", h[:, q_start:] if q_start else h, p["q"], cd)
  k = _dot("btd,dhk->bthk", h, p["k"], cd)
  v = _dot("btd,dhk->bthk", h, p["v"], cd)
  if cfg.qkv_bias:
    q, k, v = q + p["q_bias"].astype(_F32), k + p["k_bias"].astype(_F32), v + p["v_bias"].astype(_F32)
  if cfg.qk_norm:
    q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q, k = apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos, sin)
  return q, k, v, x


def _attend(cfg: ModelConfig, q, k, v, attn_mask, cache_kv, q_start: int):
  """Causal attention of q over k, v (and a cache's keys and values when given): [B, Tq, H, Dh] float32."""
  cd = jnp.dtype(cfg.compute_dtype)
  if cache_kv is None:
    impl = attention_impl(cfg)
    if impl == "blocked":
      return causal_attention(q, k, v, attn_mask, block=cfg.attn_block, dtype=cd,
                              max_unrolled_blocks=cfg.attn_max_unrolled_blocks, q_offset=q_start,
                              head_loop=attention_head_loop(cfg))
    if impl == "cpu_fused":
      return cpu_attention.cpu_causal_attention(q, k, v, attn_mask, q_offset=q_start)
    return fused_causal_attention(q, k, v, attn_mask, impl=impl, dtype=cd, q_offset=q_start)
  if q_start:
    raise ValueError("decoder_layer: q_start is for full forwards, not for decoding with a cache")
  if callable(cache_kv):  # the caller's attention (the paged rollout engine): (q, k, v, mask) -> [B, T, H, Dh]
    return cache_kv(q, k, v, attn_mask)
  k_old, v_old, old_mask = cache_kv
  return cached_attention(q, k, v, attn_mask, k_old, v_old, old_mask, dtype=cd)


def unrolled_layers(body, x, xs, num_layers: int):
  """`jax.lax.scan(body, x, xs)` as a Python loop over the leading (layers) axis of xs; outputs are stacked.

  Unlike the scan, the loop leaves XLA no stacked per-layer residual buffers for the backward pass (buffers it
  zero-fills and then updates slice by slice). On XLA:CPU the `small` preset's student (B=4, T=768, bf16)
  forward + backward took 2.83 s instead of 3.35 s (median of 5, interleaved) and compiled in 10.3 s instead
  of 7.6 s; in the whole SD step the difference was within run-to-run noise (bench/RESULTS.md).
  """
  ys = []
  for i in range(num_layers):
    x, y = body(x, jax.tree.map(lambda a, i=i: a[i], xs))
    ys.append(y)
  return x, jax.tree.map(lambda *parts: jnp.stack(parts), *ys)


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nnx.Module):
  """Decoder-only LM. `model(tokens, positions, attn_mask, cache) -> (hidden, cache)`; `model.logits(hidden)`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.final_norm = _ones((cfg.hidden_size,), (None,), pd)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, attn_mask: jax.Array | None = None,
               cache: KVCache | None = None, out_start: int = 0) -> tuple[jax.Array, KVCache | None]:
    """tokens [B, T] int32; positions [B, T] (derived from attn_mask when None); attn_mask [B, T] bool.

    Returns final-normed hidden states [B, T, D] float32 and the updated cache (None without one).
    out_start > 0 (without a cache): only the hidden states of positions out_start..T-1, [B, T - out_start, D];
    a dense model then runs its last layer's queries, attention output and MLP on those positions only.
    """
    hidden, cache, _ = self.forward_with_aux(tokens, positions, attn_mask, cache, out_start)
    return hidden, cache

  def forward_with_aux(self, tokens, positions=None, attn_mask=None, cache=None, out_start: int = 0):
    """Like `__call__`, plus a dict of per-layer auxiliary outputs (MoE router statistics and losses)."""
    cfg = self.config
    if not 0 <= out_start < tokens.shape[1]:
      raise ValueError(f"out_start={out_start} must be in [0, {tokens.shape[1]}) (the sequence length)")
    if out_start and cache is not None:
      raise ValueError("out_start is for full forwards; decoding with a cache returns every new position")
    if attn_mask is None:
      attn_mask = jnp.ones(tokens.shape, bool)
    attn_mask = attn_mask.astype(bool)
    if positions is None:
      positions = (cache.next_positions(attn_mask) if cache is not None
                   else jnp.maximum(jnp.cumsum(attn_mask.astype(jnp.int32), axis=1) - 1, 0))
    x = jnp.take(self.embed[...], tokens, axis=0).astype(_F32)          # [B, T, D]
    x = shd.constrain(x, ("batch", None, None))
    cos, sin = rotary_tables(cfg, positions)

    def layer_fn(q_start: int = 0):
      def body(x, xs):
        p, kv = xs
        x, new_kv, aux = decoder_layer(cfg, p, x, cos, sin, attn_mask, kv, q_start)
        return x, (new_kv if cache is not None else None, aux)
      return body if cfg.remat == "none" else jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat])

    body = layer_fn()
    old = None if cache is None else (cache.k, cache.v, jnp.broadcast_to(cache.mask, (cfg.num_layers,) + cache.mask.shape))
    xs = (self.layers.arrays(), old)
    # Dense models run the last layer on the requested positions only; MoE layers route every position (their
    # statistics and balance loss cover the whole sequence), so they slice the output instead.
    last_only = bool(out_start) and not cfg.num_experts
    n_stack = cfg.num_layers - 1 if last_only else cfg.num_layers
    stack = jax.tree.map(lambda a: a[:n_stack], xs) if last_only else xs
    if cfg.scan_layers:
      x, (new_kv, aux) = jax.lax.scan(body, x, stack)
    else:
      x, (new_kv, aux) = unrolled_layers(body, x, stack, n_stack)
    if last_only:
      x, (_, last_aux) = layer_fn(out_start)(x, jax.tree.map(lambda a: a[n_stack], xs))
      aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), aux, last_aux)
    elif out_start:
      x = x[:, out_start:]
    if cache is not None:
      cache = cache.append(new_kv[0], new_kv[1], attn_mask)
    return rms_norm(x, self.final_norm[...], cfg.rms_norm_eps), cache, aux

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., D] -> float32 logits [..., V]."""
    return self.logits_with(self.head_weight(), hidden)

  def head_weight(self) -> jax.Array:
    """The output projection's weights: `lm_head` [D, V], or `embed` [V, D] when the embeddings are tied."""
    return self.embed[...] if self.config.tie_embeddings else self.lm_head[...]

  def logits_with(self, head: jax.Array, hidden: jax.Array, head_cast: jax.Array | None = None) -> jax.Array:
    """Logits [..., V] of hidden [..., D] under output weights `head` (shaped like `head_weight()`).

    head_cast: optional `head.astype(compute_dtype)`, cast once by a caller that calls this many times (the
    loss's chunk scan); same values and gradients (into `head`), without a cast of the weights per call.
    """
    cd = jnp.dtype(self.config.compute_dtype)
    eq = "...d,vd->...v" if self.config.tie_embeddings else "...d,dv->...v"
    return _dot(eq, hidden, head, cd, w_cast=head_cast)


def param_axes(model_or_state: Any) -> Any:
  """The logical axis names of every parameter, as a pytree matching `nnx.state(model)`."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
  return jax.tree.map(lambda v: v.get_metadata().get("axes"), state, is_leaf=lambda x: isinstance(x, nnx.Variable))
