"""Metric writers: JSONL always, TensorBoard when a writer is importable, wandb when configured; progress bars
that stay quiet when stderr is not a terminal; the playbook as text beside each checkpoint.

Metrics arrive as a flat dict whose values are either numbers or (sum, count) pairs. A pair is reduced to its
mean (`name`) and its raw sum and count are kept too (`name/sum`, `name/count`), so runs can be re-aggregated
exactly later. A name ending in `_max` holds a (max, 1) pair (e.g. `train/logprob_diff_max`): it reduces to the
max, and combining two of them keeps the larger max (`merge_pairs`), never their sum.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import sys
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

MetricValue = float | int | tuple[float, int]


class Metrics(dict):
  """Metrics as name -> (sum, count); `add` accumulates, `mean` divides (0 when the count is 0)."""

  def add(self, name: str, value: float, count: int = 1) -> None:
    s, c = self.get(name, (0.0, 0))
    self[name] = (s + float(value), c + int(count))

  def merge(self, other: dict[str, tuple[float, int]], prefix: str = "") -> None:
    for k, (s, c) in other.items():
      self.add(prefix + k, s, c)

  def mean(self, name: str) -> float:
    s, c = self.get(name, (0.0, 0))
    return s / c if c else 0.0


def reduce_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Flatten (sum, count) pairs to means plus raw sums; plain numbers pass through; other values are dropped."""
  out: dict[str, float] = {}
  for name, value in metrics.items():
    if isinstance(value, (tuple, list)) and len(value) == 2:
      s, c = float(value[0]), float(value[1])
      out[name] = s / c if c else 0.0
      out[f"{name}/sum"] = s
      out[f"{name}/count"] = c
    elif isinstance(value, bool):
      out[name] = float(value)
    elif isinstance(value, (int, float)) or hasattr(value, "item"):
      try:
        out[name] = float(value)
      except (TypeError, ValueError):
        continue
  return out


def merge_pairs(into: dict[str, tuple[float, int]], metrics: Mapping[str, Any], prefix: str = "") -> None:
  """Add (sum, count) pairs of `metrics` into `into` (numbers count as (value, 1)); `*_max` pairs keep the max."""
  for name, value in metrics.items():
    if isinstance(value, (tuple, list)) and len(value) == 2:
      s, c = float(value[0]), int(value[1])
    elif isinstance(value, (int, float)) or hasattr(value, "item"):
      s, c = float(value), 1
    else:
      continue
    key = prefix + name
    if key.endswith("_max"):
      into[key] = (max(into[key][0], s), 1) if key in into else (s, 1)
      continue
    ps, pc = into.get(key, (0.0, 0))
    into[key] = (ps + s, pc + c)


def _json_safe(x: float) -> float | None:
  return x if math.isfinite(x) else None


