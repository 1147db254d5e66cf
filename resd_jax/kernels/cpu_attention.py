"""Fused causal attention for the CPU: a C++ kernel (cpu_attention.cc) called through the XLA FFI.

On XLA:CPU, blocked attention runs the QK^T matmul, the mask, the softmax and the PV matmul as separate ops over
each block's float32 scores, and reached ~135 GFLOP/s where the MLP matmuls reached ~690 (bench/RESULTS.md).
The kernel keeps a tile of query rows' scores in the caches through all of it, with bf16 inputs, float32
accumulation and AVX512-BF16 pair dot products where the CPU has them; the backward recomputes the
probabilities from the saved log-sum-exp, like flash attention.

The source is compiled on first use (resd_jax/kernels/build.py). `available()` says whether that worked;
`ModelConfig.attn_impl="auto"` uses the kernel only when it did, and falls back to blocked attention otherwise.
The kernel is the optional attention backend `cpu_fused` (registered below, see resd_jax/backends.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from resd_jax import backends
from resd_jax.kernels.build import CppKernel

HEAD_DIMS = (64, 128, 192, 256)  # head sizes the kernel takes (multiples of 64)
KERNEL = CppKernel("cpu_attention", {"fwd": "ResdCpuAttentionForward", "bwd": "ResdCpuAttentionBackward"},
                   what="blocked attention", simd_symbol="ResdCpuAttentionSimd")


def available() -> bool:
  """Whether the kernel is built and loaded here (see CppKernel.available); `auto` attention needs it."""
  return KERNEL.available()


def supports(head_dim: int, compute_dtype) -> bool:
  return head_dim in HEAD_DIMS and jnp.dtype(compute_dtype) == jnp.bfloat16


def _forward_call(q, k, v, kv_mask, q_offset: int, march: str):
  b, tq, kvh, g, _ = q.shape
  out_types = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, kvh, tq, g), jnp.float32))
  return jax.ffi.ffi_call(KERNEL.target("fwd", march), out_types, vmap_method="sequential")(
      q, k, v, kv_mask, q_offset=np.int64(q_offset))


# q [B, Tq, KVH, G, Dh] (pre-scaled), k/v [B, T, KVH, Dh], all float32: the kernel reads bf16 copies, and the
# gradients come back in float32 (as the blocked path's do).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, kv_mask, q_offset, march):
  return _forward_call(*(x.astype(jnp.bfloat16) for x in (q, k, v)), kv_mask, q_offset, march)[0]


def _attention_fwd(q, k, v, kv_mask, q_offset, march):
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  out, lse = _forward_call(q, k, v, kv_mask, q_offset, march)
  return out, (q, k, v, kv_mask, out, lse)


def _attention_bwd(q_offset, march, res, g):
  q, k, v, kv_mask, out, lse = res
  out_types = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
  dq, dk, dv = jax.ffi.ffi_call(KERNEL.target("bwd", march), out_types, vmap_method="sequential")(
      q, k, v, kv_mask, out, lse, g.astype(jnp.float32), q_offset=np.int64(q_offset))
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def cpu_causal_attention(q, k, v, kv_mask, *, q_offset: int = 0, march: str = "native") -> jax.Array:
  """Same arguments and result as `resd_jax.models.attention.causal_attention` (q [B, Tq, H, Dh] for
  positions q_offset .. T-1, k/v [B, T, KVH, Dh], kv_mask [B, T] with False = padding; float32
  [B, Tq, H, Dh]), in bf16 with float32 accumulation. A query row that sees no real key (a padding row before
  the first real token) gets zeros and passes no gradient."""
  b, tq, h, dh = q.shape
  t, kvh = k.shape[1], k.shape[2]
  if q_offset + tq != t:
    raise ValueError(f"cpu_causal_attention: {tq} queries from position {q_offset} do not end at the {t} keys")
  if dh not in HEAD_DIMS:
    raise ValueError(f"cpu_causal_attention: head_dim {dh} is not supported (supported: {HEAD_DIMS}); "
                     "use attn_impl='blocked'")
  KERNEL.load(march)
  f32 = jnp.float32
  qs = (q.astype(f32) * (dh ** -0.5)).reshape(b, tq, kvh, h // kvh, dh)
  out = _attention(qs, k.astype(f32), v.astype(f32), kv_mask.astype(bool), int(q_offset), march)
  return out.reshape(b, tq, h, dh)


def _config_error(compute_dtype: str, head_dim: int | None) -> str | None:
  """head_dim None: not known yet (the run config is checked before the model loads)."""
  if supports(HEAD_DIMS[0] if head_dim is None else head_dim, compute_dtype):
    return None
  dims = ", ".join(map(str, HEAD_DIMS[:-1])) + f" or {HEAD_DIMS[-1]}"
  return (f"attn_impl='cpu_fused' needs compute_dtype bfloat16 and head_dim {dims} (got {compute_dtype}, "
          f"{head_dim or 'head_dim not known yet'}); use attn_impl='auto' or 'blocked'")


def _runtime_error(cfg) -> str | None:
  del cfg
  if backends.on_one_cpu():
    return None
  return ("attn_impl='cpu_fused' runs on the CPU backend outside a multi-device mesh; use attn_impl='auto' or "
          "'blocked' here")


def _auto(cfg) -> bool:
  return backends.on_one_cpu() and supports(cfg.head_dim, cfg.compute_dtype) and available()


def _backend_call(q, k, v, kv_mask, *, q_offset: int = 0) -> jax.Array:
  return cpu_causal_attention(q, k, v, kv_mask, q_offset=q_offset)


backends.register(backends.Backend("attention", "cpu_fused", fn=_backend_call, auto=_auto,
                                   config_error=_config_error, runtime_error=_runtime_error))
