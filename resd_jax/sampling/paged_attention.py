"""Attention over one layer's pages of the paged KV cache.

A layer's pages are [KVH, P, page, Dh]: the layout JAX's Pallas paged-attention kernels read (TPU and GPU). The
XLA paths take them as that array, or as the pool's stacked [L, KVH, P, page, Dh] array with `layer` (read in
place inside the layer scan, no copy of the layer); the kernels take the pool's per-layer buffer as it is
(`paged_cache.PagePool`).

- `paged_attention(q, q_pos, q_valid, k_pages, v_pages, page_table)`: the portable XLA path for prefill (and
  decode with a page table). It gathers the `nb` pages a row's page table names (nb = the table's width, a
  bucket of the longest row, never the allocated maximum) and runs one masked softmax over them, causal by
  position (a query at position p sees the keys at positions <= p). The chunk's own keys are written before it
  reads them.
- `ragged_decode_attention(...)`: the portable XLA decode path: the live rows' pages are listed flat and each
  page attends to its own row's query, so a step costs the pages the rows hold, not slots x the longest row.
- `pallas_decode_attention(..., kernel="tpu" | "gpu")`: decode through JAX's Pallas paged-attention kernel for
  TPU (Mosaic) or GPU (Triton), behind `paged_attention`'s arguments. `decode_attention_impl(choice)` picks the
  implementation for the backend (see docs/engine.md: the TPU kernel is the default on a TPU; the GPU kernel is
  opt-in until it is measured on a GPU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from resd_jax.models.attention import _NEG, _dot

KERNEL_CHOICES = ("auto", "xla", "pallas")


def gather_pages(pages: jax.Array, page_table: jax.Array, layer: jax.Array | int | None = None) -> jax.Array:
  """The keys (or values) named by page_table [B, nb]: [B, nb * page, KVH, Dh], in position order.
  pages: [KVH, P, page, Dh], or [L, KVH, P, page, Dh] with `layer`."""
  b, nb = page_table.shape
  if layer is None:
    got = jnp.moveaxis(pages[:, page_table], 0, 2)                         # [B, nb, KVH, page, Dh]
  else:
    got = pages[layer, :, page_table]                                      # [B, nb, KVH, page, Dh]
  _, _, kvh, page, dh = got.shape
  return jnp.swapaxes(got, 2, 3).reshape(b, nb * page, kvh, dh)


def paged_attention(q: jax.Array, q_pos: jax.Array, q_valid: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                    page_table: jax.Array, *, dtype, layer: jax.Array | int | None = None) -> jax.Array:
  """q [B, T, H, Dh] at positions q_pos [B, T] (q_valid [B, T]: False = padding query); k/v_pages
  [KVH, P, page, Dh] (or [L, KVH, P, page, Dh] read at `layer`) already holding every key at positions <= q_pos;
  page_table [B, nb]. Returns [B, T, H, Dh] float32 (padding queries: finite, unspecified)."""
  b, t, h, dh = q.shape
  k = gather_pages(k_pages, page_table, layer)                             # [B, S, KVH, Dh]
  v = gather_pages(v_pages, page_table, layer)
  kvh = k.shape[2]
  s_len = k.shape[1]
  q = (q * (dh ** -0.5)).reshape(b, t, kvh, h // kvh, dh)
  s = _dot("btkgd,bskd->bkgts", q, k, dtype)                                # [B, KVH, G, T, S]
  allowed = (jnp.arange(s_len)[None, None, :] <= q_pos[:, :, None]) & q_valid[:, :, None]   # [B, T, S]
  p = jax.nn.softmax(jnp.where(allowed[:, None, None], s, _NEG), axis=-1)
  return _dot("bkgts,bskd->btkgd", p, v, dtype).reshape(b, t, h, dh)


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
  q [B, 1, H, Dh], q_pos / q_valid [B, 1]; k/v_pages [KVH, P, page, Dh] (or [L, KVH, P, page, Dh] read at
  `layer`). Returns [B, 1, H, Dh] float32 (rows without valid keys: finite, unspecified).
  """
  b, _, h, dh = q.shape
  if layer is None:
    kp, vp = (jnp.moveaxis(x[:, flat_pages], 0, 1) for x in (k_pages, v_pages))   # [Np, KVH, page, Dh]
  else:
    kp, vp = k_pages[layer, :, flat_pages], v_pages[layer, :, flat_pages]          # [Np, KVH, page, Dh]
  n_p, kvh, page = kp.shape[:3]
  g = h // kvh
  qp = (q[:, 0] * (dh ** -0.5)).reshape(b, kvh, g, dh)[page_row]             # [Np, KVH, G, Dh]
  s = _dot("pkgd,pksd->pkgs", qp, kp, dtype)                                  # [Np, KVH, G, page]
  key_pos = page_first[:, None] + jnp.arange(page)[None, :]                  # [Np, page]
  allowed = (key_pos <= q_pos[page_row, 0][:, None]) & q_valid[page_row, 0][:, None]
  s = jnp.where(allowed[:, None, None, :], s, _NEG)
  seg = dict(num_segments=b, indices_are_sorted=True)
  row_max = jnp.maximum(jax.ops.segment_max(jnp.max(s, axis=-1), page_row, **seg), _NEG)   # [B, KVH, G]
  e = jnp.exp(s - row_max[page_row][..., None])                              # [Np, KVH, G, page]
  denom = jax.ops.segment_sum(jnp.sum(e, axis=-1), page_row, **seg)           # [B, KVH, G]
  num = jax.ops.segment_sum(_dot("pkgs,pksd->pkgd", e, vp, dtype), page_row, **seg)   # [B, KVH, G, Dh]
  out = num / jnp.maximum(denom, 1e-30)[..., None]
  return out.reshape(b, 1, h, dh)


