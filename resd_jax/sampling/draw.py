"""Drawing the next token from logits: temperature, top-k, top-p (sort-free), greedy; with log-probabilities.

Everything here is traced: temperature, top_p and top_k are array scalars, so changing them does not
recompile. Only `k_cap` (a static upper bound on top_k, a power of two) is part of the compiled shape.

Top-p avoids sorting the vocabulary: the kept set is {p >= tau} for the largest tau whose set still holds
mass >= top_p. Positive float32 values keep their order when their bits are read as int32, so tau is found
exactly by bisection over the 31-bit integer range (31 masked sums over the vocabulary, no sort).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def kcap_for(top_k: int, vocab: int) -> int:
  """Static bound for `jax.lax.top_k`: 0 when top-k is off, else the next power of two >= top_k (<= vocab)."""
  if top_k <= 0 or top_k >= vocab:
    return 0
  return min(vocab, 1 << (int(top_k) - 1).bit_length())


def top_k_mask(logits: jax.Array, top_k: jax.Array, k_cap: int) -> jax.Array:
  """logits [B, V] with everything below the top_k-th largest value set to -inf (ties at the boundary kept)."""
  if k_cap == 0:
    return logits
  vals, _ = jax.lax.top_k(logits, k_cap)                                    # [B, k_cap] descending
  k = jnp.clip(top_k, 1, k_cap)
  kth = jnp.take(vals, k - 1, axis=-1)[:, None]                             # [B, 1]
  keep = (top_k <= 0) | (logits >= kth)
  return jnp.where(keep, logits, _NEG_INF)


def top_p_mask(logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """logits [B, V] (finite or -inf) restricted to the nucleus of mass top_p of softmax(logits)."""
  probs = jax.nn.softmax(logits, axis=-1)                                   # [B, V] float32, >= 0
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)                     # order-preserving for p >= 0
  lo = jnp.zeros(probs.shape[:1], jnp.int32)                                # mass(bits >= lo) = 1 >= top_p
  hi = jnp.max(bits, axis=-1) + 1                                           # mass(bits >= hi) = 0 < top_p

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    mass = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), axis=-1)     # [B]
    ok = mass >= top_p
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return jnp.where((top_p >= 1.0) | (bits >= lo[:, None]), logits, _NEG_INF)


def sampling_logits(logits: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array,
                    k_cap: int) -> jax.Array:
  """The logits of the sampling distribution [B, V]: temperature, then top-k, then top-p (-inf = excluded)."""
  t = jnp.where(temperature > 0, temperature, 1.0)
  x = top_k_mask(logits.astype(jnp.float32) / t, top_k, k_cap)
  return jax.lax.cond(jnp.all(top_p >= 1.0), lambda x: x, lambda x: top_p_mask(x, top_p), x)


def draw(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array,
         k_cap: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One token per row.

  logits [B, V] float32 (the policy's); keys [B] per-row PRNG keys. Returns (tokens [B] int32,
  policy log-probs [B] = log_softmax(logits) at the token, sampling log-probs [B] under the distribution
  actually sampled from; 0 for greedy, which is a point mass).
  """
  logits = logits.astype(jnp.float32)

  def greedy(_):
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return tok, jnp.zeros(tok.shape, jnp.float32)

  def sample(_):
    sl = sampling_logits(logits, temperature, top_p, top_k, k_cap)
    tok = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, sl).astype(jnp.int32)
    return tok, jnp.take_along_axis(jax.nn.log_softmax(sl, axis=-1), tok[:, None], axis=-1)[:, 0]

  tok, samp_lp = jax.lax.cond(temperature > 0, sample, greedy, None)
  policy_lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
  return tok, policy_lp, samp_lp
