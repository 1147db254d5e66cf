"""Rollout engine: paged KV cache, continuous batching, chunked ragged prefill, shared prompt prefixes.

`generate_paged(model, prompts, params, rng, ...)` returns the same `Completions` as the static sampler
(`sampler.generate`) for the same keys: row i's key is fold_in(rng, row id) and its t-th token is drawn with
fold_in(row key, t), greedy or sampled, whatever slot or batch it runs in. What differs is the cost:

- Decode runs a fixed number of slots (`EngineConfig.slots`). A finished row frees its slot and its pages at
  once and the next waiting prompt is admitted into it; admission is bounded by free pages (a prompt that
  does not fit waits; nothing is dropped). When running rows need more pages than are free, the row admitted
  last is preempted (its pages freed) and later re-prefilled with the tokens it has generated so far, so it
  continues exactly where it stopped (same keys, same tokens).
- The KV cache is a pool of pages (`paged_cache.py`); decode attention reads the live rows' pages listed flat
  (a power-of-two bucket of their total), so a step costs what the rows hold, not the allocated maximum.
- Prefill is packed: each call runs a buffer of `prefill_chunk` tokens (query blocks of 16 tokens or a page,
  larger for long attention spans; each block holds tokens of one row) into which the pieces of several rows
  are packed; a block attends over its own row's pages. A long prompt is cut into pieces over several calls,
  short ones share a call. Prefill goes first: decode waits until every admitted row holds its prompt, so
  decode steps run with as many rows as possible.
- Prompts that share full pages of prefix (prompts with a common system text) prefill them once and hold the
  same pages (reference counted), and prefill the rest (at least one token). Rows with the same whole prompt
  (GRPO's G samples) prefill nothing: they share its full pages, get a copy of its partial last page (copy on
  write) and draw their first token from its final hidden state with their own keys. A shared page is never
  written again (rows write only past their prompt).
- Stop tokens end a row on the device; stop strings are checked on the host after each decode call.

Device programs: one prefill program per attention span (pages read per block: a power of two from 128 tokens
up to the longest row's prompt) and one decode program per flat-pages bucket (a power of two from 128 tokens
per slot); the buffer, slots and steps per call are fixed, so the count does not grow with the number of rows
or the prompt lengths beyond those log2 buckets.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resd_jax.parallel import placement
from resd_jax.sampling import sampler as static
from resd_jax.sampling.draw import draw, kcap_for
from resd_jax.sampling.paged_attention import KERNEL_CHOICES, decode_attention_impl
from resd_jax.sampling.paged_cache import (PageAllocator, PagePool, PrefixIndex, bytes_per_page, empty_pool,
                                           free_memory_bytes, pages_for_budget)
from resd_jax.sampling.paged_forward import FlatPages, layer_params, paged_forward, runs_unrolled
from resd_jax.sampling.params import SamplingParams

MIN_CHUNK = 16
# Attention spans (pages read per row) are powers of two of at least this many tokens: fewer programs for short
# rows, whose attention costs little anyway.
MIN_SPAN = 128
# A prefill block of a call whose attention span is S tokens holds S / SPAN_PER_BLOCK tokens (>= 16): see
# `prefill_blocks`.
SPAN_PER_BLOCK = 32
# The smallest prefill buffer (tokens) a call runs when few tokens wait: see `prefill_blocks`.
MIN_BUFFER = 64


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Knobs of the rollout engine (config block `engine.*`, see configs/base.py).

  page_size: tokens per KV page. num_pages: pool size in pages (0 = derive it: `memory_fraction` of the
  device's free memory, capped at what `slots` rows of the call's longest prompt + max_new_tokens could use,
  rounded up to a power of two). slots: rows decoded together. prefill_chunk: longest prefill piece (tokens).
  decode_steps: decode steps per device call (host admission / freeing runs between calls).
  share_prefixes: share the pages of common prompt prefixes.
  decode_kernel: decode attention: 'auto' (the Pallas kernel on a TPU, the ragged XLA path elsewhere), 'xla',
  or 'pallas' (the backend's Pallas paged-attention kernel: TPU or GPU; the GPU one is opt-in, unmeasured).
  """
  page_size: int = 16
  num_pages: int = 0
  memory_fraction: float = 0.5
  slots: int = 32
  prefill_chunk: int = 512
  decode_steps: int = 16
  share_prefixes: bool = True
  decode_kernel: str = "auto"

  def __post_init__(self):
    def need(cond: bool, msg: str) -> None:
      if not cond:
        raise ValueError(f"EngineConfig: {msg}")
    pow2 = lambda n: isinstance(n, int) and n >= 1 and n & (n - 1) == 0
    need(pow2(self.page_size), f"engine.page_size must be a power of two, got {self.page_size!r}")
    need(isinstance(self.num_pages, int) and (self.num_pages == 0 or self.num_pages >= 2),
         f"engine.num_pages must be 0 (derive from memory) or >= 2, got {self.num_pages!r}")
    need(0 < self.memory_fraction <= 1, f"engine.memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
    need(isinstance(self.slots, int) and self.slots >= 1, f"engine.slots must be >= 1, got {self.slots!r}")
    need(pow2(self.prefill_chunk) and self.prefill_chunk >= MIN_CHUNK,
         f"engine.prefill_chunk must be a power of two >= {MIN_CHUNK}, got {self.prefill_chunk!r}")
    need(isinstance(self.decode_steps, int) and self.decode_steps >= 1,
         f"engine.decode_steps must be >= 1, got {self.decode_steps!r}")
    need(self.decode_kernel in KERNEL_CHOICES,
         f"engine.decode_kernel must be one of {KERNEL_CHOICES}, got {self.decode_kernel!r}")



# ------------------------------------------------------------------------------------------------ device side
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Slots:
  """Decode state of the S slots."""
  last: jax.Array     # [S] int32, token fed next (not yet in the cache)
  pos: jax.Array      # [S] int32, its position (= tokens in the cache)
  step: jax.Array     # [S] int32, tokens generated so far (the key schedule's step)
  max_new: jax.Array  # [S] int32
  done: jax.Array     # [S] bool (empty slots start done)
  keys: jax.Array     # [S] row keys


def _draw(logits, keys, steps, knobs: static.Knobs, k_cap: int):
  step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
  return draw(logits, step_keys, knobs.temperature, knobs.top_p, knobs.top_k, k_cap)


def _prefill(graphdef, params, pool: PagePool, tokens, positions, valid, page_table, last_idx, keys, steps,
             knobs: static.Knobs, *, k_cap: int, attn_impl: str):
  """One packed prefill call: the chunks of several rows in a fixed buffer of NB query blocks of Q tokens,
  tokens / positions / valid [NB, Q] (a block holds tokens of one row; valid False = padding, written to the
  trash page), page_table [NB, nb] (each block's row's pages). Draws a token from the logits at the flat
  indices last_idx [NB] (into NB * Q) with fold_in(keys, steps) [NB] (the host uses the entries of rows whose
  final chunk this is); also returns those hidden states h [NB, D] (a whole prompt's is kept for its sharers)."""
  model = nnx.merge(graphdef, params)
  hidden, pool = paged_forward(model, pool, tokens, positions, valid, page_table, attn_impl=attn_impl)
  nb, q, d = hidden.shape
  h = jnp.take(hidden.reshape(nb * q, d), last_idx, axis=0)                   # [NB, D]
  tok, lp, slp = _draw(model.logits(h), keys, steps, knobs, k_cap)
  return pool, tok, lp, slp, h


def _decode(graphdef, params, pool: PagePool, st: Slots, page_table, flat: FlatPages | None, knobs: static.Knobs,
            *, k_cap: int, n_steps: int, attn_impl: str):
  """Up to n_steps decode steps of all slots (stops early when every slot is done). The rows' pages come as
  `flat` (attention over the live pages only) or, for the TPU kernel, as page_table [S, nb]. Returns the pool,
  the slots and the tokens / log-probs [S, n_steps] written at column (step - step at entry)."""
  model = nnx.merge(graphdef, params)
  # Unrolled layers (a per-layer pool, or model.scan_layers False): their weights sliced once, outside the loop.
  layers = layer_params(model) if runs_unrolled(model, pool) else None
  s = st.last.shape[0]
  out = tuple(jnp.zeros((s, n_steps), dt) for dt in (jnp.int32, jnp.float32, jnp.float32))

  def cond(c):
    i, _, st, _ = c
    return (i < n_steps) & ~jnp.all(st.done)

  def body(c):
    i, pool, st, (ot, olp, oslp) = c
    live = ~st.done
    hidden, pool = paged_forward(model, pool, st.last[:, None], st.pos[:, None], live[:, None], page_table,
                                 flat=flat, attn_impl=attn_impl, layers=layers)
    tok, lp, slp = _draw(model.logits(hidden[:, 0]), st.keys, st.step, knobs, k_cap)
    put = lambda buf, val: jax.lax.dynamic_update_slice(buf, jnp.where(live, val, buf[:, i])[:, None], (0, i))
    is_stop = jnp.any(tok[:, None] == knobs.stop_ids[None, :], axis=-1)
    step = st.step + live.astype(jnp.int32)
    st = Slots(last=jnp.where(live, tok, st.last), pos=st.pos + live.astype(jnp.int32), step=step,
               max_new=st.max_new, done=st.done | (live & (is_stop | (step >= st.max_new))), keys=st.keys)
    return i + 1, pool, st, (put(ot, tok), put(olp, lp), put(oslp, slp))

  _, pool, st, out = jax.lax.while_loop(cond, body, (jnp.int32(0), pool, st, out))
  return pool, st, out


def _share(graphdef, params, pool: PagePool, src, dst, h, keys, steps, knobs: static.Knobs, *, k_cap: int):
  """Rows that share a whole prompt with a row that prefilled it: copy the prompt's last partial page src [R]
  into the row's own page dst [R] (copy on write; 0 -> 0 for padding entries: the trash page), and draw each
  row's first token from the prompt's final hidden state h [R, D] with its own key fold_in(keys, steps)."""
  model = nnx.merge(graphdef, params)
  pool = pool.copy_pages(src, dst).constrained()
  tok, lp, slp = _draw(model.logits(h), keys, steps, knobs, k_cap)
  return pool, tok, lp, slp


prefill_fn = jax.jit(_prefill, static_argnums=(0,), static_argnames=("k_cap", "attn_impl"), donate_argnums=(2,))
decode_fn = jax.jit(_decode, static_argnums=(0,), static_argnames=("k_cap", "n_steps", "attn_impl"),
                    donate_argnums=(2,))
share_fn = jax.jit(_share, static_argnums=(0,), static_argnames=("k_cap",), donate_argnums=(2,))


def compile_counts() -> dict[str, int]:
  """Programs the engine's prefill, decode and share (copy-on-write) jits hold."""
  return {"prefill": prefill_fn._cache_size(), "decode": decode_fn._cache_size(), "share": share_fn._cache_size()}


# ------------------------------------------------------------------------------------------------ host side
@dataclasses.dataclass(eq=False)
class _Seq:
  idx: int
  prompt: list[int]
  max_new: int
  gen: list[int] = dataclasses.field(default_factory=list)
  lps: list[float] = dataclasses.field(default_factory=list)
  slps: list[float] = dataclasses.field(default_factory=list)
  pages: list[int] = dataclasses.field(default_factory=list)
  cached: int = 0          # tokens whose keys / values are in the pages
  target: int = 0          # prefill until `cached` reaches this (len(prompt + gen) at admission)
  state: str = "wait"      # wait | prefill | share (whole prompt shared, first token pending) | decode | done
  order: int = 0           # admission counter (the last admitted is preempted first)
  h: Any = None            # final-normed hidden state [D] at the prompt's last position (whole prompt in cache)
  cow_src: int = -1        # page to copy into this row's last page before it decodes (-1: none pending)
  finish: str = ""

  @property
  def full(self) -> list[int]:
    return self.prompt + self.gen


def _pow2(n: int, minimum: int = 1) -> int:
  return 1 << (max(int(n), minimum) - 1).bit_length()


def _pages(tokens: int, page: int) -> int:
  return -(-tokens // page)


def prefill_blocks(ec: EngineConfig, divisor: int = 1, span: int = 0, tokens: int = 0) -> tuple[int, int]:
  """(qblock, nblk): a prefill call's buffer is nblk query blocks of qblock tokens. A block holds tokens of one
  row, so a call packs the pieces of up to nblk rows, each padded to whole blocks.

  The buffer holds prefill_chunk tokens, or, when only `tokens` (> 0) wait for this call, the power of two
  >= tokens (at least MIN_BUFFER): a lone short prompt admitted into a freed slot does not pay for a whole
  chunk. nblk = buffer / qblock, rounded up to a multiple of the mesh's batch divisor.

  qblock is min(page, 16, prefill_chunk) for short attention spans and grows with the call's span (in tokens):
  span / SPAN_PER_BLOCK, at most buffer / divisor. Every block gathers its row's whole span of keys and
  values, so a call reads nblk x span of them per layer; growing the blocks with the span keeps that at most
  SPAN_PER_BLOCK x the buffer (a 2,048-token span read 64k keys per layer in 16-token blocks, 16k in 64-token
  ones), while rows that long lose at most qblock - 1 tokens of padding, little next to their span."""
  buffer = ec.prefill_chunk if tokens <= 0 else min(ec.prefill_chunk, _pow2(tokens, MIN_BUFFER))
  q = min(ec.page_size, MIN_CHUNK, buffer)
  top = min(span // SPAN_PER_BLOCK, buffer // divisor)
  while 2 * q <= top:
    q *= 2
  nblk = -(-(buffer // q) // divisor) * divisor
  return q, nblk


def pool_pages(cfg: Any, ec: EngineConfig, longest: int, slots: int) -> int:
  """The pool size the engine uses for rows of at most `longest` tokens (prompt + new) in `slots` slots."""
  if ec.num_pages:
    return ec.num_pages
  need = _pow2(slots * _pages(longest, ec.page_size) + 1)
  budget = pages_for_budget(cfg, int(free_memory_bytes() * ec.memory_fraction), ec.page_size)
  return min(need, budget)


def check_pool(cfg: Any, ec: EngineConfig, num_pages: int, longest: int) -> None:
  """A pool that cannot hold one row of `longest` tokens is rejected before anything runs."""
  per_row = _pages(longest, ec.page_size)
  if per_row > num_pages - 1:
    per_page = bytes_per_page(cfg, ec.page_size)
    raise ValueError(
        f"rollout engine: a row of {longest} tokens (prompt + max_new_tokens) needs {per_row} pages of "
        f"{ec.page_size} tokens, but the pool holds {num_pages - 1} (+1 trash page; {per_page} bytes a page); "
        f"raise engine.num_pages (or engine.memory_fraction when num_pages = 0), or shorten the prompt / "
        f"max_new_tokens")


def check_startup(cfg: Any, ec: EngineConfig, longest: int) -> None:
  """Reject, before a run starts, a pool (explicit or from the memory budget now) that cannot hold one row of
  `longest` tokens (the longest prompt + response the run allows)."""
  check_pool(cfg, ec, ec.num_pages or pages_for_budget(cfg, int(free_memory_bytes() * ec.memory_fraction),
                                                       ec.page_size), longest)


def generate_paged(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams,
                   rng: jax.Array | None = None, *, decode_text: Callable[[list[int]], str] | None = None,
                   row_ids: Sequence[int] | None = None, max_new_tokens: Sequence[int] | None = None,
                   engine: EngineConfig | None = None, stats: dict | None = None, pad_id: int = 0
                   ) -> static.Completions:
  """Sample one completion per prompt with the paged engine. Arguments as `sampler.generate`, plus
  max_new_tokens (one cap per prompt, default params.max_new_tokens for all), engine (EngineConfig) and
  stats (a dict that receives counters: device calls, preemptions, shared prefix pages, pool pages, seconds).
  pad_id is accepted for the static sampler's signature and unused (padding never reaches the model here)."""
  if not isinstance(params, SamplingParams):
    raise TypeError(f"generate_paged: params must be a SamplingParams, got {type(params).__name__}")
  if params.stop_strings and decode_text is None:
    raise ValueError("generate: stop_strings need decode_text (ids -> str); pass the tokenizer's decode")
  ec = engine or EngineConfig()
  prompts = [list(map(int, p)) for p in prompts]
  n = len(prompts)
  if not n:
    return static.Completions([], [], [], [], [])
  graphdef, state = static._split(model)
  cfg = static.graphdef_config(graphdef, state)
  for i, p in enumerate(prompts):
    if not p:
      raise ValueError(f"generate: prompt {i} is empty; every prompt needs at least one token")
    if min(p) < 0 or max(p) >= cfg.vocab_size:
      raise ValueError(f"generate: prompt {i} has token ids outside [0, {cfg.vocab_size})")
  caps = [params.max_new_tokens] * n if max_new_tokens is None else [int(m) for m in max_new_tokens]
  if len(caps) != n or min(caps) < 1:
    raise ValueError(f"generate_paged: max_new_tokens needs one integer >= 1 per prompt ({n}), got {max_new_tokens}")
  if row_ids is not None and len(row_ids) != n:
    raise ValueError(f"generate: {len(row_ids)} row_ids for {n} prompts; give one per prompt")
  knobs = static._knobs(params, cfg.vocab_size)
  k_cap = kcap_for(params.top_k, cfg.vocab_size)
  mesh, divisor = static._batch_sharding()
  slots = -(-min(ec.slots, static.batch_bucket(n, 1)) // divisor) * divisor
  longest = max(len(p) + c for p, c in zip(prompts, caps))
  num_pages = pool_pages(cfg, ec, longest, slots)
  check_pool(cfg, ec, num_pages, longest)
  key = jax.random.PRNGKey(params.seed) if rng is None else rng
  ids = np.arange(n, dtype=np.int64) if row_ids is None else np.asarray(row_ids, np.int64)
  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(ids % (1 << 31), jnp.int32))   # [n]
  run = _Run(graphdef, state, cfg, ec, slots, num_pages, mesh, knobs, k_cap, row_keys, params, decode_text)
  seqs = [_Seq(idx=i, prompt=p, max_new=c) for i, (p, c) in enumerate(zip(prompts, caps))]
  run.loop(seqs)
  if stats is not None:
    stats.update(run.stats)
  stops = set(params.stop_token_ids)
  res = static.Completions([], [], [], [], [])
  for s in seqs:
    t, k = s.gen, len(s.gen)
    reason = "stop" if t and t[-1] in stops else "length"
    if params.stop_strings:
      cut = static.stop_string_cut(t, params.stop_strings, decode_text)
      if cut is not None:
        k, reason = cut, "stop"
    res.tokens.append(t[:k])
    res.logprobs.append(s.lps[:k])
    res.sampling_logprobs.append(s.slps[:k])
    res.lengths.append(k)
    res.finish_reasons.append(reason)
  return res


class _Run:
  """One `generate_paged` call's scheduler: slots, pages, waiting queue."""

  def __init__(self, graphdef, state, cfg, ec: EngineConfig, slots: int, num_pages: int, mesh, knobs, k_cap,
               row_keys, params: SamplingParams, decode_text):
    self.graphdef, self.state, self.cfg, self.ec = graphdef, state, cfg, ec
    self.mesh, self.knobs, self.k_cap, self.row_keys = mesh, knobs, k_cap, row_keys
    self.params, self.decode_text = params, decode_text
    self.page = ec.page_size
    self.alloc = PageAllocator(num_pages)
    self.prefix = PrefixIndex(self.page)
    self.impl = decode_attention_impl(ec.decode_kernel)
    self.pool = empty_pool(cfg, num_pages, self.page, mesh, per_layer=self.impl != "xla")   # kernels: per layer
    self.slots: list[_Seq | None] = [None] * slots
    self.stops = set(params.stop_token_ids)
    self.admitted = 0
    self.tails: dict[tuple[int, ...], _Seq] = {}   # whole prompt -> a live row holding all of it and its h
    self.divisor = static._batch_sharding()[1]                     # the mesh's data x fsdp
    self.nblk = prefill_blocks(ec, self.divisor)[1]                  # rows per share call
    self.stats = {"prefill_calls": 0, "decode_calls": 0, "preemptions": 0, "shared_pages": 0,
                  "pool_pages": num_pages, "slots": slots, "prefill_tokens": 0, "prefill_buffer_tokens": 0,
                  "prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "cow_rows": 0, "cow_pages": 0, "share_calls": 0,
                  "prefill_block_sizes": {}}   # query-block tokens -> prefill calls that used them

  # ----- pages
  def _release(self, s: _Seq) -> None:
    self.prefix.drop(self.alloc.release(s.pages))
    s.pages = []
    key = tuple(s.prompt)
    if self.tails.get(key) is s:     # hand the prompt's tail to another live holder, if any
      del self.tails[key]
      for o in self.slots:
        if o is not None and o is not s and o.h is not None and o.prompt == s.prompt and o.pages:
          self.tails[key] = o
          break
    s.h = None

  def _grow(self, s: _Seq, tokens: int) -> None:
    more = _pages(tokens, self.page) - len(s.pages)
    if more > 0:
      s.pages += self.alloc.alloc(more)

  def _finish(self, slot: int) -> None:
    s = self.slots[slot]
    s.state = "done"
    self._release(s)
    self.slots[slot] = None

  def _preempt(self, slot: int, waiting: collections.deque) -> None:
    s = self.slots[slot]
    self._release(s)
    s.state, s.cached = "wait", 0
    self.slots[slot] = None
    waiting.appendleft(s)
    self.stats["preemptions"] += 1

  # ----- scheduling
  def loop(self, seqs: list[_Seq]) -> None:
    waiting = collections.deque(seqs)
    while waiting or any(self.slots):
      self._admit_and_share(waiting)
      # Prefill first: every admitted row finishes its prompt before the next decode call, so decode steps run
      # with as many rows as possible (a decode step costs about the same with 1 row as with all: weights are
      # read once per step). Interleaving a long prompt's pieces with decode calls instead left its row to
      # decode alone after the others finished, e.g. 192 decode steps instead of 128 in the mixed benchmark.
      while any(s is not None and s.state == "prefill" for s in self.slots):
        self._prefill_round()
        self._admit_and_share(waiting)   # rows that waited for a prompt prefilled just now join before decoding
      if any(s is not None and s.state == "decode" for s in self.slots):
        self._decode_round(waiting)

  def _admit_and_share(self, waiting: collections.deque) -> None:
    self._admit(waiting)
    if any(s is not None and s.state == "share" for s in self.slots):
      self._share_round()

  def _after_next_decode(self, s: _Seq) -> int:
    """Tokens row s holds after its next decode call: up to decode_steps more, no more than its max_new_tokens
    allows (a row still prefilling counts its whole prompt)."""
    return max(s.cached, s.target) + min(self.ec.decode_steps, s.max_new - len(s.gen))

  def _pages_short(self, s: _Seq) -> int:
    """Pages row s still needs for its next decode call."""
    return max(0, _pages(self._after_next_decode(s), self.page) - len(s.pages))

  def _headroom(self) -> int:
    """Pages the admitted rows still need for their next decode call: kept free when admitting, so a new row
    does not force a preemption at once. (Counting decode_steps tokens for every row made rows wait for pages
    that no one would use.)"""
    return sum(self._pages_short(s) for s in self.slots if s is not None)

  def _admit(self, waiting: collections.deque) -> None:
    for slot in range(len(self.slots)):
      if self.slots[slot] is not None:
        continue
      if not waiting:
        return
      s = waiting[0]
      full = s.full
      head = full[:self.page]
      if self.ec.share_prefixes and any(
          o.state == "prefill" and ((len(full) > self.page and o.full[:self.page] == head) or o.full == full)
          for o in self.slots if o is not None):
        return   # a row with the same first page is being prefilled: wait for its pages, then share them
      donor = self.tails.get(tuple(full)) if self.ec.share_prefixes and not s.gen else None
      if donor is not None:            # the whole prompt is in the pool: share it, copy its partial last page
        whole, part = divmod(len(full), self.page)
        need = 1 if part else 0
        if need + self._headroom() > self.alloc.free and any(self.slots):
          return
        if need > self.alloc.free:
          return
        waiting.popleft()
        shared = donor.pages[:whole]
        self.alloc.retain(shared)
        s.pages = list(shared) + self.alloc.alloc(need)
        s.cow_src = donor.pages[whole] if part else 0
        s.h, s.cached, s.target, s.state = donor.h, len(full), len(full), "share"
        self.stats["shared_pages"] += whole
        self.stats["cow_rows"] += 1
        self.stats["cow_pages"] += need
        s.order = self.admitted
        self.admitted += 1
        self.slots[slot] = s
        continue
      shared = self.prefix.match(full, len(full) - 1) if self.ec.share_prefixes else []
      need = _pages(len(full), self.page) - len(shared)
      if need + self._headroom() > self.alloc.free and any(self.slots):
        return   # not enough free pages: wait for running rows to finish (nothing is dropped)
      if need > self.alloc.free:
        return   # cannot happen with the start-up check unless the pool is shared; wait
      waiting.popleft()
      self.alloc.retain(shared)
      s.pages = list(shared) + self.alloc.alloc(need)
      s.cached, s.target, s.state = len(shared) * self.page, len(full), "prefill"
      self.stats["shared_pages"] += len(shared)
      s.order = self.admitted
      self.admitted += 1
      self.slots[slot] = s

  def _put(self, x: np.ndarray) -> jax.Array:
    return static._put(x, self.mesh)

  def _prefill_round(self) -> None:
    """Prefill calls until every row in prefill has had one piece: each call packs the pieces of several rows
    (oldest admitted first) into a buffer of `nblk` blocks of `q` tokens (`prefill_blocks`: the blocks grow
    with the call's attention span); a row's piece fills whole blocks from the first free one, and a piece that
    does not fit is cut at the buffer's end or at the span's end (the rest goes in the next round). A call holds
    only pieces of one attention span (the first row's), so short prompts packed together do not read the span
    of a long one that is prefilling at the same time."""
    pending = sorted((s for s in self.slots if s is not None and s.state == "prefill"), key=lambda s: s.order)
    while pending:
      first = pending[0]   # the oldest row sets the call's span (its piece as long as the buffer allows)
      nb = self._span(_pages(first.cached + min(first.target - first.cached, self.ec.prefill_chunk), self.page))
      q_full = prefill_blocks(self.ec, self.divisor, nb * self.page)[0]
      # tokens (padded to blocks) of the pieces that can go in this call: sizes the buffer
      want = sum(_pages(m, q_full) * q_full for m in (self._piece(s, nb, self.ec.prefill_chunk) for s in pending))
      q, nblk = prefill_blocks(self.ec, self.divisor, nb * self.page, want)
      toks = np.zeros((nblk, q), np.int32)
      pos = np.zeros((nblk, q), np.int32)
      valid = np.zeros((nblk, q), bool)
      last = np.zeros((nblk,), np.int32)          # flat index (block * q + column) of a row's last token
      steps = np.zeros((nblk,), np.int32)
      key_rows = np.zeros((nblk,), np.int32)
      placed = []                                 # (seq, tokens, first block, entry in last / steps / keys)
      rest = []                                   # rows for a later call of this round
      b = 0
      for s in pending:
        if b == nblk:
          rest.append(s)
          continue
        m = self._piece(s, nb, (nblk - b) * q)
        if not m:
          rest.append(s)
          continue
        at = np.arange(m)
        blk, col = b + at // q, at % q
        toks[blk, col] = s.full[s.cached:s.cached + m]
        pos[blk, col] = s.cached + at
        valid[blk, col] = True
        e = len(placed)
        last[e], steps[e], key_rows[e] = b * q + m - 1, len(s.gen), s.idx
        placed.append((s, m, b, e))
        b += _pages(m, q)
      pending = rest
      table = np.zeros((nblk, nb), np.int32)
      for s, m, b0, _ in placed:
        got = s.pages[:nb]
        table[b0:b0 + _pages(m, q), :len(got)] = got
      keys = self.row_keys[jnp.asarray(key_rows)]
      t0 = time.perf_counter()
      self.pool, tok, lp, slp, h = prefill_fn(
          self.graphdef, self.state, self.pool, self._put(toks), self._put(pos), self._put(valid), self._put(table),
          self._put(last), keys, self._put(steps), self.knobs, k_cap=self.k_cap, attn_impl="xla")
      self.stats["prefill_calls"] += 1
      self.stats["prefill_tokens"] += sum(m for _, m, _, _ in placed)
      self.stats["prefill_buffer_tokens"] += nblk * q
      sizes = self.stats["prefill_block_sizes"]
      sizes[q] = sizes.get(q, 0) + 1
      tok, lp, slp, h = placement.to_host((tok, lp, slp, h))
      self.stats["prefill_s"] += time.perf_counter() - t0
      for s, m, _, e in placed:
        s.cached += m
        if self.ec.share_prefixes:
          self.prefix.add(s.full, s.pages, s.cached)
        if s.cached == s.target:
          s.state = "decode"
          if self.ec.share_prefixes and not s.gen:   # whole prompt in the pool: rows with the same prompt share it
            s.h = h[e]
            self.tails.setdefault(tuple(s.prompt), s)
          self._record(s, [int(tok[e])], [float(lp[e])], [float(slp[e])])

  def _share_round(self) -> None:
    """Rows admitted onto a whole shared prompt: copy the prompt's partial last page into their own page and
    draw their first tokens from the prompt's final hidden state (calls of nblk rows)."""
    rows = [s for s in self.slots if s is not None and s.state == "share"]
    r = self.nblk
    for i in range(0, len(rows), r):
      part = rows[i:i + r]
      src = np.zeros((r,), np.int32)
      dst = np.zeros((r,), np.int32)
      h = np.zeros((r, self.cfg.hidden_size), np.float32)
      steps = np.zeros((r,), np.int32)
      key_rows = np.zeros((r,), np.int32)
      for j, s in enumerate(part):
        if s.cow_src > 0:
          src[j], dst[j] = s.cow_src, s.pages[-1]
        h[j], key_rows[j] = s.h, s.idx
      t0 = time.perf_counter()
      self.pool, tok, lp, slp = share_fn(self.graphdef, self.state, self.pool, self._put(src), self._put(dst),
                                         self._put(h), self.row_keys[jnp.asarray(key_rows)], self._put(steps),
                                         self.knobs, k_cap=self.k_cap)
      tok, lp, slp = placement.to_host((tok, lp, slp))
      self.stats["prefill_s"] += time.perf_counter() - t0
      self.stats["share_calls"] += 1
      for j, s in enumerate(part):
        s.cow_src, s.state = -1, "decode"
        self.tails.setdefault(tuple(s.prompt), s)
        self._record(s, [int(tok[j])], [float(lp[j])], [float(slp[j])])

  def _piece(self, s: _Seq, nb: int, room: int) -> int:
    """Tokens of row s's next prefill piece in a call of span nb pages with `room` tokens free; 0 when it
    does not belong in that call. One span per call: a short prompt's blocks never read a long prompt's span
    (nor the reverse)."""
    m = min(s.target - s.cached, room, nb * self.page - s.cached)
    return m if m > 0 and self._span(_pages(s.cached + m, self.page)) == nb else 0

  def _span(self, pages: int) -> int:
    """Pages the attention reads per row: a power of two >= pages (and >= MIN_SPAN tokens)."""
    return _pow2(pages, max(1, MIN_SPAN // self.page))

  def _flat(self, live: list[tuple[int, _Seq]], n_slots: int) -> FlatPages:
    """The live rows' pages listed flat, padded to a power of two (>= MIN_SPAN tokens per slot: fewer decode
    programs, for attention over a few padding pages) with masked entries."""
    pages, rows, first = [], [], []
    start = np.zeros((n_slots,), np.int32)
    for i, s in live:
      start[i] = len(pages)
      pages += s.pages
      rows += [i] * len(s.pages)
      first += [k * self.page for k in range(len(s.pages))]
    n = _pow2(len(pages), max(1, n_slots * MIN_SPAN // self.page))
    pad = n - len(pages)
    as_i32 = lambda x: jnp.asarray(np.asarray(x, np.int32))  # noqa: E731
    return FlatPages(pages=as_i32(pages + [0] * pad), row=as_i32(rows + [n_slots - 1] * pad),
                     first=as_i32(first + [1 << 30] * pad), row_start=self._put(start))

  def _table(self, rows: Sequence[_Seq | None], r: int, nb: int) -> np.ndarray:
    table = np.zeros((r, nb), np.int32)
    for j, s in enumerate(rows):
      if s is not None and s.state in ("prefill", "decode"):
        got = s.pages[:nb]
        table[j, :len(got)] = got
    return table

  def _record(self, s: _Seq, toks: list[int], lps: list[float], slps: list[float]) -> None:
    s.gen += toks
    s.lps += lps
    s.slps += slps
    if (s.gen and s.gen[-1] in self.stops) or len(s.gen) >= s.max_new:
      s.state = "done"
    elif self.params.stop_strings and any(x in self.decode_text(s.gen) for x in self.params.stop_strings):
      s.state = "done"
    if s.state == "done":
      self._finish(next(i for i, o in enumerate(self.slots) if o is s))

  def _decode_round(self, waiting: collections.deque) -> None:
    k = self.ec.decode_steps
    while True:   # pages for up to k more tokens per decoding row; preempt the last admitted row if short
      live = [(i, s) for i, s in enumerate(self.slots) if s is not None and s.state == "decode"]
      if sum(self._pages_short(s) for _, s in live) <= self.alloc.free:
        break
      victim = max((i for i, s in enumerate(self.slots) if s is not None), key=lambda i: self.slots[i].order)
      self._preempt(victim, waiting)
    if not live:
      return
    for i, s in live:
      self._grow(s, self._after_next_decode(s))
    n_slots = len(self.slots)
    table, flat = None, None
    if self.impl != "xla":   # a Pallas kernel: a page table of the longest live row's span
      nb = self._span(max(len(s.pages) for _, s in live))
      table = self._put(self._table([s if s is not None and s.state == "decode" else None for s in self.slots],
                                    n_slots, nb))
    else:
      flat = self._flat(live, n_slots)
    last, pos, step, max_new = (np.zeros((n_slots,), np.int32) for _ in range(4))
    done = np.ones((n_slots,), bool)
    key_rows = np.zeros((n_slots,), np.int32)
    for i, s in live:
      last[i], pos[i], step[i], max_new[i], done[i], key_rows[i] = s.gen[-1], s.cached, len(s.gen), s.max_new, \
          False, s.idx
    st = Slots(last=self._put(last), pos=self._put(pos), step=self._put(step), max_new=self._put(max_new),
               done=self._put(done), keys=self.row_keys[jnp.asarray(key_rows)])
    t0 = time.perf_counter()
    self.pool, st, (ot, olp, oslp) = decode_fn(self.graphdef, self.state, self.pool, st, table, flat,
                                               self.knobs, k_cap=self.k_cap, n_steps=k, attn_impl=self.impl)
    self.stats["decode_calls"] += 1
    new_step, ot, olp, oslp = placement.to_host((st.step, ot, olp, oslp))
    self.stats["decode_s"] += time.perf_counter() - t0
    self.stats["decode_steps"] += max(int(new_step[i]) - len(s.gen) for i, s in live)
    for i, s in live:
      cnt = int(new_step[i]) - len(s.gen)
      s.cached += cnt
      self._record(s, ot[i, :cnt].tolist(), olp[i, :cnt].tolist(), oslp[i, :cnt].tolist())
