"""Batched generation with a KV cache: one jitted prefill, one jitted `while_loop` decode, per-token log-probs.

`generate(model, prompts, params, rng) -> Completions`. Prompts (token lists of mixed lengths) are left-padded
to a length bucket (powers of two from 32) and the batch is padded to a batch bucket (powers of two, and a
multiple of the mesh's data x fsdp size), so each (bucket, model structure, top-k cap) compiles once; the
temperature, top-p, top-k, max_new_tokens and stop tokens are traced values and never recompile.

The jitted functions are pure over (graphdef, state) and live at module level, so `jax.jit`'s own cache
(keyed by the static graphdef and the shapes) is the per-bucket cache. The decode state is donated, so
the KV cache is updated in place; the model writes the whole cache once per step.

Randomness is per row: row i's key is fold_in(rng, i) with i its index in `prompts`, then fold_in(step);
a prompt's sample therefore does not depend on its batch neighbours or the bucket it landed in.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resd_jax.models.kv_cache import CACHE_AXES, KVCache
from resd_jax.parallel import placement
from resd_jax.parallel import sharding as shd
from resd_jax.sampling.draw import draw, kcap_for
from resd_jax.sampling.params import SamplingParams

MIN_PROMPT_BUCKET = 32
MIN_NEW_BUCKET = 32
# Stop-token ids are padded to this many (-1 = unused) so their number never changes a compiled shape.
MAX_STOP_TOKENS = 16


@dataclasses.dataclass
class Completions:
  """Results of `generate`, one entry per prompt, in the order of the prompts.

  tokens: generated ids (a final stop token included). logprobs: policy log-probs log_softmax(logits) of those
  tokens (before temperature/top-k/top-p). sampling_logprobs: log-probs under the distribution actually
  sampled from (0 for greedy). lengths: len(tokens). finish_reasons: 'stop' (stop token or stop string) or
  'length' (max_new_tokens reached).
  """
  tokens: list[list[int]]
  logprobs: list[list[float]]
  sampling_logprobs: list[list[float]]
  lengths: list[int]
  finish_reasons: list[str]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
  """Carry of the decode `while_loop` (B = batch bucket, N = new-token bucket).

  step: [] int32, tokens generated so far (all rows advance together).
  last: [B] int32, the token fed to the next forward (the one sampled last).
  done: [B] bool, row has emitted a stop token or reached max_new_tokens (padding rows start done).
  lengths: [B] int32, tokens generated per row (frozen once done).
  tokens / logprobs / sampling_logprobs: [B, N] outputs, written at column `step`.
  row_keys: [B] PRNG keys, one per row (fold_in of the call's key with the row's index in `prompts`).
  cache: the KV cache, [L, B, P + N, KVH, Dh].
  """
  step: jax.Array
  last: jax.Array
  done: jax.Array
  lengths: jax.Array
  tokens: jax.Array
  logprobs: jax.Array
  sampling_logprobs: jax.Array
  row_keys: jax.Array
  cache: KVCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Knobs:
  """Traced sampling settings: changing them does not recompile."""
  temperature: jax.Array   # [] float32
  top_p: jax.Array         # [] float32
  top_k: jax.Array         # [] int32
  max_new: jax.Array       # [] int32
  stop_ids: jax.Array      # [MAX_STOP_TOKENS] int32, -1 = unused


def bucket(n: int, minimum: int) -> int:
  """The smallest power of two >= max(n, minimum)."""
  return 1 << (max(int(n), int(minimum)) - 1).bit_length()


def batch_bucket(n: int, divisor: int = 1) -> int:
  """Batch padded to a power of two, and to a multiple of `divisor` (the mesh's batch-sharding size)."""
  b = bucket(n, 1)
  return -(-b // divisor) * divisor


def _step_draw(state: DecodeState, logits: jax.Array, knobs: Knobs, k_cap: int) -> DecodeState:
  """Sample one token per row from logits [B, V] and record it at column `step`."""
  keys = jax.vmap(jax.random.fold_in, (0, None))(state.row_keys, state.step)
  tok, lp, slp = draw(logits, keys, knobs.temperature, knobs.top_p, knobs.top_k, k_cap)
  live = ~state.done
  col = state.step
  put = lambda buf, val: jax.lax.dynamic_update_slice(buf, jnp.where(live, val, buf[:, col])[:, None], (0, col))
  is_stop = jnp.any(tok[:, None] == knobs.stop_ids[None, :], axis=-1)
  step = state.step + 1
  return dataclasses.replace(
      state, step=step, last=jnp.where(live, tok, state.last), lengths=state.lengths + live.astype(jnp.int32),
      done=state.done | is_stop | (step >= knobs.max_new), tokens=put(state.tokens, tok),
      logprobs=put(state.logprobs, lp), sampling_logprobs=put(state.sampling_logprobs, slp))


def _prefill(graphdef: Any, params: Any, cache: KVCache, tokens: jax.Array, mask: jax.Array, live: jax.Array,
             row_keys: jax.Array, knobs: Knobs, *, k_cap: int) -> DecodeState:
  """Run the prompts [B, P] (left-padded; mask False at padding) into the empty cache [.., B, P + N, ..] and
  draw the first token of each. The cache is an argument (donated), not built inside: an all-zero constant
  cache would make XLA constant-fold the attention over it at compile time."""
  model = nnx.merge(graphdef, params)
  b, p = tokens.shape
  new_bucket = cache.max_len - p
  hidden, cache = model(tokens, None, mask, cache)                          # [B, P, D]
  logits = model.logits(hidden[:, -1])                                      # [B, V]: left padding -> last is real
  zeros_f = jnp.zeros((b, new_bucket), jnp.float32)
  state = DecodeState(step=jnp.zeros((), jnp.int32), last=jnp.zeros((b,), jnp.int32), done=~live,
                      lengths=jnp.zeros((b,), jnp.int32), tokens=jnp.zeros((b, new_bucket), jnp.int32),
                      logprobs=zeros_f, sampling_logprobs=zeros_f, row_keys=row_keys, cache=cache)
  return _step_draw(state, logits, knobs, k_cap)


def _decode(graphdef: Any, params: Any, state: DecodeState, knobs: Knobs, *, k_cap: int) -> DecodeState:
  """Decode until every row is done (or the new-token bucket is full)."""
  model = nnx.merge(graphdef, params)
  n = state.tokens.shape[1]

  def cond(s: DecodeState):
    return (s.step < n) & ~jnp.all(s.done)

  def body(s: DecodeState):
    hidden, cache = model(s.last[:, None], None, ~s.done[:, None], s.cache)  # [B, 1, D]
    return _step_draw(dataclasses.replace(s, cache=cache), model.logits(hidden[:, 0]), knobs, k_cap)

  return jax.lax.while_loop(cond, body, state)


prefill_fn = jax.jit(_prefill, static_argnums=(0,), static_argnames=("k_cap",), donate_argnums=(2,))


def empty_cache(cfg: Any, batch: int, max_len: int, mesh: Any = None) -> KVCache:
  """A zero KV cache [L, batch, max_len, KVH, Dh], laid out on `mesh` by CACHE_AXES when given."""
  cache = KVCache.init(cfg, batch, max_len)
  if mesh is None:
    return cache
  put = lambda x, axes: placement.put(x, jax.sharding.NamedSharding(mesh, shd.spec_for(x.shape, axes, mesh)))
  return KVCache(k=put(cache.k, CACHE_AXES), v=put(cache.v, CACHE_AXES), mask=put(cache.mask, ("batch", None)),
                 index=put(cache.index, ()), lengths=put(cache.lengths, ("batch",)))
decode_fn = jax.jit(_decode, static_argnums=(0,), static_argnames=("k_cap",), donate_argnums=(2,))


def compile_counts() -> dict[str, int]:
  """How many programs the prefill and decode jits hold (one per bucket and model structure)."""
  return {"prefill": prefill_fn._cache_size(), "decode": decode_fn._cache_size()}


# ------------------------------------------------------------------------------------------------ host side
def _split(model_or_split: Any) -> tuple[Any, Any]:
  if isinstance(model_or_split, nnx.Module):
    return nnx.split(model_or_split)
  if isinstance(model_or_split, tuple) and len(model_or_split) == 2:
    return model_or_split
  raise TypeError(f"generate: expected an nnx model or a (graphdef, state) pair, got {type(model_or_split).__name__}")


def _batch_sharding():
  """NamedSharding for [B, ...] host arrays under the active mesh (None without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None, 1
  concrete = jax.sharding.get_mesh() if hasattr(jax.sharding, "get_mesh") else None
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return concrete, sizes.get("data", 1) * sizes.get("fsdp", 1)


def _put(x: np.ndarray, mesh: Any) -> jax.Array:
  if mesh is None or getattr(mesh, "empty", False):
    return jnp.asarray(x)
  spec = shd.spec_for(x.shape, ("batch",) + (None,) * (x.ndim - 1), mesh)
  return placement.put(x, jax.sharding.NamedSharding(mesh, spec))


def _knobs(params: SamplingParams, vocab: int) -> Knobs:
  if len(params.stop_token_ids) > MAX_STOP_TOKENS:
    raise ValueError(f"generate: at most {MAX_STOP_TOKENS} stop_token_ids are supported, got "
                     f"{len(params.stop_token_ids)}; use stop_strings for the rest")
  bad = [t for t in params.stop_token_ids if t >= vocab]
  if bad:
    raise ValueError(f"generate: stop_token_ids {bad} are outside the vocabulary of size {vocab}")
  stops = np.full((MAX_STOP_TOKENS,), -1, np.int32)
  stops[:len(params.stop_token_ids)] = params.stop_token_ids
  return Knobs(temperature=jnp.float32(params.temperature), top_p=jnp.float32(params.top_p),
               top_k=jnp.int32(params.top_k), max_new=jnp.int32(params.max_new_tokens), stop_ids=jnp.asarray(stops))


def generate(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams, rng: jax.Array | None = None,
             *, pad_id: int = 0, decode_text: Callable[[list[int]], str] | None = None,
             row_ids: Sequence[int] | None = None) -> Completions:
  """Sample one completion per prompt.

  model: an nnx Transformer or a (graphdef, state) pair (e.g. the training state's weights); under
  `jax.set_mesh(mesh)` the batch is sharded over data x fsdp and the weights stay in their layout.
  prompts: token-id lists (non-empty, mixed lengths). rng: a PRNG key (default: PRNGKey(params.seed)).
  decode_text: ids -> text, needed only for `params.stop_strings`.
  row_ids: one integer per prompt folded into the key (default 0..n-1); callers that reorder or split
  prompts into several calls pass the original indices so each prompt keeps its own random stream.
  """
  if not isinstance(params, SamplingParams):
    raise TypeError(f"generate: params must be a SamplingParams, got {type(params).__name__}")
  if params.stop_strings and decode_text is None:
    raise ValueError("generate: stop_strings need decode_text (ids -> str); pass the tokenizer's decode")
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts:
    return Completions([], [], [], [], [])
  graphdef, state = _split(model)
  cfg = graphdef_config(graphdef, state)
  for i, p in enumerate(prompts):
    if not p:
      raise ValueError(f"generate: prompt {i} is empty; every prompt needs at least one token")
    if min(p) < 0 or max(p) >= cfg.vocab_size:
      raise ValueError(f"generate: prompt {i} has token ids outside [0, {cfg.vocab_size})")
  mesh, divisor = _batch_sharding()
  n, longest = len(prompts), max(map(len, prompts))
  p_len, new_len, b = bucket(longest, MIN_PROMPT_BUCKET), bucket(params.max_new_tokens, MIN_NEW_BUCKET), \
      batch_bucket(n, divisor)
  toks = np.full((b, p_len), pad_id, np.int32)
  mask = np.zeros((b, p_len), bool)
  for i, p in enumerate(prompts):
    toks[i, p_len - len(p):] = p
    mask[i, p_len - len(p):] = True
  mask[n:, -1] = True                                                       # padding rows: one dummy token
  live = np.arange(b) < n
  key = jax.random.PRNGKey(params.seed) if rng is None else rng
  ids = np.arange(b, dtype=np.int64) + (0 if row_ids is None else 1 << 30)  # padding rows: unused keys
  if row_ids is not None:
    if len(row_ids) != n:
      raise ValueError(f"generate: {len(row_ids)} row_ids for {n} prompts; give one per prompt")
    ids[:n] = np.asarray(row_ids, np.int64)
  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(ids % (1 << 31), jnp.int32))
  knobs = _knobs(params, cfg.vocab_size)
  k_cap = kcap_for(params.top_k, cfg.vocab_size)
  if mesh is not None:
    row_keys = placement.put(row_keys, jax.sharding.NamedSharding(mesh, shd.spec_for((b,), ("batch",), mesh)))
  cache = empty_cache(cfg, b, p_len + new_len, mesh)
  st = prefill_fn(graphdef, state, cache, _put(toks, mesh), _put(mask, mesh), _put(live, mesh), row_keys, knobs,
                  k_cap=k_cap)
  st = decode_fn(graphdef, state, st, knobs, k_cap=k_cap)
  out_t, out_lp, out_slp, out_len = placement.to_host((st.tokens, st.logprobs, st.sampling_logprobs, st.lengths))
  stops = set(params.stop_token_ids)
  res = Completions([], [], [], [], [])
  for i in range(n):
    k = int(out_len[i])
    t = out_t[i, :k].tolist()
    reason = "stop" if t and t[-1] in stops else "length"
    if params.stop_strings:
      cut = stop_string_cut(t, params.stop_strings, decode_text)
      if cut is not None:
        k, t, reason = cut, t[:cut], "stop"
    res.tokens.append(t)
    res.logprobs.append(out_lp[i, :k].tolist())
    res.sampling_logprobs.append(out_slp[i, :k].tolist())
    res.lengths.append(k)
    res.finish_reasons.append(reason)
  return res


def graphdef_config(graphdef: Any, state: Any) -> Any:
  """The ModelConfig of a split model (the graphdef carries it as a static attribute)."""
  return nnx.merge(graphdef, state).config


def stop_string_cut(tokens: list[int], stop_strings: Sequence[str], decode_text: Callable[[list[int]], str]
                    ) -> int | None:
  """The shortest prefix length whose decoded text contains a stop string (None if no stop string occurs)."""
  if not any(s in decode_text(tokens) for s in stop_strings):
    return None
  lo, hi = 0, len(tokens)                                                   # decode(tokens[:hi]) contains one
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if any(s in decode_text(tokens[:mid]) for s in stop_strings):
      hi = mid
    else:
      lo = mid
  return hi
