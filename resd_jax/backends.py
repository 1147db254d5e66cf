"""Optional implementations that plug into `models/` and `distill/` from outside them.

The C++ CPU kernels (resd_jax/kernels/) are the ones today: causal attention (`attn_impl="cpu_fused"`) and the
loss's top-k ids. Each registers a `Backend` under a kind ("attention", "top_k") when its module is imported;
`models/` and `distill/` never import the kernels, they ask this registry, which imports the plugin packages
named in PLUGINS once, on first use (`RESD_JAX_CPU_KERNELS=0` still turns the kernels off: their `auto`
predicate then says no). A new backend is one module that calls `register` plus its line in PLUGINS.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import math
from typing import Any, Callable

log = logging.getLogger(__name__)

PLUGINS = ("resd_jax.kernels",)
KINDS = ("attention", "top_k")


def _no_error(*_: Any) -> str | None:
  return None


@dataclasses.dataclass(frozen=True)
class Backend:
  """One optional implementation.

  fn: the implementation (attention: same arguments and result as `models.attention.causal_attention` with the
    scaling inside, i.e. (q [B, Tq, H, Dh], k, v [B, T, KVH, Dh], kv_mask [B, T], *, q_offset) -> [B, Tq, H, Dh];
    top_k: (x [..., V] float32, k) -> ids [..., k]).
  auto: whether `auto` picks it for these arguments here (attention: a ModelConfig; top_k: x, k), e.g. the right
    backend and dtype and a kernel that built.
  config_error: why (compute_dtype, head_dim) cannot use it when a config names it (None if they can; head_dim
    None when the model is not loaded yet).
  runtime_error: why it cannot run here now (e.g. not the CPU, or a multi-device mesh; None if it can).
  """
  kind: str
  name: str
  fn: Callable[..., Any]
  auto: Callable[..., bool]
  config_error: Callable[..., str | None] = _no_error
  runtime_error: Callable[..., str | None] = _no_error


def on_one_cpu() -> bool:
  """The CPU backend, outside a mesh of more than one device: where the kernels (which see whole arrays) and
  the CPU-only loops apply without gathering a sharded batch."""
  import jax  # noqa: PLC0415 (this module stays importable without initialising JAX)
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() == "cpu" and (mesh.empty or math.prod(mesh.axis_sizes) == 1)


_REGISTRY: dict[str, dict[str, Backend]] = {kind: {} for kind in KINDS}
_loaded = False


def register(backend: Backend) -> None:
  if backend.kind not in KINDS:
    raise ValueError(f"backend kind {backend.kind!r} is not one of {KINDS}")
  _REGISTRY[backend.kind][backend.name] = backend


def _load_plugins() -> None:
  global _loaded
  if _loaded:
    return
  _loaded = True
  for name in PLUGINS:
    try:
      importlib.import_module(name)
    except ImportError as e:  # an optional package that is not there: its backends are simply absent
      log.info("optional backends from %s not loaded: %s", name, e)


def get(kind: str, name: str) -> Backend | None:
  """The registered backend `name` of `kind`, or None."""
  _load_plugins()
  return _REGISTRY[kind].get(name)


def of_kind(kind: str) -> list[Backend]:
  """Every registered backend of `kind`, in registration order."""
  _load_plugins()
  return list(_REGISTRY[kind].values())
