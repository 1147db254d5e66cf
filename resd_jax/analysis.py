"""Looking at runs: load a run directory, plot its curves, diff its playbooks, and show per-token KL.

A run directory (written by `launch/train.py` through `resd_jax.metrics`) holds:
  * `metrics.jsonl` — one JSON object per `MetricWriter.write`: `step` plus flat numbers; a (sum, count) pair
    `x` arrives as `x` (mean), `x/sum` and `x/count`;
  * `playbooks/playbook_<step>.txt` — the rendered playbook at each checkpoint step (found anywhere below the
    workdir, a few levels deep);
  * `checkpoints/<step>/` — Orbax steps.

`load_run(workdir)` reads all three; the `plot_*` functions return matplotlib Figures (no pyplot state, so
they work headless, in notebooks and in `launch/report.py`). Metric names are found by suffix
(`per_task/mean@n` matches `val/per_task/mean@n`), so the plots do not depend on the trainer's prefixes.
The per-token KL helpers need JAX and a model; everything else needs only NumPy and matplotlib.
"""
from __future__ import annotations

import dataclasses
import html
import math
import os
import pathlib
import re
from typing import Any, Iterable, Sequence

import numpy as np

from resd_jax.context.playbook import Entry, Playbook
from resd_jax.metrics import read_jsonl

# Suffixes (after an optional prefix and "/") searched in this order when a plot needs a metric.
SUCCESS_KEYS = ("rollout/success", "train/success", "success_rate", "success")
VALIDATION_KEYS = ("per_task/mean@n", "per_task/best@n", "per_test_case/mean@n", "per_test_case/best@n")
PLAYBOOK_SIZE_KEYS = ("playbook/size",)
ADDED_KEYS = ("curate/added",)
REMOVED_KEYS = ("prune/removed", "playbook/budget_evicted")
# A timing metric: time/<phase>, timing/<phase>, timings/<phase>, or <phase>_time / <phase>_seconds.
_TIMING_RE = re.compile(r"^(?:.*/)?(?:time|timing|timings)/([^/]+?)(?:_s|_sec|_seconds)?$|^(?:.*/)?([^/]+)_(?:time|seconds)$")
# Pipeline order of the phases (DESIGN.md section 1); other phases follow alphabetically.
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


# ----- figures ----------------------------------------------------------------------------------------------
def _figure(ncols: int = 1, width: float = 6.0, height: float = 3.6):
  from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib is the `notebooks` extra
  fig = Figure(figsize=(width * ncols, height), layout="constrained")
  axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
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


# ----- playbook diff ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlaybookDiff:
  """What changed from playbook `a` to playbook `b`: entries added, removed, and counter changes."""
  added: list[Entry]
  removed: list[Entry]
  changed: list[tuple[Entry, Entry]]  # (before, after) of entries in both whose counters or text differ

  def text(self) -> str:
    lines = [f"+{len(self.added)} added, -{len(self.removed)} removed, {len(self.changed)} changed"]
    lines += [f"+ [{e.id}] ({e.section}) {e.content}" for e in self.added]
    lines += [f"- [{e.id}] ({e.section}) {e.content}" for e in self.removed]
    for old, new in self.changed:
      lines.append(f"~ [{new.id}] helpful {old.helpful}->{new.helpful} harmful {old.harmful}->{new.harmful}"
                   + (" (text changed)" if old.content != new.content else "") + f" :: {new.content}")
    return "\n".join(lines)

  def html(self) -> str:
    """An HTML table (one row per change) for notebooks."""
    colors = {"added": "#e6ffe6", "removed": "#ffe6e6", "changed": "#fff8dc"}
    rows = [("added", e, "", f"{e.helpful}", f"{e.harmful}") for e in self.added]
    rows += [("removed", e, "", f"{e.helpful}", f"{e.harmful}") for e in self.removed]
    rows += [("changed", new, "text changed" if old.content != new.content else "",
              f"{old.helpful} &rarr; {new.helpful}", f"{old.harmful} &rarr; {new.harmful}")
             for old, new in self.changed]
    body = "".join(
        f'<tr style="background:{colors[kind]}"><td>{kind}</td><td><code>{html.escape(e.id)}</code></td>'
        f"<td>{html.escape(e.section)}</td><td>{h}</td><td>{hm}</td>"
        f'<td style="text-align:left">{html.escape(e.content)}{" <i>(" + note + ")</i>" if note else ""}</td></tr>'
        for kind, e, note, h, hm in rows)
    head = "<tr><th>change</th><th>id</th><th>section</th><th>helpful</th><th>harmful</th><th>content</th></tr>"
    summary = html.escape(self.text().splitlines()[0])
    return f"<div><b>{summary}</b><table>{head}{body}</table></div>"

  def _repr_html_(self) -> str:
    return self.html()


