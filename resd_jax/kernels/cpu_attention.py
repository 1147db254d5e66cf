"""Fused causal attention for the CPU: a C++ kernel (cpu_attention.cc) called through the XLA FFI.

On XLA:CPU, blocked attention runs the QK^T matmul, the mask, the softmax and the PV matmul as separate ops over
each block's float32 scores, and reached ~135 GFLOP/s where the MLP matmuls reached ~690 (bench/RESULTS.md).
The kernel keeps a tile of query rows' scores in the caches through all of it, with bf16 inputs, float32
accumulation and AVX512-BF16 pair dot products where the CPU has them; the backward recomputes the
probabilities from the saved log-sum-exp, like flash attention.

The source is compiled on first use with the system's C++ compiler (`-O3 -march=native`) into a cache folder
(`$RESD_JAX_CACHE`, default `~/.cache/resd_jax`), keyed by the source, jaxlib's version and the CPU's flags.
`available()` says whether that worked; `ModelConfig.attn_impl="auto"` uses the kernel only when it did, and
falls back to blocked attention otherwise.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

_SOURCE = pathlib.Path(__file__).with_name("cpu_attention.cc")
HEAD_DIMS = (64, 128, 192, 256)  # head sizes the kernel takes (multiples of 64)
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line
  except OSError:
    pass
  return os.uname().machine


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("RESD_JAX_CACHE") or pathlib.Path.home() / ".cache" / "resd_jax")


def build(march: str = "native", out_dir: pathlib.Path | None = None) -> pathlib.Path:
  """Compile the kernel for `march` (cached) and return the shared library's path; RuntimeError with the
  compiler's message when it fails."""
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
  flags = ["-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-Wno-attributes",
           f"-I{jax.ffi.include_dir()}"]
  key = hashlib.sha256(b"\0".join(x.encode() for x in (
      _SOURCE.read_text(), jaxlib.__version__, compiler, " ".join(flags), _cpu_flags()))).hexdigest()[:16]
  folder = out_dir or cache_dir()
  lib = folder / f"cpu_attention-{march}-{key}.so"
  if lib.exists():
    return lib
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    tmp_lib = pathlib.Path(tmp) / lib.name
    proc = subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(tmp_lib)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
      raise RuntimeError(f"compiling {_SOURCE.name} failed: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp_lib, lib)  # atomic: a concurrent build of the same key writes the same bytes
  return lib


def _targets(march: str) -> tuple[str, str]:
  return f"resd_cpu_attention_fwd_{march}", f"resd_cpu_attention_bwd_{march}"


def load(march: str = "native") -> None:
  """Build (if needed), load and register the kernel's FFI targets for `march`; idempotent. `native` is the
  one the model uses; tests also load a build without AVX-512 (`x86-64-v3`) to check the portable code path."""
  with _lock:
    if march not in _state:
      lib = ctypes.cdll.LoadLibrary(str(build(march)))
      fwd, bwd = _targets(march)
      jax.ffi.register_ffi_target(fwd, jax.ffi.pycapsule(lib.ResdCpuAttentionForward), platform="cpu")
      jax.ffi.register_ffi_target(bwd, jax.ffi.pycapsule(lib.ResdCpuAttentionBackward), platform="cpu")
      _state[march] = lib


def available() -> bool:
  """Whether the kernel is built and registered on this machine (builds it on the first call). A failed build
  is remembered and reported once as a warning; `auto` attention then stays on the blocked path."""
  if "native" in _state:
    return True
  if "error" in _state:
    return False
  try:
    load()
    return True
  except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
    _state["error"] = str(e)
    import warnings
    warnings.warn(f"resd_jax: the CPU attention kernel is unavailable, using blocked attention ({e})")
    return False


def supports(head_dim: int, compute_dtype) -> bool:
  return head_dim in HEAD_DIMS and jnp.dtype(compute_dtype) == jnp.bfloat16


def _forward_call(q, k, v, kv_mask, q_offset: int, march: str):
  b, tq, kvh, g, _ = q.shape
  out_types = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, kvh, tq, g), jnp.float32))
  return jax.ffi.ffi_call(_targets(march)[0], out_types, vmap_method="sequential")(
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
  dq, dk, dv = jax.ffi.ffi_call(_targets(march)[1], out_types, vmap_method="sequential")(
      q, k, v, kv_mask, out, lse, g.astype(jnp.float32), q_offset=np.int64(q_offset))
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def cpu_causal_attention(q, k, v, kv_mask, *, q_offset: int = 0, march: str = "native") -> jax.Array:
  """Same arguments and result as `resd_jax.models.transformer.causal_attention` (q [B, Tq, H, Dh] for
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
  load(march)
  f32 = jnp.float32
  qs = (q.astype(f32) * (dh ** -0.5)).reshape(b, tq, kvh, h // kvh, dh)
  out = _attention(qs, k.astype(f32), v.astype(f32), kv_mask.astype(bool), int(q_offset), march)
  return out.reshape(b, tq, h, dh)