class MetricWriter:
  """Writes one JSONL line per `write(step, metrics)` to `<workdir>/metrics.jsonl`, mirrored to TensorBoard
  (tensorboardX, else TensorFlow's summary writer, else skipped with a note) and to wandb if `wandb_project`.

  Only the process with `enabled=True` (process 0 in multi-host runs) writes anything.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
               wandb_project: str | None = None, wandb_config: Mapping[str, Any] | None = None,
               run_name: str | None = None, console: bool = False):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self.console = console
    self._tb = None
    self._tb_kind = ""
    self._wandb = None
    self.notes: list[str] = []
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      self._open_tensorboard()
    if wandb_project:
      try:
        import wandb  # lazily: only runs that ask for it need it
      except ImportError as e:
        raise ImportError("metrics.wandb_project is set but wandb is not installed; `pip install wandb` or "
                          "unset metrics.wandb_project") from e
      self._wandb = wandb.init(project=wandb_project, name=run_name, config=dict(wandb_config or {}),
                               dir=str(self.workdir), resume="allow")

  def _open_tensorboard(self) -> None:
    tb_dir = str(self.workdir / "tensorboard")
    try:
      from tensorboardX import SummaryWriter
      self._tb, self._tb_kind = SummaryWriter(tb_dir), "tensorboardX"
      return
    except ImportError:
      pass
    try:
      import tensorflow as tf  # noqa: F401
      self._tb, self._tb_kind = tf.summary.create_file_writer(tb_dir), "tf"
      return
    except ImportError:
      pass
    note = "TensorBoard logging skipped: neither tensorboardX nor tensorflow is importable (JSONL is written)"
    self.notes.append(note)
    log.info(note)

  @property
  def jsonl_path(self) -> pathlib.Path:
    return self.workdir / "metrics.jsonl"

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Reduce and write the metrics of `step`; returns the reduced dict."""
    flat = reduce_metrics(metrics)
    if not self.enabled:
      return flat
    line = {"step": int(step), **{k: _json_safe(v) for k, v in flat.items()}}
    self._jsonl.write(json.dumps(line, sort_keys=True) + "\n")
    self._jsonl.flush()
    if self._tb_kind == "tensorboardX":
      for k, v in flat.items():
        self._tb.add_scalar(k, v, step)
      self._tb.flush()
    elif self._tb_kind == "tf":
      import tensorflow as tf
      with self._tb.as_default():
        for k, v in flat.items():
          tf.summary.scalar(k, v, step=step)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(flat, step=int(step))
    if self.console:
      print(console_line(step, flat), flush=True)
    return flat

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


# What a console line shows of a step's metrics, in this order (name in the line, metric key, format).
_STEP_FIELDS = (("success", "rollout/success", "{:.2f}"), ("reward", "rollout/reward", "{:.2f}"),
                ("resp_tokens", "rollout/response_tokens", "{:.0f}"), ("loss", "train/loss", "{:.4g}"),
                ("kl", "train/kl_t1", "{:.4g}"), ("playbook", "context/playbook/size", "{:.0f}"),
                ("reflect_parse_failed", "context/reflect/parse_failed", "{:.2f}"))
_VAL_FIELDS = (("per_task mean@n", "val/per_task/mean@n", "{:.4f}"), ("best@n", "val/per_task/best@n", "{:.4f}"),
               ("per_test_case mean@n", "val/per_test_case/mean@n", "{:.4f}"))


def console_line(step: int, flat: Mapping[str, float]) -> str:
  """One line per write for the terminal: the phase times of a step and its headline metrics, or a validation."""
  if any(k.startswith("val/") for k in flat):
    parts = [f"{name} {fmt.format(flat[key])}" for name, key, fmt in _VAL_FIELDS if key in flat]
    secs = flat.get("time/validation")
    return f"validation at step {int(step)}: " + ", ".join(parts) + (f" ({secs:.1f} s)" if secs is not None else "")
  times = [f"{k[len('time/'):]} {v:.1f}s" for k, v in flat.items()
           if k.startswith("time/") and "/" not in k[len("time/"):]]
  parts = [f"{name} {fmt.format(flat[key])}" for name, key, fmt in _STEP_FIELDS if key in flat]
  return f"step {int(step)}: " + ", ".join(times) + (" | " + ", ".join(parts) if parts else "")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl; a torn last line (killed writer) is skipped."""
  rows = []
  for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def write_playbook_text(directory: str | os.PathLike, step: int, rendered: str) -> pathlib.Path:
  """Write the rendered playbook as `<directory>/playbook_<step>.txt` (beside the checkpoint of that step)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"playbook_{int(step):08d}.txt"
  tmp = path.with_suffix(".txt.tmp")
  tmp.write_text(rendered, encoding="utf-8")
  os.replace(tmp, path)
  return path


def is_tty() -> bool:
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool | None = None):
  """A tqdm bar on a terminal; a silent pass-through (same interface: update/close/context) otherwise."""
  show = is_tty() if enabled is None else enabled
  from tqdm.auto import tqdm
  return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
