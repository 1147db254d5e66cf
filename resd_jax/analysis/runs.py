"""Loading a run directory: metric series, playbook snapshots, checkpoint steps (see the package doc)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Iterable, Sequence

import numpy as np

from resd_jax.context.playbook import Playbook
from resd_jax.metrics import read_jsonl

# Suffixes (after an optional prefix and "/") searched in this order when a plot needs a metric.
SUCCESS_KEYS = ("rollout/success", "train/success", "success_rate", "success")
VALIDATION_KEYS = ("per_task/mean@n", "per_task/best@n", "per_test_case/mean@n", "per_test_case/best@n")
PLAYBOOK_SIZE_KEYS = ("playbook/size",)
ADDED_KEYS = ("curate/added",)
REMOVED_KEYS = ("prune/removed", "playbook/budget_evicted")
# A timing metric: time/<phase>, timing/<phase>, timings/<phase>, or <phase>_time / <phase>_seconds.
_TIMING_RE = re.compile(r"^(?:.*/)?(?:time|timing|timings)/([^/]+?)(?:_s|_sec|_seconds)?$|^(?:.*/)?([^/]+)_(?:time|seconds)$")
# Pipeline order of the phases (docs/DESIGN.md §1); other phases follow alphabetically.
PHASE_ORDER = ("rollout", "grading", "grade", "context", "reflection", "tagging", "curation", "teacher_context",
               "batch", "step", "train_step", "teacher_update", "validation", "eval", "checkpoint")
_PLAYBOOK_RE = re.compile(r"^playbook_(\d+)\.(txt|json)$")
_MAX_SEARCH_DEPTH = 3




# ----- loading ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """One run directory, loaded: metric records, playbook snapshot paths by step, checkpoint steps."""
  workdir: pathlib.Path
  name: str
  records: list[dict[str, Any]]
  playbook_paths: dict[int, pathlib.Path]
  checkpoint_steps: list[int]

  def keys(self) -> list[str]:
    """Every metric name that appears in some record (without `step`), sorted."""
    return sorted({k for r in self.records for k in r if k != "step"})

  def find_key(self, candidates: Sequence[str] | str) -> str | None:
    """The first metric name equal to, or ending in `/` + one of, `candidates` (tried in order)."""
    candidates = (candidates,) if isinstance(candidates, str) else candidates
    keys = self.keys()
    for c in candidates:
      if c in keys:
        return c
      hits = [k for k in keys if k.endswith("/" + c)]
      if hits:
        return min(hits, key=len)
    return None

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key`, sorted by step; records without it (or with null) are skipped and a step
    logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, float] = {}
    for r in self.records:
      v = r.get(key)
      if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r:
        by_step[int(r["step"])] = float(v)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)

  def count_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-step totals of a (sum, count) metric: its `/sum` column when logged, else the value itself."""
    return self.series(f"{key}/sum") if f"{key}/sum" in self.keys() else self.series(key)

  @property
  def playbook_steps(self) -> list[int]:
    return sorted(self.playbook_paths)

  def playbook(self, step: int) -> Playbook:
    """The playbook snapshot written at `step` (text via `Playbook.parse_rendered`, JSON via `from_json`)."""
    if step not in self.playbook_paths:
      raise KeyError(f"run {self.name!r} has no playbook snapshot at step {step}; it has steps "
                     f"{self.playbook_steps}")
    path = self.playbook_paths[step]
    text = path.read_text(encoding="utf-8")
    return Playbook.from_json(text) if path.suffix == ".json" else Playbook.parse_rendered(text)

  def playbooks(self) -> dict[int, Playbook]:
    return {s: self.playbook(s) for s in self.playbook_steps}


def _walk(root: pathlib.Path, depth: int) -> Iterable[pathlib.Path]:
  """Files below `root` down to `depth` levels, skipping Orbax internals (no recursion into step dirs)."""
  try:
    children = sorted(root.iterdir())
  except OSError:
    return
  for child in children:
    if child.is_file():
      yield child
    elif child.is_dir() and depth > 0 and not child.name.isdigit() and child.name != "tensorboard":
      yield from _walk(child, depth - 1)


def load_run(workdir: str | os.PathLike, name: str | None = None) -> Run:
  """Read a run directory. Raises a one-line error when it is not one."""
  root = pathlib.Path(workdir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"run directory {str(root)!r} does not exist; pass the --workdir of a training run")
  jsonl = root / "metrics.jsonl"
  records = read_jsonl(jsonl) if jsonl.is_file() else []
  playbooks: dict[int, pathlib.Path] = {}
  for path in _walk(root, _MAX_SEARCH_DEPTH):
    m = _PLAYBOOK_RE.match(path.name)
    if m and (int(m.group(1)) not in playbooks or m.group(2) == "json"):
      playbooks[int(m.group(1))] = path
  ckpt_dir = root / "checkpoints"
  ckpts = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
      if ckpt_dir.is_dir() else []
  if not jsonl.is_file() and not playbooks and not ckpts:
    raise ValueError(f"{str(root)!r} holds no metrics.jsonl, playbook_<step>.txt or checkpoints/<step>; is it a "
                     "training run's --workdir?")
  return Run(root, name or root.name, records, playbooks, ckpts)


def _as_runs(runs: Run | str | os.PathLike | Sequence[Run | str | os.PathLike]) -> list[Run]:
  if isinstance(runs, (Run, str, os.PathLike)):
    runs = [runs]
  return [r if isinstance(r, Run) else load_run(r) for r in runs]
