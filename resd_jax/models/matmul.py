"""Mixed-precision matmuls: inputs in the compute dtype, accumulation and output in float32, both directions.

`mixed_einsum(eq, x, w, dtype)` is `einsum(eq, x.astype(dtype), w.astype(dtype))` with float32 accumulation.
For float32 and narrower dtypes its backward pass is written out by hand: the float32 cotangent is cast to
`dtype` and the two transposed einsums run with `dtype` inputs and float32 accumulation, like the forward (this
is what mixed-precision training does on accelerators, too). float64 uses plain autodiff.

Why not let autodiff transpose the einsum:
- bfloat16: the automatic transpose multiplies the float32 cotangent by the bfloat16 operand, and XLA:CPU runs
  such mixed-dtype dots by converting both sides to float32, at about half the bfloat16 rate; some of the
  weight-gradient dots also fall off its fast path. For the `small` preset's MLP (B=4, T=768) forward + backward
  took 5.4x the forward with autodiff's transpose and 3.0x with this one (the ideal is 3x). The gradients differ
  from the float32-cotangent ones by the bfloat16 rounding of the cotangent (about 0.4% relative).
- float32: the arithmetic is the same as autodiff's, but the explicit transposed einsums lay the matmuls out
  better for XLA:CPU: the `small` preset's student forward + backward took 4.96 s instead of 6.47 s (median of
  3, interleaved). Results match plain einsum to float32 rounding (summation order).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _operands(eq: str) -> tuple[str, str, str]:
  """Split 'a,b->c' into its three index strings; the equation must have two operands and an explicit output."""
  if "->" not in eq or eq.count(",") != 1:
    raise ValueError(f"mixed_einsum needs an equation 'x,w->out' with two operands and an explicit output, "
                     f"got {eq!r}")
  ins, out = eq.replace(" ", "").split("->")
  a, b = ins.split(",")
  for name, idx, others in (("first", a, b + out), ("second", b, a + out)):
    lonely = sorted(set(idx.replace("...", "")) - set(others))
    if lonely:
      raise ValueError(f"mixed_einsum {eq!r}: index {lonely} of the {name} operand appears nowhere else "
                       f"(sum it out before the einsum)")
  return a, b, out


def batched_matmul_einsum(eq: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """einsum(eq, x, w) as one [batch, M, K] x [batch, K, N] dot with float32 accumulation.

  The operands are transposed and reshaped into that layout first, so XLA sees a plain batched matmul. For
  the small, many-batched matmuls of attention (contractions over 64 head dims or over the keys) this ran
  20-25% faster forward + backward on XLA:CPU than the einsum's own dot. No ellipsis.
  """
  a, b, c = _operands(eq)
  if "..." in eq:
    raise ValueError(f"batched_matmul_einsum does not take an ellipsis: {eq!r}")
  batch = [i for i in a if i in b and i in c]
  contract = [i for i in a if i in b and i not in c]
  free_a = [i for i in a if i not in b]
  free_b = [i for i in b if i not in a]
  size = {**dict(zip(a, x.shape)), **dict(zip(b, w.shape))}
  n = lambda idx: math.prod(size[i] for i in idx)  # noqa: E731
  lhs = jnp.transpose(x, [a.index(i) for i in batch + free_a + contract]).reshape(n(batch), n(free_a), n(contract))
  rhs = jnp.transpose(w, [b.index(i) for i in batch + contract + free_b]).reshape(n(batch), n(contract), n(free_b))
  out = jax.lax.dot_general(lhs, rhs, (((2,), (1,)), ((0,), (0,))), preferred_element_type=_F32)
  order = batch + free_a + free_b
  return jnp.transpose(out.reshape([size[i] for i in order]), [order.index(i) for i in c])


def _matmul(eq: str, x: jax.Array, w: jax.Array, batched: bool) -> jax.Array:
  if batched:
    return batched_matmul_einsum(eq, x, w)
  return jnp.einsum(eq, x, w, preferred_element_type=_F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _einsum_with_vjp(eq: str, dtype, batched: bool, x: jax.Array, w: jax.Array) -> jax.Array:
  return _matmul(eq, x.astype(dtype), w.astype(dtype), batched)


def _einsum_fwd(eq, dtype, batched, x, w):
  # The residuals are the operands as given, not their compute-dtype copies: under the layer scan, XLA:CPU turned
  # stacked bfloat16 residuals into float32 arrays and back (1.8 s of a 7.5 s step); this is what autodiff
  # would keep too.
  return _matmul(eq, x.astype(dtype), w.astype(dtype), batched), (x, w)


def _transposed_products(eq, dtype, batched, x, wc, ct):
  """(dx, dw) in float32 for out = einsum(eq, x, w): the float32 cotangent ct cast to `dtype`, wc = w in `dtype`."""
  a, b, out = _operands(eq)
  ct = ct.astype(dtype)
  return _matmul(f"{out},{b}->{a}", ct, wc, batched), _matmul(f"{a},{out}->{b}", x.astype(dtype), ct, batched)


def _einsum_bwd(eq, dtype, batched, res, ct):
  x, w = res
  dx, dw = _transposed_products(eq, dtype, batched, x, w.astype(dtype), ct)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_einsum_with_vjp.defvjp(_einsum_fwd, _einsum_bwd)


# The same product when the caller already holds w in the compute dtype (w_cast): both directions use w_cast, and
# w's gradient still comes back in w's own dtype (it never needs w's values). Inside a loop that runs the
# product many times over one weight (the loss's chunk scan over the LM head), this saves casting the weight in
# every iteration, forward and backward: XLA did not hoist those casts out of the loop.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _einsum_precast_with_vjp(eq: str, dtype, batched: bool, w_dtype, x: jax.Array, w: jax.Array,
                             w_cast: jax.Array) -> jax.Array:
  del w
  return _matmul(eq, x.astype(dtype), w_cast, batched)


def _einsum_precast_fwd(eq, dtype, batched, w_dtype, x, w, w_cast):
  del w
  return _matmul(eq, x.astype(dtype), w_cast, batched), (x, w_cast)


def _einsum_precast_bwd(eq, dtype, batched, w_dtype, res, ct):
  x, wc = res
  dx, dw = _transposed_products(eq, dtype, batched, x, wc, ct)
  return dx.astype(x.dtype), dw.astype(w_dtype), None


_einsum_precast_with_vjp.defvjp(_einsum_precast_fwd, _einsum_precast_bwd)


def mixed_einsum(eq: str, x: jax.Array, w: jax.Array, dtype, batched: bool = False,
                 w_cast: jax.Array | None = None) -> jax.Array:
  """einsum with inputs in `dtype` and float32 accumulation/output, and a `dtype` backward (see the module doc).

  batched=True: run every matmul (forward and backward) through `batched_matmul_einsum`. float64: plain einsum.
  w_cast: optional `w.astype(dtype)` computed once by the caller; the result and both gradients are the same,
  without casting w here (w still receives the gradient, in its own dtype).
  """
  dtype = jnp.dtype(dtype)
  if w_cast is not None and (w_cast.shape != w.shape or w_cast.dtype != dtype):
    raise ValueError(f"mixed_einsum: w_cast must be w.astype({dtype.name}), shape {w.shape}; got "
                     f"{w_cast.dtype} {w_cast.shape}")
  if dtype.itemsize > 4:
    return jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=_F32)
  _operands(eq)  # validate at trace time, not first in the backward
  if w_cast is not None:
    return _einsum_precast_with_vjp(eq, dtype, batched, jnp.dtype(w.dtype), x, w, w_cast)
  return _einsum_with_vjp(eq, dtype, batched, x, w)
