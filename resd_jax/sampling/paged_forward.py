"""The model's forward over a paged KV cache, built from the model's own layer code.

`paged_forward(model, pool, tokens, positions, valid, page_table)` embeds, runs every decoder layer through
`transformer.decoder_layer` (so the projections, norms, rotary, MLP / MoE and any later change to them are the
model's), and hands the layer an attention callable that writes the new keys / values into the layer's pages
(an in-place scatter of the new tokens only) and attends over the row's pages (`paged_attention`, the ragged
decode path or a Pallas kernel).

Layers: a stacked pool (XLA attention) runs them in a `lax.scan` with the pool as its carry (or unrolled when
`model.scan_layers` is False); a per-layer pool (the Pallas kernels) runs them unrolled, so each layer's buffer
stays its own array and reaches the kernel as it is.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resd_jax.models import transformer as tf
from resd_jax.parallel import sharding as shd
from resd_jax.sampling.paged_attention import pallas_decode_attention, paged_attention, ragged_decode_attention
from resd_jax.sampling.paged_cache import TRASH_PAGE, PagePool


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class FlatPages:
  """The pages of all rows listed flat (decode's ragged layout, see `ragged_decode_attention`)."""
  pages: jax.Array       # [Np] page ids, row by row (padding: the trash page)
  row: jax.Array         # [Np] the row of each entry, ascending
  first: jax.Array       # [Np] position of the page's first token (padding: past every query)
  row_start: jax.Array   # [B] index in `pages` of each row's first page


def layer_params(model: Any) -> list[dict[str, jax.Array]]:
  """Each layer's parameters, sliced from the model's stacked [L, ...] arrays. A decode loop slices them once,
  before the loop (unrolled layers only: a scan slices them itself): sliced inside it, XLA copied every layer's
  weights at every step (a second pass over the weights per step, 20-30% of a CPU decode step)."""
  stacked = model.layers.arrays()
  return [jax.tree.map(lambda a, l=l: a[l], stacked) for l in range(model.config.num_layers)]


def runs_unrolled(model: Any, pool: PagePool) -> bool:
  """Whether `paged_forward` unrolls the layers: a per-layer pool always does, a stacked one unless the model
  scans its layers."""
  return not (pool.stacked and model.config.scan_layers)


def paged_forward(model: Any, pool: PagePool, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
                  page_table: jax.Array | None = None, *, flat: FlatPages | None = None,
                  attn_impl: str = "xla", layers: list[dict[str, jax.Array]] | None = None
                  ) -> tuple[jax.Array, PagePool]:
  """tokens / positions / valid [B, T] (valid False: padding, written to the trash page); the rows' pages as
  a page_table [B, nb] covering every position in `positions` (prefill; attention over a span of nb pages per
  row), or as `flat` (decode, T = 1: attention over the live pages only). attn_impl: 'xla', or 'pallas_tpu' /
  'pallas_gpu' for decode steps with a page_table (`paged_attention.decode_attention_impl`). Returns final-normed
  hidden states [B, T, D] float32 and the pool with the new tokens' keys and values written."""
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
  kernel = attn_impl.removeprefix("pallas_") if attn_impl.startswith("pallas_") else None
  if kernel is not None and (tokens.shape[1] != 1 or page_table is None):
    kernel = None                     # the kernels serve decode steps; prefill takes the XLA path
  if kernel is not None:
    attend_fn = lambda q, pos, m, kp, vp: pallas_decode_attention(  # noqa: E731
        q, pos, m, kp, vp, page_table, dtype=cd, kernel=kernel)
  elif flat is not None:
    attend_fn = lambda q, pos, m, kp, vp, layer=None: ragged_decode_attention(  # noqa: E731
        q, pos, m, kp, vp, flat.pages, flat.row, flat.first, dtype=cd, layer=layer)
  else:
    attend_fn = lambda q, pos, m, kp, vp, layer=None: paged_attention(  # noqa: E731
        q, pos, m, kp, vp, page_table, dtype=cd, layer=layer)

  def write(pages, x, l=None):   # x [B, T, KVH, Dh] into the layer's pages at (page_ids, offsets)
    if l is None:                  # per-layer buffer [KVH, P, page, Dh]
      return pages.at[:, page_ids, offsets].set(jnp.moveaxis(x, 2, 0).astype(pages.dtype))
    return pages.at[l, :, page_ids, offsets].set(x.astype(pages.dtype))   # stacked [L, KVH, P, page, Dh]

  if layers is None and runs_unrolled(model, pool):
    layers = layer_params(model)
  if not pool.stacked:
    ks, vs = list(pool.k), list(pool.v)
    for l in range(cfg.num_layers):
      def attend(q, k, v, mask, l=l):
        ks[l], vs[l] = write(ks[l], k), write(vs[l], v)
        return attend_fn(q, positions, mask, ks[l], vs[l])

      x, _, _ = tf.decoder_layer(cfg, layers[l], x, cos, sin, valid, attend)
    pool = PagePool(k=tuple(ks), v=tuple(vs)).constrained()
    return tf.rms_norm(x, model.final_norm[...], cfg.rms_norm_eps), pool

  if kernel is not None:
    raise ValueError("paged_forward: the Pallas kernels read a per-layer pool (empty_pool(..., per_layer=True))")

  def layer(x, pk, pv, p, l):
    box = {}

    def attend(q, k, v, mask):
      nk, nv = write(pk, k, l), write(pv, v, l)
      box["kv"] = nk, nv
      return attend_fn(q, positions, mask, nk, nv, layer=l)

    x, _, _ = tf.decoder_layer(cfg, p, x, cos, sin, valid, attend)
    return x, box["kv"]

  if cfg.scan_layers:
    def body(carry, xs):
      x, pk, pv = carry
      x, (pk, pv) = layer(x, pk, pv, *xs)
      return (x, pk, pv), None
    (x, pk, pv), _ = jax.lax.scan(body, (x, pool.k, pool.v), (model.layers.arrays(), jnp.arange(cfg.num_layers)))
  else:
    pk, pv = pool.k, pool.v
    for l in range(cfg.num_layers):
      x, (pk, pv) = layer(x, pk, pv, layers[l], l)
  pool = PagePool(k=pk, v=pv).constrained()
  return tf.rms_norm(x, model.final_norm[...], cfg.rms_norm_eps), pool
