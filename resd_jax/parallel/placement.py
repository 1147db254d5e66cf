"""Host data <-> global arrays on a mesh that may span several processes (multi-host).

With one process, `jax.device_put(x, NamedSharding(mesh, spec))` puts host data on the mesh. With several
processes a mesh holds devices that this process cannot address, and `device_put` of host data onto it is
refused. Our host data is always the SAME full value on every process (a deterministic random init, weights
read from the same file, a batch built by the same deterministic host code from broadcast state), so each
process fills the shards it holds from its own copy: `jax.make_array_from_callback`. (The other constructor,
`make_array_from_process_local_data`, is for data of which each process holds only its own slice.)

Back to host: an array sharded over several processes is gathered with `process_allgather` (a collective:
every process must call it in the same order, as they all run the same program); a fully replicated one is
read from a local shard.

With one process every function here is `jax.device_put` / `jax.device_get`.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def is_main_process() -> bool:
  """Process 0: the one that writes files (metrics, playbooks) in a multi-host run."""
  return jax.process_index() == 0


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _reshard(x: jax.Array, sharding: Sharding) -> jax.Array:
  """A global array onto another sharding of the same devices: a jitted identity (runs on every process)."""
  return jax.jit(lambda a: a, out_shardings=sharding)(x)


def put(x: Any, sharding: Sharding) -> jax.Array:
  """`x` (numpy, a Python scalar, or a jax.Array; the same full value on every process) as a global array
  with `sharding`. An array that already has that sharding is returned as is."""
  if isinstance(x, jax.Array):
    if x.sharding == sharding or x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    if not x.is_fully_addressable:  # already global: move it on the devices, no host round trip
      return _reshard(x, sharding)
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if _is_key(x):  # typed PRNG keys: place their raw data, then wrap again
    return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_tree(tree: Any, shardings: Any) -> Any:
  """`put` over a pytree; `shardings` is a tree of Shardings with the structure of `tree` or a prefix of it
  (as for `jax.device_put`: one Sharding may stand for a whole subtree, e.g. an nnx Variable)."""
  return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: put(x, s), sub), shardings, tree)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective with several processes)."""
  if not is_multiprocess():
    return bool(flag)
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def to_host(tree: Any) -> Any:
  """Every array leaf of `tree` as a numpy array holding the full value, on every process.

  Arrays spread over several processes are gathered (`process_allgather`, a collective: every process must
  call this at the same point of the program)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      from jax.experimental import multihost_utils  # noqa: PLC0415
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)
