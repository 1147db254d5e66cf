"""Figures of one or several runs, as matplotlib Figures (no pyplot state: headless, notebooks, report.py)."""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np

from resd_jax.analysis.runs import (ADDED_KEYS, PHASE_ORDER, PLAYBOOK_SIZE_KEYS, REMOVED_KEYS, SUCCESS_KEYS,
                                    VALIDATION_KEYS, _TIMING_RE, Run, _as_runs)


# ----- figures ----------------------------------------------------------------------------------------------
def _figure(ncols: int = 1, width: float = 6.0, height: float = 3.6):
  from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib is the `notebooks` extra
  fig = Figure(figsize=(width * ncols, height), layout="constrained")
  from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
  axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
  for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are integers
  return fig, axes


def _note_empty(ax, what: str) -> None:
  ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_metric(runs, key: Sequence[str] | str, *, title: str | None = None, ylabel: str | None = None,
                ax=None):
  """One line per run of the first metric matching `key` (see `Run.find_key`) over steps."""
  runs = _as_runs(runs)
  fig, (ax_,) = _figure() if ax is None else (ax.figure, (ax,))
  found = None
  for run in runs:
    k = run.find_key(key)
    if k is None:
      continue
    found = found or k
    steps, values = run.series(k)
    ax_.plot(steps, values, marker="o", markersize=3, label=run.name)
  if found is None:
    _note_empty(ax_, " / ".join((key,) if isinstance(key, str) else key))
  ax_.set_xlabel("step")
  ax_.set_ylabel(ylabel or found or "")
  ax_.set_title(title or found or "")
  if found is not None and len(runs) > 1:
    ax_.legend(fontsize="small")
  return fig


def plot_success(runs, key: Sequence[str] | str = SUCCESS_KEYS):
  """Training success rate (rollouts that solved their problem) over steps, one line per run."""
  return plot_metric(runs, key, title="training success rate", ylabel="success rate")


def plot_validation(runs, keys: Sequence[str] = VALIDATION_KEYS):
  """Validation mean@n (solid) and best@n (dashed) over steps: per-task accuracy left, per-test-case right."""
  runs = _as_runs(runs)
  fig, axes = _figure(2)
  for ax, column in zip(axes, ("per_task", "per_test_case")):
    drew = False
    for i, run in enumerate(runs):
      for stat, style in (("mean@n", "-"), ("best@n", "--")):
        k = run.find_key([c for c in keys if c.startswith(column) and c.endswith(stat)])
        if k is None:
          continue
        steps, values = run.series(k)
        ax.plot(steps, values, style, color=f"C{i}", marker="o", markersize=3, label=f"{run.name} {stat}")
        drew = True
    if not drew:
      _note_empty(ax, f"{column} validation")
    else:
      ax.legend(fontsize="small")
    ax.set_title(f"validation: {column.replace('_', '-')} accuracy")
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
  return fig


def playbook_counts(run: Run) -> dict[str, np.ndarray]:
  """Per snapshot step: number of entries and total helpful / harmful counters (from the snapshots)."""
  steps = run.playbook_steps
  pbs = [run.playbook(s) for s in steps]
  return {"step": np.array(steps, dtype=np.int64),
          "size": np.array([len(p) for p in pbs], dtype=np.float64),
          "helpful": np.array([sum(e.helpful for e in p.entries) for p in pbs], dtype=np.float64),
          "harmful": np.array([sum(e.harmful for e in p.entries) for p in pbs], dtype=np.float64)}


def plot_playbook(runs):
  """Left: playbook size over steps (the logged metric, else the snapshots), one line per run. Right: total
  helpful (solid) and harmful (dashed) counters of each snapshot."""
  runs = _as_runs(runs)
  fig, (left, right) = _figure(2)
  for i, run in enumerate(runs):
    k = run.find_key(PLAYBOOK_SIZE_KEYS)
    counts = playbook_counts(run)
    steps, size = run.series(k) if k else (counts["step"], counts["size"])
    if len(steps):
      left.plot(steps, size, marker="o", markersize=3, color=f"C{i}", label=run.name)
    if len(counts["step"]):
      right.plot(counts["step"], counts["helpful"], "-", marker="o", markersize=3, color=f"C{i}",
                 label=f"{run.name} helpful")
      right.plot(counts["step"], counts["harmful"], "--", marker="x", markersize=4, color=f"C{i}",
                 label=f"{run.name} harmful")
  for ax, title, what in ((left, "playbook size (entries)", "playbook size"),
                          (right, "helpful / harmful counters (sum over entries)", "playbook snapshots")):
    ax.set_title(title)
    ax.set_xlabel("step")
    if ax.lines:
      ax.legend(fontsize="small")
    else:
      _note_empty(ax, what)
  return fig


