"""Attention for the decoder: causal self-attention over a whole sequence, behind one dispatch, and the attention
of new tokens over a KV cache (decoding).

Full-sequence backends (`ModelConfig.attn_impl`):
- `blocked` (ours): query blocks that skip the masked triangle, a flash-style hand-written backward, optionally one
  (sequence, KV head) pair at a time (`attn_head_loop`, a CPU setting);
- `cudnn` / `xla`: `jax.nn.dot_product_attention` (cuDNN's fused flash kernel on NVIDIA GPUs; JAX's reference);
- optional backends registered from outside `models/` (resd_jax/backends.py), e.g. `cpu_fused`, our C++ kernel
  for the CPU (resd_jax/kernels/cpu_attention.py).
`auto` resolves to a registered backend that says it applies here, else cudnn on an NVIDIA GPU that supports it
with bf16/fp16 compute, else blocked. `full_attention` is the one entry point the model calls.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from resd_jax import backends
from resd_jax.models.config import ModelConfig
from resd_jax.models.matmul import batched_matmul_einsum, mixed_einsum

# A large finite negative: fully masked rows (padding queries) stay finite instead of NaN.
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
_F32 = jnp.float32
BUILTIN = ("blocked", "cudnn", "xla")


def _dot(eq: str, x: jax.Array, w: jax.Array, dtype, batched: bool = False, w_cast=None) -> jax.Array:
  """einsum with inputs in the compute dtype and float32 accumulation/output (backward too: see matmul.py)."""
  return mixed_einsum(eq, x, w, dtype, batched, w_cast)



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
  """The full-sequence attention cfg.attn_impl resolves to on the default backend: `auto` is a registered
  backend that applies here (the CPU kernel: on the CPU outside a multi-device mesh with bf16 compute and a head
  size it takes, if it compiles), else cudnn on an NVIDIA GPU that supports it (see cudnn_flash_supported) with
  bf16/fp16 compute, else blocked."""
  if cfg.attn_impl != "auto":
    optional = backends.get("attention", cfg.attn_impl)
    if optional is not None:
      error = optional.runtime_error(cfg)
      if error:
        raise ValueError(error)
    elif cfg.attn_impl not in BUILTIN:
      raise ValueError(f"attn_impl={cfg.attn_impl!r} is not available here (built in: {BUILTIN}); use 'auto'")
    return cfg.attn_impl
  for optional in backends.of_kind("attention"):
    if optional.auto(cfg):
      return optional.name
  if jax.default_backend() != "gpu" or cfg.compute_dtype not in ("bfloat16", "float16"):
    return "blocked"
  capability = getattr(jax.devices()[0], "compute_capability", None)
  return "cudnn" if cudnn_flash_supported(capability, cfg.head_dim) else "blocked"


def full_attention(cfg: ModelConfig, q, k, v, kv_mask, q_offset: int = 0) -> jax.Array:
  """Causal self-attention of q [B, Tq, H, Dh] (positions q_offset .. T-1) over k/v [B, T, KVH, Dh] with
  kv_mask [B, T] (False = padding), by the backend `attention_impl(cfg)` picks: [B, Tq, H, Dh] float32."""
  cd = jnp.dtype(cfg.compute_dtype)
  impl = attention_impl(cfg)
  if impl == "blocked":
    return causal_attention(q, k, v, kv_mask, block=cfg.attn_block, dtype=cd,
                            max_unrolled_blocks=cfg.attn_max_unrolled_blocks, q_offset=q_offset,
                            head_loop=attention_head_loop(cfg))
  if impl in ("cudnn", "xla"):
    return fused_causal_attention(q, k, v, kv_mask, impl=impl, dtype=cd, q_offset=q_offset)
  return backends.get("attention", impl).fn(q, k, v, kv_mask, q_offset=q_offset)


def attention_head_loop(cfg: ModelConfig) -> bool:
  """Whether blocked attention loops over (sequence, KV head) pairs: cfg.attn_head_loop, where `auto` is on
  for the CPU backend outside a mesh of more than one device."""
  if cfg.attn_head_loop != "auto":
    return cfg.attn_head_loop == "on"
  return backends.on_one_cpu()


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