def diff_playbooks(a: Playbook, b: Playbook) -> PlaybookDiff:
  """Entries are matched by id (ids are never reused)."""
  old, new = {e.id: e for e in a.entries}, {e.id: e for e in b.entries}
  return PlaybookDiff(
      added=[e for e in b.entries if e.id not in old],
      removed=[e for e in a.entries if e.id not in new],
      changed=[(old[e.id], e) for e in b.entries if e.id in old and
               (old[e.id].helpful, old[e.id].harmful, old[e.id].content) != (e.helpful, e.harmful, e.content)])


def diff_steps(run: Run, step_a: int, step_b: int) -> PlaybookDiff:
  return diff_playbooks(run.playbook(step_a), run.playbook(step_b))


def diff_explorer(run: Run | str | os.PathLike):
  """An interactive diff between two snapshot steps: an ipywidgets range slider when ipywidgets is importable,
  else the diff between the first and last snapshot (call `diff_steps` for other pairs)."""
  (run,) = _as_runs(run)
  steps = run.playbook_steps
  if not steps:
    raise ValueError(f"run {run.name!r} has no playbook snapshots (playbook_<step>.txt) to diff")
  first, last = steps[0], steps[-1]
  try:
    import ipywidgets as widgets  # noqa: PLC0415 - optional
  except ImportError:
    return diff_steps(run, first, last)
  out = widgets.HTML(diff_steps(run, first, last).html())
  slider = widgets.SelectionRangeSlider(options=steps, index=(0, len(steps) - 1), description="steps",
                                        continuous_update=False)

  def on_change(change):
    a, b = change["new"]
    out.value = diff_steps(run, a, b).html()

  slider.observe(on_change, names="value")
  return widgets.VBox([slider, out])


# ----- per-token values as a coloured strip -----------------------------------------------------------------
def _normalise(values: Sequence[float], vmax: float | None) -> tuple[np.ndarray, float]:
  v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  top = float(vmax) if vmax is not None else (float(v.max()) if v.size and v.max() > 0 else 1.0)
  return np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v), top


def token_strip_html(tokens: Sequence[str], values: Sequence[float], *, vmax: float | None = None,
                     cmap: str = "Reds", label: str = "KL") -> str:
  """HTML spans, one per token, background coloured by value (0 -> white, vmax -> darkest); hover shows it."""
  if len(tokens) != len(values):
    raise ValueError(f"token_strip_html needs one value per token; got {len(tokens)} tokens and "
                     f"{len(values)} values")
  from matplotlib import colormaps  # noqa: PLC0415
  from matplotlib.colors import to_hex  # noqa: PLC0415
  scaled, top = _normalise(values, vmax)
  colour = colormaps[cmap]
  spans = []
  for tok, raw, s in zip(tokens, values, scaled):
    fg = "white" if s > 0.6 else "black"
    text = html.escape(tok).replace("\n", "&#x21b5;<br>")
    spans.append(f'<span title="{label}={float(raw):.4g}" style="background:{to_hex(colour(0.85 * s))};'
                 f'color:{fg};padding:1px 0;white-space:pre-wrap">{text}</span>')
  legend = f'<div style="font-size:small;color:gray">{html.escape(label)}: white = 0, darkest = {top:.3g}</div>'
  return f'<div style="font-family:monospace;line-height:1.8">{"".join(spans)}</div>{legend}'


def plot_token_strip(tokens: Sequence[str], values: Sequence[float], *, vmax: float | None = None,
                     cmap: str = "Reds", per_row: int = 16, label: str = "KL"):
  """The matplotlib version of `token_strip_html`: a grid of token boxes (row-major, `per_row` per row)."""
  if len(tokens) != len(values):
    raise ValueError(f"plot_token_strip needs one value per token; got {len(tokens)} tokens and "
                     f"{len(values)} values")
  from matplotlib import colormaps  # noqa: PLC0415
  scaled, top = _normalise(values, vmax)
  rows = max(1, math.ceil(len(tokens) / per_row))
  fig, (ax,) = _figure(width=min(14.0, 0.8 * per_row + 1), height=0.45 * rows + 0.8)
  colour = colormaps[cmap]
  for i, (tok, s) in enumerate(zip(tokens, scaled)):
    r, c = divmod(i, per_row)
    shown = tok.replace("\n", "\\n")
    shown = shown if len(shown) <= 8 else shown[:7] + "…"
    ax.text(c + 0.5, -r - 0.5, shown, ha="center", va="center", fontsize=8, family="monospace",
            color="white" if s > 0.6 else "black",
            bbox=dict(boxstyle="square,pad=0.2", facecolor=colour(0.85 * s), edgecolor="none"))
  ax.set_xlim(0, per_row)
  ax.set_ylim(-rows, 0)
  ax.axis("off")
  ax.set_title(f"per-token {label} (darkest = {top:.3g})")
  return fig


