"""Top-k ids for the CPU: a C++ kernel (cpu_top_k.cc) through the XLA FFI, with jax.lax.top_k's result.

The SD loss takes the student's top-k ids (the support) and the teacher's (the overlap metric) for every
response position: 2 x 512 rows of 32k logits per chunk in the `small` benchmark step. XLA:CPU's top_k costs
~13 us per row plus ~2 ns per entry, and the two-stage version in `resd_jax.distill.losses.top_k_ids` still
spent ~0.2 s of a ~2.3 s step there. The kernel makes one pass over each row with a rising threshold
(see the source). `resd_jax.distill.losses.top_k_ids` uses it on the CPU outside a multi-device mesh for
float32 rows when it builds (resd_jax/kernels/build.py), and the two-stage XLA version otherwise: it is the
optional `top_k` backend `cpu` (registered below, see resd_jax/backends.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from resd_jax import backends
from resd_jax.kernels.build import CppKernel

KERNEL = CppKernel("cpu_top_k", {"top_k": "ResdCpuTopK"}, what="XLA's top_k", simd_symbol="ResdCpuTopKSimd")


def available() -> bool:
  return KERNEL.available()


def top_k_ids(x: jax.Array, k: int, march: str = "native") -> jax.Array:
  """The ids [..., k] that `jax.lax.top_k(x, k)` returns for float32 x [..., V] without NaN (descending values,
  ties lowest index first). Not differentiable (ids); pass stop-gradient values."""
  if x.dtype != jnp.float32:
    raise ValueError(f"cpu top_k_ids: x must be float32, got {x.dtype}")
  if not 1 <= k <= x.shape[-1]:
    raise ValueError(f"cpu top_k_ids: k={k} must be in [1, {x.shape[-1]}] (the last axis)")
  KERNEL.load(march)
  out = jax.ShapeDtypeStruct((*x.shape[:-1], k), jnp.int32)
  return jax.ffi.ffi_call(KERNEL.target("top_k", march), out, vmap_method="broadcast_all")(x, k=np.int64(k))


def _auto(x: jax.Array, k: int) -> bool:
  return x.dtype == jnp.float32 and 1 <= k <= x.shape[-1] and backends.on_one_cpu() and available()


def _backend_call(x: jax.Array, k: int) -> jax.Array:
  return top_k_ids(x, k)  # looked up at call time (tests replace it)


backends.register(backends.Backend("top_k", "cpu", fn=_backend_call, auto=_auto))
