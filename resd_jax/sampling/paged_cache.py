"""Paged KV cache: a fixed pool of fixed-size pages on the device, page tables and a host allocator.

Device side: `PagePool` holds `k`, `v` (P pages of `page` tokens) in one of two layouts of the same
[KVH, P, page, Dh] layer pages:
- stacked, one [L, KVH, P, page, Dh] array each: the XLA attention paths, with the layers in a `lax.scan`
  (fastest measured on the CPU; each layer's write is an in-place scatter into the scan's carry);
- per layer, a tuple of L [KVH, P, page, Dh] arrays: the Pallas paged-attention kernels (TPU, GPU), which read
  that layout and get a layer's buffer as it is (a layer sliced from a stacked array would be copied for the
  kernel at every call: a pass over the whole pool per step), with the layers unrolled.
A sequence's tokens live in the pages its page-table row names, in order: token t is at page
`table[t // page]`, offset `t % page`. Page 0 is never handed out: it is the trash page that padding tokens
and finished rows write to, so every write in a fixed-shape program has somewhere harmless to go, and page-table
entries past a sequence's pages point at it (their keys are masked by position).

Host side: `PageAllocator` hands out pages with reference counts (a page shared by several sequences, e.g. a
common prompt prefix, is freed when its last holder releases it); `PrefixIndex` maps the tokens of full pages
(keyed by the whole prefix up to and including that page) to the page that holds their keys and values, for
the pages some live sequence still holds.

Sizing: `pages_for_budget(cfg, budget_bytes, page_size)` turns a memory budget into a page count;
`free_memory_bytes()` reads what the device has free (the host's available memory on the CPU backend).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resd_jax.models.config import ModelConfig
from resd_jax.parallel import sharding as shd

# Logical axes of a layer's pool pages [KVH, P, page, Dh]: the KV heads go over `tensor` (like the dense cache),
# the pages are replicated. A stacked pool has "layers" in front.
POOL_AXES = ("kv_heads", None, None, None)
TRASH_PAGE = 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PagePool:
  k: jax.Array | tuple[jax.Array, ...]  # [L, KVH, P, page, Dh] (stacked) or L x [KVH, P, page, Dh] (per layer)
  v: jax.Array | tuple[jax.Array, ...]

  @property
  def stacked(self) -> bool:
    return not isinstance(self.k, tuple)

  @property
  def num_pages(self) -> int:
    return (self.k if self.stacked else self.k[0]).shape[-3]

  @property
  def page_size(self) -> int:
    return (self.k if self.stacked else self.k[0]).shape[-2]

  def _map(self, fn_stacked, fn_layer) -> "PagePool":
    if self.stacked:
      return PagePool(k=fn_stacked(self.k), v=fn_stacked(self.v))
    return PagePool(k=tuple(map(fn_layer, self.k)), v=tuple(map(fn_layer, self.v)))

  def constrained(self) -> "PagePool":
    """The pool laid out by POOL_AXES (inside a jit: a sharding constraint)."""
    return self._map(lambda x: shd.constrain(x, ("layers",) + POOL_AXES), lambda x: shd.constrain(x, POOL_AXES))

  def copy_pages(self, src: jax.Array, dst: jax.Array) -> "PagePool":
    """Every layer's page src[i] copied into page dst[i] (src, dst [R] page ids)."""
    return self._map(lambda x: x.at[:, :, dst].set(x[:, :, src]), lambda x: x.at[:, dst].set(x[:, src]))


def bytes_per_page(cfg: ModelConfig, page_size: int) -> int:
  """Device bytes one page takes (keys and values of all layers)."""
  return 2 * cfg.num_layers * page_size * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.compute_dtype).itemsize


def pages_for_budget(cfg: ModelConfig, budget_bytes: int, page_size: int) -> int:
  """How many pages (the trash page included) fit in `budget_bytes`."""
  return int(budget_bytes) // bytes_per_page(cfg, page_size)


