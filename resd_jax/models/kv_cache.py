"""KV cache for decoding: one array per K and V for all layers, written once per forward.

Layout: `k`, `v` [L, B, S, KVH, Dh]; `mask` [B, S] marks slots that hold a real (non-padding) token;
`index` is the next slot to write (shared by the batch: prompts are left-padded to a common length);
`lengths` [B] counts the real tokens so far per row, which is also the position of the next token.

Writing the whole cache once per step (instead of once per layer) keeps XLA from copying the cache in
every layer of the decode loop.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from resd_jax.models.config import ModelConfig

# Logical axes of the cache arrays, mapped to mesh axes by resd_jax.parallel.
CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k: jax.Array        # [L, B, S, KVH, Dh]
  v: jax.Array        # [L, B, S, KVH, Dh]
  mask: jax.Array     # [B, S] bool
  index: jax.Array    # [] int32, next slot to write
  lengths: jax.Array  # [B] int32, real tokens so far

  @staticmethod
  def init(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
    dtype = jnp.dtype(dtype or cfg.compute_dtype)
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
                   lengths=jnp.zeros((batch,), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  def next_positions(self, attn_mask: jax.Array) -> jax.Array:
    """Positions of new tokens [B, T] given their padding mask: continue from `lengths`."""
    steps = jnp.cumsum(attn_mask.astype(jnp.int32), axis=1) - 1
    return self.lengths[:, None] + jnp.maximum(steps, 0)

  def append(self, k_new: jax.Array, v_new: jax.Array, attn_mask: jax.Array) -> "KVCache":
    """Write new keys/values [L, B, T, KVH, Dh] at `index` in one update per array."""
    t = k_new.shape[2]
    at = (0, 0, self.index, 0, 0)
    return KVCache(
        k=jax.lax.dynamic_update_slice(self.k, k_new.astype(self.k.dtype), at),
        v=jax.lax.dynamic_update_slice(self.v, v_new.astype(self.v.dtype), at),
        mask=jax.lax.dynamic_update_slice(self.mask, attn_mask.astype(bool), (0, self.index)),
        index=self.index + t,
        lengths=self.lengths + attn_mask.astype(jnp.int32).sum(axis=1))
