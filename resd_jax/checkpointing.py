"""Checkpoints: one Orbax step = the arrays (params, optimizer, teacher, step, RNG key) + the JSON side state
(playbook, solution buffer, data cursor, host RNG states, resolved config), written atomically.

* `Checkpointer.save` every N steps (`should_save`) or when forced (SIGTERM, end of run); keeps the latest k
  and the best one by a validation metric.
* `Checkpointer.restore_latest` resumes a workdir: if the newest step cannot be read (corrupt or partial), it
  warns, moves that step aside into `<dir>/../checkpoints_unreadable/` (never deleted, never overwritten) and
  falls back to the previous one.
* `restore_readonly` reads another run's checkpoint for `init_from` without writing anything there.
* `PreemptionFlag` turns SIGTERM into a flag that the training loop polls: it saves and exits cleanly.

Sharded arrays are restored onto the shardings of an abstract target (`abstract_like(state)`), so a restore
on a different mesh re-shards instead of gathering on one host.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import threading
import time
import warnings
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)

ARRAYS, SIDE = "state", "side"


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with sharding) of every array leaf: the restore target for `tree`-shaped state."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, np.ndarray):
      return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x
  return jax.tree.map(leaf, tree)


class CheckpointError(RuntimeError):
  """No readable checkpoint where one was required."""


class Checkpointer:
  """An Orbax CheckpointManager over `directory` with our save/keep/fallback policy.

  every: save when `step % every == 0` (see `should_save`); keep: how many of the latest steps to keep;
  best_metric: a validation metric name (higher is better) whose best step is kept in addition, or None.
  read_only: never write (used for `init_from` sources).
  """

  def __init__(self, directory: str | os.PathLike, *, every: int = 1, keep: int = 2,
               best_metric: str | None = None, read_only: bool = False, async_save: bool = False):
    if every < 1 or keep < 1:
      raise ValueError(f"checkpoint.every and checkpoint.keep must be >= 1, got every={every}, keep={keep}")
    self.directory = pathlib.Path(directory).absolute()
    self.every = every
    self.best_metric = best_metric
    self.read_only = read_only
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f"no checkpoint directory at {self.directory}; point init_from at a run's "
                            f"workdir/checkpoints folder (or the workdir itself)")
    policies: list[Any] = [ocm.LatestN(n=keep)]
    if best_metric:
      policies.append(ocm.BestN(get_metric_fn=lambda m: float(m[best_metric]), reverse=False, n=1,
                                keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
        preservation_policy=ocm.AnyPreservationPolicy(policies), cleanup_tmp_directories=not read_only,
        best_fn=(lambda m: float(m[best_metric])) if best_metric else None, best_mode="max",
        keep_checkpoints_without_metrics=True)
    self._options = options
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(ARRAYS, SIDE))

  # -- saving ---------------------------------------------------------------------------------------------
  def should_save(self, step: int) -> bool:
    return step > 0 and step % self.every == 0

  def save(self, step: int, arrays: Any, side: Mapping[str, Any], *, metrics: Mapping[str, float] | None = None,
           wait: bool = True) -> bool:
    """Write step `step` (arrays + JSON side state) as one atomic checkpoint. Returns False if it exists."""
    if self.read_only:
      raise CheckpointError(f"{self.directory} is opened read-only; it is never written")
    if step in self._manager.all_steps():
      log.warning("checkpoint step %d already exists in %s; not overwriting it", step, self.directory)
      return False
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None  # a step without the best metric is kept only as one of the latest
    saved = self._manager.save(step, args=ocp.args.Composite(**{
        ARRAYS: ocp.args.StandardSave(arrays), SIDE: ocp.args.JsonSave(dict(side))}),
        metrics=dict(metrics) if metrics is not None else None, force=True)
    if wait:
      self._manager.wait_until_finished()
    return bool(saved)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  # -- restoring ------------------------------------------------------------------------------------------
  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, step: int, abstract_arrays: Any) -> tuple[Any, dict[str, Any]]:
    """Arrays (on the shardings of `abstract_arrays`) and the JSON side state of `step`."""
    out = self._manager.restore(step, args=ocp.args.Composite(**{
        ARRAYS: ocp.args.StandardRestore(abstract_arrays), SIDE: ocp.args.JsonRestore()}))
    side = out[SIDE]
    if not isinstance(side, dict):
      raise CheckpointError(f"checkpoint step {step} in {self.directory} has no JSON side state")
    return out[ARRAYS], side

  def restore_latest(self, abstract_arrays: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restore the newest readable step; None if there is none. Unreadable newer steps are warned about and
    (unless read-only) moved aside so that the resumed run can write its own step there."""
    for step in reversed(self.steps()):
      try:
        arrays, side = self.restore(step, abstract_arrays)
      except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"; we fall back
        msg = (f"checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
               f"{str(e).splitlines()[0][:200] if str(e) else ''}); falling back to the previous step")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        if not self.read_only:
          self._set_aside(step)
        continue
      return step, arrays, side
    return None

  def _set_aside(self, step: int) -> None:
    step_dir = self.directory / str(step)
    if not step_dir.exists():
      return
    aside = self.directory.parent / "checkpoints_unreadable"
    aside.mkdir(parents=True, exist_ok=True)
    target = aside / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}"
    if jax.process_index() == 0:
      shutil.move(str(step_dir), str(target))
      log.warning("moved unreadable checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:  # the others list the steps only after process 0 has moved this one
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices(f"resd_checkpoint_set_aside_{step}")
    self._manager.reload()

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric else None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def find_checkpoint_dir(path: str | os.PathLike) -> pathlib.Path:
  """`path` may be a run's workdir (holding `checkpoints/`) or the checkpoints folder itself."""
  p = pathlib.Path(path).expanduser()
  if (p / "checkpoints").is_dir():
    return p / "checkpoints"
  return p


def restore_readonly(path: str | os.PathLike, abstract_arrays: Any, step: int | None = None
                     ) -> tuple[int, Any, dict[str, Any]]:
  """Read a checkpoint of another run without writing there (for `init_from`). `path` may end in `@<step>`."""
  text = str(path)
  if step is None and "@" in pathlib.Path(text).name:
    text, _, s = text.rpartition("@")
    if not s.isdigit():
      raise CheckpointError(f"init_from {path!r}: the part after '@' must be a step number")
    step = int(s)
  ckpt = Checkpointer(find_checkpoint_dir(text), read_only=True)
  try:
    if step is None:
      found = ckpt.restore_latest(abstract_arrays)
      if found is None:
        raise CheckpointError(f"init_from {path!r}: no readable checkpoint in {ckpt.directory}")
      return found
    if step not in ckpt.steps():
      raise CheckpointError(f"init_from {path!r}: step {step} not found; available steps: {ckpt.steps()}")
    arrays, side = ckpt.restore(step, abstract_arrays)
    return step, arrays, side
  finally:
    ckpt.close()


class PreemptionFlag:
  """Sets a flag on SIGTERM (and optionally SIGINT) instead of dying; the loop polls `requested`, saves and
  exits. Restores the previous handlers on `uninstall` / context exit. Only installable on the main thread."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self.signals = signals
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}

  def _handler(self, signum, frame):  # noqa: ARG002
    log.warning("received signal %d: will save a checkpoint and stop after the current step", signum)
    self._event.set()

  def install(self) -> "PreemptionFlag":
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def uninstall(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous.clear()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def __enter__(self) -> "PreemptionFlag":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()