def free_memory_bytes() -> int:
  """Free memory of the first device (bytes_limit - bytes_in_use); on backends that do not report it (CPU), the
  host's available physical memory."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001  (backends without memory stats)
    stats = {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return 0


def empty_pool(cfg: ModelConfig, num_pages: int, page_size: int, mesh: Any = None,
               per_layer: bool = False) -> PagePool:
  """A zero pool (finite values everywhere: masked keys are multiplied by exact zeros), laid out by POOL_AXES:
  stacked [L, KVH, P, page, Dh] arrays, or per_layer=True tuples of L [KVH, P, page, Dh] arrays (the kernels')."""
  page_shape = (cfg.num_kv_heads, num_pages, page_size, cfg.head_dim)
  shape, axes = (page_shape, POOL_AXES) if per_layer else ((cfg.num_layers,) + page_shape, ("layers",) + POOL_AXES)
  dtype = jnp.dtype(cfg.compute_dtype)
  if mesh is None:
    make = lambda: jnp.zeros(shape, dtype)  # noqa: E731
  else:
    sharding = jax.sharding.NamedSharding(mesh, shd.spec_for(shape, axes, mesh))
    make = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
  if not per_layer:
    return PagePool(k=make(), v=make())
  layers = range(cfg.num_layers)
  return PagePool(k=tuple(make() for _ in layers), v=tuple(make() for _ in layers))


class PageAllocator:
  """Free list and reference counts of the pool's pages (page 0, the trash page, is never handed out)."""

  def __init__(self, num_pages: int):
    if num_pages < 2:
      raise ValueError(f"PageAllocator: need at least 2 pages (one is the trash page), got {num_pages}")
    self.num_pages = int(num_pages)
    self.refs = np.zeros(num_pages, np.int32)
    self._free = list(range(num_pages - 1, 0, -1))   # pop() hands out low ids first

  @property
  def free(self) -> int:
    return len(self._free)

  @property
  def capacity(self) -> int:
    """Pages a single sequence could ever hold."""
    return self.num_pages - 1

  def alloc(self, n: int) -> list[int]:
    if n > len(self._free):
      raise RuntimeError(f"PageAllocator: {n} pages asked, {len(self._free)} free")
    out = [self._free.pop() for _ in range(n)]
    self.refs[out] = 1
    return out

  def retain(self, pages: Sequence[int]) -> None:
    for p in pages:
      if self.refs[p] <= 0:
        raise RuntimeError(f"PageAllocator: retain of free page {p}")
      self.refs[p] += 1

  def release(self, pages: Sequence[int]) -> list[int]:
    """Drop one reference to each page; returns the pages that became free."""
    freed = []
    for p in pages:
      if self.refs[p] <= 0:
        raise RuntimeError(f"PageAllocator: release of free page {p}")
      self.refs[p] -= 1
      if self.refs[p] == 0:
        freed.append(p)
        self._free.append(p)
    return freed


class PrefixIndex:
  """Full pages of live sequences by their prefix. A page's key is (the page before it, its own tokens): page
  ids name whole prefixes while they are held, so a lookup is exact and costs one page of tokens per page.
  (Every holder of a page also holds the pages before it, so a page is never freed before the ones after it.)"""

  def __init__(self, page_size: int):
    self.page_size = int(page_size)
    self._by_key: dict[tuple[int, tuple[int, ...]], int] = {}
    self._key_of: dict[int, tuple[int, tuple[int, ...]]] = {}

  def _key(self, prev: int, tokens: Sequence[int], k: int) -> tuple[int, tuple[int, ...]]:
    return prev, tuple(tokens[k * self.page_size:(k + 1) * self.page_size])

  def match(self, tokens: Sequence[int], limit: int) -> list[int]:
    """Pages holding tokens[:k * page] for the largest k with k * page <= limit whose pages are all indexed."""
    pages: list[int] = []
    prev = -1
    for k in range(limit // self.page_size):
      page = self._by_key.get(self._key(prev, tokens, k))
      if page is None:
        break
      pages.append(page)
      prev = page
    return pages

  def add(self, tokens: Sequence[int], pages: Sequence[int], n_tokens: int) -> None:
    """Index the full pages among `pages` that hold tokens[:n_tokens] (already written)."""
    prev = -1
    for k in range(n_tokens // self.page_size):
      key = self._key(prev, tokens, k)
      if key not in self._by_key and pages[k] not in self._key_of:
        self._by_key[key] = pages[k]
        self._key_of[pages[k]] = key
      prev = pages[k]

  def drop(self, pages: Sequence[int]) -> None:
    """Forget freed pages (their contents will be overwritten)."""
    for p in pages:
      key = self._key_of.pop(p, None)
      if key is not None:
        del self._by_key[key]

  def __len__(self) -> int:
    return len(self._by_key)
