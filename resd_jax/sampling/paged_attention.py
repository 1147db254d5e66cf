"""Attention over a paged KV cache: write the new tokens' keys and values into their pages, then attend.

`paged_attention(q, q_pos, q_valid, k_pages, v_pages, page_table, dtype=...)` is the portable XLA path: it
gathers the `nb` pages a row's page table names (nb = the table's width, a bucket of the longest live sequence,
never the allocated maximum) and runs one masked softmax over them, causal by position (a query at position p
sees the keys at positions <= p). It serves decode (T = 1) and chunked prefill (T = chunk) alike, since the
chunk's own keys are written before the attention reads them.

`pallas_decode_attention` calls JAX's Pallas TPU paged-attention kernel behind the same arguments for decode
steps (T = 1). It is selected only on a TPU backend (`decode_attention_impl`), so it is untested here (no TPU in
this project's CI); everything else runs the XLA path.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from resd_jax.models.attention import _NEG, _dot


def gather_pages(pages: jax.Array, page_table: jax.Array, layer: jax.Array | int | None = None) -> jax.Array:
  """The keys (or values) named by page_table [B, nb]: [B, nb * page, KVH, Dh], in position order.
  pages: [P, page, KVH, Dh], or [L, P, page, KVH, Dh] with `layer` (read in place, no copy of the layer)."""
  b, nb = page_table.shape
  got = pages[page_table] if layer is None else pages[layer, page_table]    # [B, nb, page, KVH, Dh]
  return got.reshape(b, nb * got.shape[2], *got.shape[3:])


def paged_attention(q: jax.Array, q_pos: jax.Array, q_valid: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                    page_table: jax.Array, *, dtype, layer: jax.Array | int | None = None) -> jax.Array:
  """q [B, T, H, Dh] at positions q_pos [B, T] (q_valid [B, T]: False = padding query); k/v_pages
  [P, page, KVH, Dh] (or [L, P, ...] read at `layer`) already holding every key at positions <= q_pos;
  page_table [B, nb].
  Returns [B, T, H, Dh] float32 (padding queries: finite, unspecified)."""
  b, t, h, dh = q.shape
  k = gather_pages(k_pages, page_table, layer)                              # [B, S, KVH, Dh]
  v = gather_pages(v_pages, page_table, layer)
  kvh = k.shape[2]
  s_len = k.shape[1]
  q = (q * (dh ** -0.5)).reshape(b, t, kvh, h // kvh, dh)
  s = _dot("btkgd,bskd->bkgts", q, k, dtype)                                # [B, KVH, G, T, S]
  allowed = (jnp.arange(s_len)[None, None, :] <= q_pos[:, :, None]) & q_valid[:, :, None]   # [B, T, S]
  p = jax.nn.softmax(jnp.where(allowed[:, None, None], s, _NEG), axis=-1)
  return _dot("bkgts,bskd->btkgd", p, v, dtype).reshape(b, t, h, dh)


def pallas_decode_attention(q: jax.Array, q_pos: jax.Array, q_valid: jax.Array, k_pages: jax.Array,
                            v_pages: jax.Array, page_table: jax.Array, *, dtype) -> jax.Array:
  """`paged_attention` for T = 1 through jax.experimental.pallas.ops.tpu.paged_attention (TPU only).

  The kernel takes pages laid out [KVH, P, page, Dh]; they are transposed here, which costs a pass over the
  layer's pool per call: a TPU deployment would keep the pool in the kernel's layout instead (not done: no
  TPU to measure it on)."""
  from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as kernel  # noqa: PLC0415
  b, t, h, dh = q.shape
  if t != 1:
    raise ValueError(f"pallas_decode_attention: decode steps only (T = 1), got T = {t}")
  lengths = jnp.where(q_valid[:, 0], q_pos[:, 0] + 1, 1).astype(jnp.int32)
  kp, vp = (jnp.moveaxis(x, 2, 0).astype(dtype) for x in (k_pages, v_pages))
  nb = page_table.shape[1]
  out = kernel((q[:, 0] * dh ** -0.5).astype(dtype), kp, vp, lengths, page_table.astype(jnp.int32),
               pages_per_compute_block=min(nb, 8))
  return out.astype(jnp.float32)[:, None]


def decode_attention_impl() -> str:
  """'pallas' on a TPU backend whose jax ships the kernel, else 'xla'."""
  if jax.default_backend() != "tpu":
    return "xla"
  try:
    from jax.experimental.pallas.ops.tpu import paged_attention  # noqa: F401, PLC0415
  except ImportError:
    return "xla"
  return "pallas"


def ragged_decode_attention(q: jax.Array, q_pos: jax.Array, q_valid: jax.Array, k_pages: jax.Array,
                            v_pages: jax.Array, flat_pages: jax.Array, page_row: jax.Array, page_first: jax.Array,
                            *, dtype, layer: jax.Array | int | None = None) -> jax.Array:
  """Decode attention (T = 1) over the live pages of all rows at once, so a step costs the pages the rows hold
  (summed), not the batch times its longest row.

  The pages of every row are listed flat: flat_pages [Np] (page ids, trash page = padding), page_row [Np] (the
  row each belongs to, ascending; padding entries repeat the last row), page_first [Np] (the position of its
  first token; padding entries a position past every query, so they are masked). Each page attends to its row's
  query (a [G, page] score block per KV head); the per-page softmax statistics are combined per row with
  segment reductions (the max, then the rescaled sums), as in split-K "flash decoding".
  q [B, 1, H, Dh], q_pos / q_valid [B, 1]; k/v_pages as `paged_attention`. Returns [B, 1, H, Dh] float32
  (rows without valid keys: finite, unspecified).
  """
  b, _, h, dh = q.shape
  kp = k_pages[flat_pages] if layer is None else k_pages[layer, flat_pages]   # [Np, page, KVH, Dh]
  vp = v_pages[flat_pages] if layer is None else v_pages[layer, flat_pages]
  n_p, page, kvh = kp.shape[:3]
  g = h // kvh
  qp = (q[:, 0] * (dh ** -0.5)).reshape(b, kvh, g, dh)[page_row]             # [Np, KVH, G, Dh]
  s = _dot("pkgd,pskd->pkgs", qp, kp, dtype)                                  # [Np, KVH, G, page]
  key_pos = page_first[:, None] + jnp.arange(page)[None, :]                  # [Np, page]
  allowed = (key_pos <= q_pos[page_row, 0][:, None]) & q_valid[page_row, 0][:, None]
  s = jnp.where(allowed[:, None, None, :], s, _NEG)
  seg = dict(num_segments=b, indices_are_sorted=True)
  row_max = jnp.maximum(jax.ops.segment_max(jnp.max(s, axis=-1), page_row, **seg), _NEG)   # [B, KVH, G]
  e = jnp.exp(s - row_max[page_row][..., None])                              # [Np, KVH, G, page]
  denom = jax.ops.segment_sum(jnp.sum(e, axis=-1), page_row, **seg)           # [B, KVH, G]
  num = jax.ops.segment_sum(_dot("pkgs,pskd->pkgd", e, vp, dtype), page_row, **seg)   # [B, KVH, G, Dh]
  out = num / jnp.maximum(denom, 1e-30)[..., None]
  return out.reshape(b, 1, h, dh)