# ----- per-token KL between student and teacher --------------------------------------------------------------
def _response_logprobs(m: Any, tokens: Any, mask: Any, r: int) -> Any:
  """Log-softmax at temperature 1 of the logits that predict the last r tokens: [B, R, V] float32."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  hidden, _ = m(tokens, attn_mask=mask)                                   # [B, L, D]
  hidden = hidden[:, tokens.shape[1] - r - 1: tokens.shape[1] - 1]        # [B, R, D]
  return jax.nn.log_softmax(m.logits(hidden).astype(jnp.float32), -1)     # [B, R, V]


def _kl_rows(student: Any, teacher: Any, s_tok, s_mask, t_tok, t_mask, r: int) -> Any:
  import jax.numpy as jnp  # noqa: PLC0415
  log_p = _response_logprobs(student, s_tok, s_mask, r)
  log_q = _response_logprobs(teacher, t_tok, t_mask, r)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)               # [B, R]


def _jitted(fn, **kw):
  """`nnx.jit(fn)` built on first use, so that importing this module does not import flax."""
  cache: dict[str, Any] = {}

  def call(*args, **kwargs):
    if "f" not in cache:
      from flax import nnx  # noqa: PLC0415
      cache["f"] = nnx.jit(fn, **kw)
    return cache["f"](*args, **kwargs)
  return call


_kl_same = _jitted(lambda m, s_tok, s_mask, t_tok, t_mask, r: _kl_rows(m, m, s_tok, s_mask, t_tok, t_mask, r),
                   static_argnames="r")
_kl_two = _jitted(_kl_rows, static_argnames="r")


def per_token_kl(model: Any, batch: Any, teacher_model: Any = None) -> np.ndarray:
  """KL(student ‖ teacher) at temperature 1 over the full vocabulary, per response token: [B, R] float32
  (0 where `response_mask` is 0).

  The student is `model` on `batch.student_tokens`, the teacher is `teacher_model` (default: the same model)
  on `batch.teacher_tokens`; the logits that predict response token j sit at position P - 1 + j of both
  sequences (see `resd_jax.context.batch`). Full-vocabulary logits are built only for the R response positions.
  """
  r = batch.response_tokens.shape[1]
  args = (batch.student_tokens, batch.student_mask, batch.teacher_tokens, batch.teacher_mask)
  kl = (_kl_same(model, *args, r=r) if teacher_model is None or teacher_model is model
        else _kl_two(model, teacher_model, *args, r=r))                   # [B, R]
  return np.asarray(kl) * np.asarray(batch.response_mask)


def _trim_left_padding(batch: Any) -> Any:
  """The batch without the leading columns that are padding in every row of a sequence (positions come from
  the mask, so the forward is unchanged; it only gets shorter)."""
  def first_used(mask: np.ndarray) -> int:
    used = np.flatnonzero(np.asarray(mask).any(0))
    return int(used[0]) if used.size else 0
  s, t = first_used(batch.student_mask), first_used(batch.teacher_mask)
  return dataclasses.replace(batch, student_tokens=batch.student_tokens[:, s:], student_mask=batch.student_mask[:, s:],
                             teacher_tokens=batch.teacher_tokens[:, t:], teacher_mask=batch.teacher_mask[:, t:])


def response_token_strings(tokenizer: Any, batch: Any, row: int = 0) -> list[str]:
  """The response tokens of `row` (mask 1 only), each decoded on its own."""
  n = int(np.asarray(batch.response_mask[row]).sum())
  return [tokenizer.decode([int(t)]) for t in np.asarray(batch.response_tokens[row][:n])]


def sample_kl(model: Any, tokenizer: Any, sample: Any, reflection: str, playbook: Playbook,
              teacher_cfg: Any = None, *, solution: str | None = None, teacher_model: Any = None,
              max_teacher_prompt_len: int = 4096) -> tuple[list[str], np.ndarray, Any]:
  """(response token strings, per-token KL(student ‖ teacher) [n], teacher context) for one GradedSample,
  with the teacher context built exactly as the trainer builds it (`distillation_batch`)."""
  from resd_jax.context import BatchShape, TeacherContextConfig, distillation_batch  # noqa: PLC0415
  from resd_jax.context.types import Metrics  # noqa: PLC0415
  from resd_jax.context.updater import UpdateResult  # noqa: PLC0415
  from resd_jax.models.tokenizer import chat_tokens  # noqa: PLC0415
  teacher_cfg = teacher_cfg or TeacherContextConfig(max_prompt_tokens=max_teacher_prompt_len)
  prompt_len = len(chat_tokens(tokenizer, sample.example.messages))
  shape = BatchShape(1, prompt_len, max(prompt_len, max_teacher_prompt_len), max(1, len(sample.response_tokens)))
  result = UpdateResult([reflection], [solution], Metrics())
  batch, contexts = distillation_batch([sample], result, playbook, teacher_cfg, tokenizer, shape)
  batch = _trim_left_padding(batch)
  kl = per_token_kl(model, batch, teacher_model)[0]
  tokens = response_token_strings(tokenizer, batch, 0)
  return tokens, kl[:len(tokens)], contexts[0]


# ----- one rollout of a trainer, inspected ------------------------------------------------------------------
def trainer_mesh(trainer: Any):
  """A context manager placing calls on the trainer's mesh and logical-axis rules (for sampling / forwards)."""
  import contextlib  # noqa: PLC0415
  import jax  # noqa: PLC0415
  from resd_jax.parallel import sharding as shd  # noqa: PLC0415
  stack = contextlib.ExitStack()
  stack.enter_context(shd.axis_rules(trainer.rules))
  stack.enter_context(jax.set_mesh(trainer.mesh))
  return stack