def entry_flow(run: Run) -> dict[str, np.ndarray]:
  """Per logged step: entries added by curation and entries removed (pruning + token-budget eviction)."""
  series = {}
  for name, keys in (("added", ADDED_KEYS), ("removed", REMOVED_KEYS)):
    per_step: dict[int, float] = {}
    for suffix in keys:
      k = run.find_key(suffix)
      if k is None:
        continue
      for s, v in zip(*run.count_series(k)):
        per_step[int(s)] = per_step.get(int(s), 0.0) + v
    series[name] = per_step
  steps = sorted(set(series["added"]) | set(series["removed"]))
  return {"step": np.array(steps, dtype=np.int64),
          "added": np.array([series["added"].get(s, 0.0) for s in steps]),
          "removed": np.array([series["removed"].get(s, 0.0) for s in steps])}


def plot_entry_flow(run: Run | str | os.PathLike):
  """Bars per step: entries added (up) and removed (down) of one run."""
  (run,) = _as_runs(run)
  flow = entry_flow(run)
  fig, (ax,) = _figure()
  if len(flow["step"]):
    ax.bar(flow["step"], flow["added"], color="C2", label="added (curation)")
    ax.bar(flow["step"], -flow["removed"], color="C3", label="removed (pruning / budget)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if len(flow["step"]) <= 12:
      ax.set_xticks(flow["step"])
    ax.legend(fontsize="small")
  else:
    _note_empty(ax, "curation / pruning")
  ax.set_title(f"playbook entries added / removed per step ({run.name})")
  ax.set_xlabel("step")
  ax.set_ylabel("entries")
  return fig


def timing_keys(run: Run) -> dict[str, str]:
  """phase name -> metric name for every timing metric of `run` (see `_TIMING_RE`)."""
  out = {}
  for k in run.keys():
    if k.endswith("/sum") or k.endswith("/count"):
      continue
    m = _TIMING_RE.match(k)
    if m:
      out.setdefault(m.group(1) or m.group(2), k)
  rank = {p: i for i, p in enumerate(PHASE_ORDER)}
  return dict(sorted(out.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def plot_timings(run: Run | str | os.PathLike):
  """Stacked bars per step: seconds spent in each phase (rollout, grading, reflection, curation, step, ...)."""
  (run,) = _as_runs(run)
  phases = timing_keys(run)
  fig, (ax,) = _figure()
  steps = sorted({int(s) for k in phases.values() for s in run.series(k)[0]})
  bottom = np.zeros(len(steps))
  for phase, k in phases.items():
    values = dict(zip(*run.series(k)))
    heights = np.array([values.get(s, 0.0) for s in steps])
    ax.bar(steps, heights, bottom=bottom, label=phase)
    bottom += heights
  if phases:
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if len(steps) <= 12:
      ax.set_xticks(steps)
  else:
    _note_empty(ax, "timing")
  ax.set_title(f"time per phase ({run.name})")
  ax.set_xlabel("step")
  ax.set_ylabel("seconds")
  return fig


def report_figures(runs) -> dict[str, Any]:
  """Every figure of the report, by file stem: comparisons over all runs, per-run details for each run."""
  runs = _as_runs(runs)
  figs = {"success": plot_success(runs), "validation": plot_validation(runs), "playbook": plot_playbook(runs)}
  for run in runs:
    stem = _safe_stem(run.name) if len(runs) > 1 else ""
    figs["entry_flow" + stem] = plot_entry_flow(run)
    figs["timings" + stem] = plot_timings(run)
  return figs


def _safe_stem(name: str) -> str:
  return "_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run")
