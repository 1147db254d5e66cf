"""Host-side state every process must agree on: process 0's JSON objects broadcast to all, grades synced (they
may depend on wall time), and the host RNG states saved with checkpoints."""
from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import jax
import numpy as np

from resd_jax.tasks.base import Grade


def host_rng_state() -> dict[str, Any]:
  version, internal, gauss = random.getstate()
  name, keys, pos, has_gauss, cached = np.random.get_state()
  return {"python": [version, list(internal), gauss],
          "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_host_rng_state(state: dict[str, Any]) -> None:
  version, internal, gauss = state["python"]
  random.setstate((version, tuple(internal), gauss))
  name, keys, pos, has_gauss, cached = state["numpy"]
  np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))


def broadcast_json(obj: Any) -> Any:
  """Process 0's JSON-able object on every process (identity on one process)."""
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils
  data = json.dumps(obj, default=_json_scalar).encode() if jax.process_index() == 0 else b""
  n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
  buf = np.zeros(n, np.uint8)
  if jax.process_index() == 0:
    buf[:] = np.frombuffer(data, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return json.loads(buf.tobytes().decode())


def _json_scalar(x: Any) -> Any:
  if hasattr(x, "item"):  # numpy / JAX scalars
    return x.item()
  raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def sync_grades(grades: list[Grade]) -> list[Grade]:
  """Multi-host: process 0's grades on every process. Grading may depend on wall time (sandboxed code under a
  time limit), and every process must build the same context updates and batches from the same grades."""
  if jax.process_count() == 1:
    return grades
  rows = broadcast_json([dataclasses.asdict(g) for g in grades])
  return [Grade(**row) for row in rows]