@dataclasses.dataclass
class Inspection:
  """One rollout of a trainer's current policy, everything the context engine made of it, and the per-token
  KL(student ‖ teacher) of its response under the teacher context that training would use."""
  sample: Any                 # GradedSample
  reflection: str             # "" when none (success, or an unparsable reflection)
  playbook_before: Playbook
  playbook_after: Playbook
  update_metrics: dict[str, tuple[float, int]]
  teacher_slots: tuple[str, ...]
  tokens: list[str]           # response tokens, decoded one by one
  kl: np.ndarray              # [len(tokens)] KL(student ‖ teacher) per token

  @property
  def diff(self) -> PlaybookDiff:
    return diff_playbooks(self.playbook_before, self.playbook_after)

  def summary(self) -> str:
    g = self.sample.grade
    top = int(np.argmax(self.kl)) if len(self.kl) else -1
    worst = f"max {self.kl[top]:.4f} at token {top} {self.tokens[top]!r}" if top >= 0 else "no tokens"
    return (f"reward {g.reward} acc {g.acc:.2f}; reflection {'yes' if self.reflection else 'none'}; playbook "
            f"{len(self.playbook_before)} -> {len(self.playbook_after)} entries; teacher slots {self.teacher_slots}; "
            f"KL mean {float(np.mean(self.kl)) if len(self.kl) else 0.0:.4f}, {worst}")


def inspect_rollout(trainer: Any, example: Any = None, *, seed: int = 1, temperature: float = 1.0,
                    max_new_tokens: int | None = None) -> Inspection:
  """Sample one answer of `trainer`'s policy to `example` (default: the first training problem), grade it,
  run one context update on a COPY of the trainer's context state (the run is untouched), and measure the
  per-token KL against the teacher (the trainer's teacher weights, else the policy)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from resd_jax.context import ContextUpdater, GradedSample  # noqa: PLC0415
  from resd_jax.sampling import SamplingParams  # noqa: PLC0415
  example = trainer.data.train[0] if example is None else example
  step = int(trainer.cursor.step) + 1
  params = SamplingParams(temperature=temperature,
                          max_new_tokens=int(max_new_tokens or trainer.cfg.rollout.max_response_len))
  (ro,) = trainer.rollouts([example], 1, params, jax.random.PRNGKey(seed))
  grade = trainer.task.grade(example, ro.text, truncated=ro.truncated)
  sample = GradedSample(example, ro.text, list(ro.response_tokens), list(ro.logprobs), grade, ro.truncated)
  updater = ContextUpdater(trainer.updater.config, seed)
  updater.load_state_dict(trainer.updater.state_dict())
  result = updater.update([sample], trainer.generate_text_fn(step), step)
  teacher_params = getattr(trainer.state, "teacher", None)
  teacher = nnx.merge(trainer.graphdef, teacher_params) if teacher_params is not None else None
  with trainer_mesh(trainer):
    tokens, kl, context = sample_kl(trainer.policy(), trainer.tokenizer, sample, result.reflections[0],
                                    updater.playbook, trainer.parts.teacher_context, teacher_model=teacher,
                                    solution=result.solutions_before[0],
                                    max_teacher_prompt_len=trainer.parts.batch_shape.max_teacher_prompt_len)
  return Inspection(sample, result.reflections[0], Playbook.from_dict(trainer.updater.playbook.to_dict()),
                    updater.playbook, dict(result.metrics), tuple(context.slots), tokens, kl)
