"""What changed in the playbook between two snapshots, as text, an HTML table, or an interactive slider."""
from __future__ import annotations

import dataclasses
import html
import os

from resd_jax.analysis.runs import Run, _as_runs
from resd_jax.context.playbook import Entry, Playbook


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
