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

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resd_jax.models import attention
from resd_jax.models.attention import _dot, attention_impl, cached_attention, causal_attention  # noqa: F401 (re-exported)
from resd_jax.models import lora
from resd_jax.models.config import ModelConfig
from resd_jax.models.kv_cache import KVCache
from resd_jax.parallel import sharding as shd

_F32 = jnp.float32


def _proj(cfg: ModelConfig, eq: str, x: jax.Array, p: dict[str, jax.Array], name: str) -> jax.Array:
  """x projected by the layer weight p[name], plus its LoRA update when the layer has one (models/lora.py)."""
  return lora.project(eq, x, p, name, jnp.dtype(cfg.compute_dtype), cfg.lora_scale)


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
    if cfg.lora_rank:
      lora.init_params(self, cfg, rngs)

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
  with jax.named_scope("qkv"):
    q, k, v, x = _qkv(cfg, p, x, cos, sin, q_start)
  with jax.named_scope("attention"):
    a = _attend(cfg, q, k, v, attn_mask, cache_kv, q_start)
  with jax.named_scope("attn_out"):
    x = x + _proj(cfg, "bthk,hkd->btd", a, p, "o")
    x = shd.constrain(x, ("batch", None, None))
  with jax.named_scope("mlp"):
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    aux = {}
    if cfg.num_experts:
      from resd_jax.models import moe  # noqa: PLC0415
      y, aux = moe.moe_mlp(cfg, p, h, attn_mask[:, q_start:])
    else:
      g = _proj(cfg, "btd,df->btf", h, p, "gate")
      u = _proj(cfg, "btd,df->btf", h, p, "up")
      y = _proj(cfg, "btf,fd->btd", jax.nn.silu(g) * u, p, "down")
    x = shd.constrain(x + y, ("batch", None, None))
  return x, (k, v), aux


def _qkv(cfg: ModelConfig, p: dict[str, jax.Array], x, cos, sin, q_start: int):
  """Normed, projected, rotated q [B, Tq, H, Dh] and k, v [B, T, KVH, Dh], and x cut to the query rows."""
  h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  if q_start:
    x, cos_q, sin_q = x[:, q_start:], cos[:, q_start:], sin[:, q_start:]
  else:
    cos_q, sin_q = cos, sin
  q = _proj(cfg, "btd,dhk->bthk", h[:, q_start:] if q_start else h, p, "q")
  k = _proj(cfg, "btd,dhk->bthk", h, p, "k")
  v = _proj(cfg, "btd,dhk->bthk", h, p, "v")
  if cfg.qkv_bias:
    q, k, v = q + p["q_bias"].astype(_F32), k + p["k_bias"].astype(_F32), v + p["v_bias"].astype(_F32)
  if cfg.qk_norm:
    q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q, k = apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos, sin)
  return q, k, v, x


def _attend(cfg: ModelConfig, q, k, v, attn_mask, cache_kv, q_start: int):
  """Causal attention of q over k, v (and a cache's keys and values when given): [B, Tq, H, Dh] float32."""
  if cache_kv is None:
    return attention.full_attention(cfg, q, k, v, attn_mask, q_start)
  if q_start:
    raise ValueError("decoder_layer: q_start is for full forwards, not for decoding with a cache")
  if callable(cache_kv):  # the caller's attention (the paged rollout engine): (q, k, v, mask) -> [B, T, H, Dh]
    return cache_kv(q, k, v, attn_mask)
  k_old, v_old, old_mask = cache_kv
  return cached_attention(q, k, v, attn_mask, k_old, v_old, old_mask, dtype=jnp.dtype(cfg.compute_dtype))


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
