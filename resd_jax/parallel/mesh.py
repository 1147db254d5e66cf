"""Device mesh from config: axes (data, fsdp, tensor, expert), -1 meaning "all remaining devices".

The mesh uses Auto axis types (GSPMD propagation with our logical constraints), not this JAX version's
default Explicit types: the model code stays free of per-op `out_sharding` arguments.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import threading
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


class DistributedInitError(RuntimeError):
  """The multi-host runtime could not start: a bad environment variable or a coordinator not reached in time."""


# Timeouts of the distributed runtime, seconds (environment variables; JAX's defaults otherwise).
#   RESD_DIST_INIT_TIMEOUT_S: how long a process waits to reach the coordinator (and process 0 for the others).
#   RESD_DIST_HEARTBEAT_TIMEOUT_S: a process silent this long counts as dead; the others then stop with an error.
#   RESD_DIST_SHUTDOWN_TIMEOUT_S: how long an exiting process waits for the others at the shutdown barrier.
TIMEOUT_ENV = {"initialization_timeout": ("RESD_DIST_INIT_TIMEOUT_S", 300),
               "heartbeat_timeout_seconds": ("RESD_DIST_HEARTBEAT_TIMEOUT_S", 100),
               "shutdown_timeout_seconds": ("RESD_DIST_SHUTDOWN_TIMEOUT_S", 300)}


def _env_int(name: str, default: int, lo: int, hi: int | None = None) -> int:
  text = os.environ.get(name, "").strip()
  if not text:
    return default
  try:
    value = int(text)
  except ValueError:
    raise DistributedInitError(f"{name}={text!r} is not an integer") from None
  if value < lo or (hi is not None and value > hi):
    bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise DistributedInitError(f"{name}={value} must be {bound}")
  return value


def _coordinator_from_env() -> dict[str, object]:
  """coordinator_address / num_processes / process_id from JAX_COORDINATOR_ADDRESS etc., checked."""
  address = os.environ["JAX_COORDINATOR_ADDRESS"].strip()
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedInitError(f"JAX_COORDINATOR_ADDRESS={address!r} must be HOST:PORT (process 0's address and "
                               "a free port, the same on every process)")
  if not os.environ.get("JAX_NUM_PROCESSES", "").strip():
    raise DistributedInitError("JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES is not; set it to the number "
                               "of processes (one per host) on every process")
  num = _env_int("JAX_NUM_PROCESSES", 1, 1)
  if not os.environ.get("JAX_PROCESS_ID", "").strip():
    raise DistributedInitError(f"JAX_COORDINATOR_ADDRESS is set but JAX_PROCESS_ID is not; set it to this "
                               f"process's index in 0..{num - 1} (0 on the coordinator's host)")
  pid = _env_int("JAX_PROCESS_ID", 0, 0, num - 1)
  return {"coordinator_address": address, "num_processes": num, "process_id": pid}


def _use_cpu_collectives() -> None:
  """Cross-process collectives of the CPU backend go over gloo (TCP); without an implementation a CPU run of
  several processes fails at its first collective. Harmless for GPU / TPU backends (CPU client only)."""
  try:
    current = jax.config.jax_cpu_collectives_implementation
  except AttributeError:  # older JAX: a boolean switch
    jax.config.update("jax_cpu_enable_gloo_collectives", True)
    return
  if current in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def maybe_initialize_distributed() -> bool:
  """Call `jax.distributed.initialize()` when the environment describes a multi-host job.

  Recognised: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or cloud TPU / SLURM
  environments that JAX detects itself (RESD_MULTIHOST=1 forces the call). Timeouts: `TIMEOUT_ENV`.
  Raises DistributedInitError (one line: what to check) on a bad variable or a coordinator not reached in time.
  """
  explicit = bool(os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip())
  if not explicit and not (os.environ.get("RESD_MULTIHOST") == "1"
                           or os.environ.get("SLURM_NTASKS", "1") not in ("", "1")):
    return False
  kwargs: dict[str, object] = {arg: _env_int(env, default, 1) for arg, (env, default) in TIMEOUT_ENV.items()}
  if explicit:
    kwargs.update(_coordinator_from_env())
  _use_cpu_collectives()
  # JAX aborts the process (a fatal log and a C++ stack trace) when the coordinator is not reached in time. A
  # watchdog ends the wait first, with one line of what to check; JAX's own deadline is set past it.
  wait = int(kwargs["initialization_timeout"])
  kwargs["initialization_timeout"] = wait + 30
  watchdog = threading.Timer(wait, _give_up, args=(kwargs, wait))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # noqa: BLE001 - whatever the runtime raises, the user gets one line of what to check
    raise DistributedInitError(_init_failure(kwargs, wait, str(e))) from None
  finally:
    watchdog.cancel()
  logging.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
  return True


def _give_up(kwargs: dict[str, object], wait: int) -> None:
  sys.stderr.write(f"error: {_init_failure(kwargs, wait, '')}\n")
  sys.stderr.flush()
  os._exit(1)  # noqa: SLF001 - the main thread is blocked inside the runtime's connect; nothing to clean up


def _init_failure(kwargs: dict[str, object], wait: int, error: str) -> str:
  first = next((line.strip() for line in error.splitlines() if line.strip()), "")
  detail = f" [{first[:160]}]" if first else ""
  if "coordinator_address" not in kwargs:
    return (f"jax.distributed.initialize() did not complete within {wait} s{detail}; set JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID explicitly")
  addr, num, pid = kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]
  who = ("check that all other processes were started and can reach this host at that port" if pid == 0 else
         "check that process 0 is running and that this host can reach it at that address and port")
  return (f"process {pid} of {num} could not join the run through the coordinator at {addr} within {wait} s: "
          f"{who}; every process needs the same JAX_COORDINATOR_ADDRESS (process 0's host:port) and "
          f"JAX_NUM_PROCESSES={num}, and its own JAX_PROCESS_ID in 0..{int(num) - 1}; "
          f"RESD_DIST_INIT_TIMEOUT_S sets the wait{detail}")
