"""Logical-axis sharding: parameters and activations name their axes; rules (data) map names to mesh axes.

Parameters carry their logical axes as `nnx.Param(..., axes=("embed", "mlp"))`. `state_shardings` turns a
model state into `NamedSharding`s under a mesh and a rule table; `constrain` pins an activation's layout
inside jit when a mesh is active and is a no-op otherwise (single-device tests and notebooks).

A mesh axis is used at most once per array, and an axis that does not divide a dimension is dropped for
that dimension (replicated) rather than failing: e.g. 2 KV heads on a tensor axis of 4.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical axis -> mesh axes. Weights are sharded over fsdp along `embed` and over tensor along the
# head / MLP / vocabulary dimension; the batch goes over data x fsdp.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("expert_mlp", "tensor"),
    ("layers", None),
    ("cache_seq", None),
)

_ACTIVE_RULES: list[Rules] = [DEFAULT_RULES]


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[Rules]:
  """Use `rules` for `constrain` and the default argument of the helpers below."""
  _ACTIVE_RULES.append(tuple(rules))
  try:
    yield rules
  finally:
    _ACTIVE_RULES.pop()


def current_rules() -> Rules:
  return _ACTIVE_RULES[-1]


def spec_for(shape: Sequence[int], axes: Sequence[str | None] | None, mesh: Any, rules: Rules | None = None) -> P:
  """PartitionSpec for an array of `shape` whose dimensions have logical `axes`."""
  if axes is None:
    return P()
  table = dict(rules or current_rules())
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  used: set[str] = set()
  out = []
  for dim, name in zip(shape, axes):
    target = table.get(name) if name is not None else None
    names = (target,) if isinstance(target, str) else tuple(target or ())
    keep = []
    for a in names:
      if a in sizes and a not in used and sizes[a] > 1 and dim % (math.prod(sizes[k] for k in keep) * sizes[a]) == 0:
        keep.append(a)
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return P(*out)


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Any, rules: Rules | None = None) -> Any:
  """NamedSharding for every Variable of an NNX state (abstract or concrete), from its `axes` metadata."""
  def one(v):
    axes = v.get_metadata().get("axes") if _is_var(v) else None
    shape = v.get_value().shape if _is_var(v) else v.shape
    return NamedSharding(mesh, spec_for(shape, axes, mesh, rules))
  return jax.tree.map(one, state, is_leaf=_is_var)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical axes when a mesh is active; identity otherwise."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.axis_sizes) == 1:
    return x
  return jax.lax.with_sharding_constraint(x, spec_for(x.shape, axes, mesh))


def unsharded_large_params(state: Any, mesh: Any, min_elements: int = 1 << 20, rules: Rules | None = None) -> list[str]:
  """Names of parameters with at least `min_elements` elements that the rules leave fully replicated."""
  bad = []
  flat = nnx.to_flat_state(state) if isinstance(state, nnx.State) else []
  for path, v in flat:
    arr_shape = v.get_value().shape
    if math.prod(arr_shape) >= min_elements:
      spec = spec_for(arr_shape, v.get_metadata().get("axes"), mesh, rules)
      if all(s is None for s in spec):
        bad.append("/".join(map(str, path)))
  return bad


def check_sharded(state: Any, mesh: Any, min_elements: int = 1 << 20, rules: Rules | None = None) -> None:
  """Raise if a large parameter would be replicated on every device of a multi-device mesh."""
  if math.prod(mesh.axis_sizes) == 1:
    return
  bad = unsharded_large_params(state, mesh, min_elements, rules)
  if bad:
    raise ValueError(f"parameters not sharded on mesh {dict(zip(mesh.axis_names, mesh.axis_sizes))}: "
                     f"{bad[:5]}{' ...' if len(bad) > 5 else ''}; add a rule mapping their axes to a mesh axis")
