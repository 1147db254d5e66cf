"""The model's forward over a paged KV cache, built from the model's own layer code.

`paged_forward(model, pool, tokens, positions, valid, page_table)` embeds, runs every decoder layer through
`transformer.decoder_layer` (so the projections, norms, rotary, MLP / MoE and any later change to them are the
model's), and hands the layer an attention callable that writes the new keys / values into their pages and
attends over the row's pages (`paged_attention`). The pool is the carry of the layer scan, so each layer's write
is an in-place scatter of the new tokens only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resd_jax.models import transformer as tf
from resd_jax.parallel import sharding as shd
from resd_jax.sampling.paged_attention import pallas_decode_attention, paged_attention, ragged_decode_attention
from resd_jax.sampling.paged_cache import POOL_AXES, TRASH_PAGE, PagePool


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class FlatPages:
  """The pages of all rows listed flat (decode's ragged layout, see `ragged_decode_attention`)."""
  pages: jax.Array       # [Np] page ids, row by row (padding: the trash page)
  row: jax.Array         # [Np] the row of each entry, ascending
  first: jax.Array       # [Np] position of the page's first token (padding: past every query)
  row_start: jax.Array   # [B] index in `pages` of each row's first page


def paged_forward(model: Any, pool: PagePool, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
                  page_table: jax.Array | None = None, *, flat: FlatPages | None = None,
                  attn_impl: str = "xla") -> tuple[jax.Array, PagePool]:
  """tokens / positions / valid [B, T] (valid False: padding, written to the trash page); the rows' pages as
  a page_table [B, nb] covering every position in `positions` (prefill; attention over a span of nb pages per
  row), or as `flat` (decode, T = 1: attention over the live pages only). Returns final-normed hidden states
  [B, T, D] float32 and the pool with the new tokens' keys and values written."""
  cfg = model.config
  page = pool.page_size
  valid = valid.astype(bool)
  positions = jnp.where(valid, positions, 0).astype(jnp.int32)
  x = jnp.take(model.embed[...], tokens, axis=0).astype(jnp.float32)      # [B, T, D]
  x = shd.constrain(x, ("batch", None, None))
  cos, sin = tf.rotary_tables(cfg, positions)
  if flat is None:
    slot = jnp.clip(positions // page, 0, page_table.shape[1] - 1)
    page_ids = jnp.take_along_axis(page_table, slot, axis=1)               # [B, T]
  else:
    at = jnp.clip(flat.row_start[:, None] + positions // page, 0, flat.pages.shape[0] - 1)
    page_ids = flat.pages[at]
  page_ids = jnp.where(valid, page_ids, TRASH_PAGE)
  offsets = positions % page
  cd = jnp.dtype(cfg.compute_dtype)
  use_pallas = attn_impl == "pallas" and tokens.shape[1] == 1 and page_table is not None
  if flat is not None:
    attend_fn = lambda q, pos, m, kp, vp, _, **kw: ragged_decode_attention(  # noqa: E731
        q, pos, m, kp, vp, flat.pages, flat.row, flat.first, **kw)
  else:
    attend_fn = pallas_decode_attention if use_pallas else paged_attention

  def layer(x, pk, pv, p, l):
    box = {}

    def attend(q, k, v, mask):
      nk = pk.at[l, page_ids, offsets].set(k.astype(pk.dtype))
      nv = pv.at[l, page_ids, offsets].set(v.astype(pv.dtype))
      box["kv"] = nk, nv
      return attend_fn(q, positions, mask, nk[l] if use_pallas else nk, nv[l] if use_pallas else nv, page_table,
                       dtype=cd, **({} if use_pallas else {"layer": l}))

    x, _, _ = tf.decoder_layer(cfg, p, x, cos, sin, valid, attend)
    return x, box["kv"]

  params = model.layers.arrays()
  if cfg.scan_layers:
    def body(carry, xs):
      x, pk, pv = carry
      x, (pk, pv) = layer(x, pk, pv, *xs)
      return (x, pk, pv), None
    (x, pk, pv), _ = jax.lax.scan(body, (x, pool.k, pool.v), (params, jnp.arange(cfg.num_layers)))
  else:
    pk, pv = pool.k, pool.v
    for l in range(cfg.num_layers):
      x, (pk, pv) = layer(x, pk, pv, jax.tree.map(lambda a, l=l: a[l], params), l)
  pool = PagePool(k=shd.constrain(pk, POOL_AXES), v=shd.constrain(pv, POOL_AXES))
  return tf.rms_norm(x, model.final_norm[...], cfg.rms_norm_eps), pool