def _gpu_blocks(nb: int, page: int) -> tuple[int, int]:
  """(k_splits, pages_per_compute_block) of the GPU kernel for a page table of nb pages (a power of two): the
  kernel needs nb % k_splits == 0 and its compute block (pages x page tokens) at least 16 tokens wide for
  Triton's dot; 8 pages a block and up to 16 key partitions, as the kernel's defaults."""
  per_block = min(nb, max(8, -(-16 // page)))
  return max(1, min(16, nb // per_block)), per_block


def pallas_decode_attention(q: jax.Array, q_pos: jax.Array, q_valid: jax.Array, k_pages: jax.Array,
                            v_pages: jax.Array, page_table: jax.Array, *, dtype, kernel: str = "tpu",
                            interpret: bool = False) -> jax.Array:
  """`paged_attention` for decode steps (T = 1) through JAX's Pallas paged-attention kernel: kernel="tpu"
  (jax.experimental.pallas.ops.tpu.paged_attention) or "gpu" (jax.experimental.pallas.ops.gpu.paged_attention,
  Triton). k/v_pages [KVH, P, page, Dh] are the layer's pool buffers, passed as they are. The GPU kernel runs in
  Pallas' interpreter when interpret=True or on the CPU backend (tests; the TPU kernel's interpreter is
  `pltpu.force_tpu_interpret_mode`). Rows with q_valid False get length 1 (finite, unspecified output)."""
  b, t, h, dh = q.shape
  if t != 1:
    raise ValueError(f"pallas_decode_attention: decode steps only (T = 1), got T = {t}")
  interpret = interpret or jax.default_backend() == "cpu"   # no Triton on the CPU: Pallas' interpreter
  lengths = jnp.where(q_valid[:, 0], q_pos[:, 0] + 1, 1).astype(jnp.int32)
  qs = (q[:, 0] * dh ** -0.5).astype(k_pages.dtype)                          # [B, H, Dh]
  table = page_table.astype(jnp.int32)
  nb = table.shape[1]
  if kernel == "tpu":
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as tpu_kernel  # noqa: PLC0415
    out = tpu_kernel(qs, k_pages, v_pages, lengths, table, pages_per_compute_block=min(nb, 8))
  elif kernel == "gpu":
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention as gpu_kernel  # noqa: PLC0415
    splits, per_block = _gpu_blocks(nb, k_pages.shape[2])
    out = gpu_kernel(qs, k_pages, v_pages, table, lengths, k_splits=splits, pages_per_compute_block=per_block,
                     interpret=interpret)
  else:
    raise ValueError(f"pallas_decode_attention: kernel must be 'tpu' or 'gpu', got {kernel!r}")
  return out.astype(jnp.float32)[:, None]


def decode_attention_impl(choice: str = "auto", backend: str | None = None) -> str:
  """The decode attention for `engine.decode_kernel` = choice on `backend` (default: JAX's default backend):
  'xla' (the ragged XLA path), 'pallas_tpu' or 'pallas_gpu'.

  auto: the TPU kernel on a TPU whose jax ships it, else 'xla' (the GPU kernel has not been measured on a GPU
  yet, so it is opt-in). pallas: the backend's kernel; an error on a backend without one (the CPU)."""
  if choice not in KERNEL_CHOICES:
    raise ValueError(f"engine.decode_kernel must be one of {KERNEL_CHOICES}, got {choice!r}")
  backend = backend or jax.default_backend()
  if choice == "xla":
    return "xla"
  platform = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}.get(backend)
  if choice == "auto":
    if platform != "tpu":
      return "xla"
  elif platform is None:
    raise ValueError(f"engine.decode_kernel='pallas' needs a TPU or GPU backend, this one is {backend!r}; "
                     f"use 'auto' or 'xla'")
  try:
    if platform == "tpu":
      from jax.experimental.pallas.ops.tpu import paged_attention  # noqa: F401, PLC0415
    else:
      from jax.experimental.pallas.ops.gpu import paged_attention  # noqa: F401, PLC0415
  except ImportError:
    if choice == "auto":
      return "xla"
    raise ValueError(f"engine.decode_kernel='pallas': this jax ships no Pallas paged-attention kernel for "
                     f"{platform}; use 'auto' or 'xla'") from None
  return f"pallas_{platform}"
