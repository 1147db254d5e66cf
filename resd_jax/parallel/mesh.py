"""Device mesh from config: axes (data, fsdp, tensor, expert), -1 meaning "all remaining devices".

The mesh uses Auto axis types (GSPMD propagation with our logical constraints), not this JAX version's
default Explicit types: the model code stays free of per-op `out_sharding` arguments.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor", "expert")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  expert: int = 1

  def __post_init__(self):
    sizes = [self.data, self.fsdp, self.tensor, self.expert]
    if sum(s == -1 for s in sizes) > 1:
      raise ValueError(f"mesh: at most one axis may be -1 (the rest), got {dict(zip(AXES, sizes))}")
    for name, s in zip(AXES, sizes):
      if s == 0 or s < -1:
        raise ValueError(f"mesh.{name}={s}: use a positive size or -1 for all remaining devices")

  def resolve(self, n_devices: int) -> tuple[int, ...]:
    sizes = [self.data, self.fsdp, self.tensor, self.expert]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if n_devices % fixed:
        raise ValueError(f"mesh {dict(zip(AXES, sizes))}: {n_devices} devices are not divisible by the fixed "
                         f"axes' product {fixed}")
      sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but {n_devices} are "
                       "available; set one axis to -1 or change the sizes")
    return tuple(sizes)


def make_mesh(config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None, **sizes: int) -> Mesh:
  """Build a mesh with axes `AXES`. `make_mesh(fsdp=4, tensor=2)` or `make_mesh(MeshConfig(...))`."""
  config = config or MeshConfig(**sizes)
  devices = list(devices) if devices is not None else jax.devices()
  shape = config.resolve(len(devices))
  arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_divisor(mesh: Mesh) -> int:
  """The batch must be a multiple of this: the product of the axes the batch is sharded over."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return sizes.get("data", 1) * sizes.get("fsdp", 1)


def maybe_initialize_distributed() -> bool:
  """Call `jax.distributed.initialize()` when the environment describes a multi-host job.

  Recognised: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or cloud TPU / SLURM
  environments that JAX detects itself (RESD_MULTIHOST=1 forces the call).
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ.get("JAX_NUM_PROCESSES", "1")),
        process_id=int(os.environ.get("JAX_PROCESS_ID", "0")))
  elif os.environ.get("RESD_MULTIHOST") == "1" or os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
  return True
