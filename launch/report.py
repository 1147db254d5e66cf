"""Write a run's figures as PNG files (for people who do not use notebooks).

  python launch/report.py --workdir=/tmp/resd --out=/tmp/report
  python launch/report.py --workdir=/tmp/resd --workdir=/tmp/sdpo --workdir=/tmp/grpo --out=/tmp/compare

Several --workdir flags put the runs on the same comparison figures (success, validation, playbook) and add one
entry-flow and one timing figure per run. Also writes `playbook_diff.txt` (first vs last snapshot of each run).
"""
from __future__ import annotations

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from resd_jax import analysis  # noqa: E402

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "A run directory (repeat the flag to compare runs).")
_NAME = flags.DEFINE_multi_string("name", None, "Display names of the runs, in --workdir order (default: "
                                  "the directory names).")
_OUT = flags.DEFINE_string("out", None, "Folder for the PNG files (created if missing).")
_DPI = flags.DEFINE_integer("dpi", 110, "Resolution of the PNG files.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass --workdir=... --out=...")
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError("report.py needs --workdir=<run dir> (one or more) and --out=<folder for the PNGs>")
  names = _NAME.value or []
  if names and len(names) != len(_WORKDIR.value):
    raise app.UsageError(f"got {len(names)} --name flags for {len(_WORKDIR.value)} --workdir flags; give one "
                         "name per run or none")
  try:
    runs = [analysis.load_run(w, names[i] if names else None) for i, w in enumerate(_WORKDIR.value)]
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  for stem, fig in analysis.report_figures(runs).items():
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=_DPI.value)
    print(f"wrote {path}")
  diffs = []
  for run in runs:
    steps = run.playbook_steps
    if steps:
      diffs.append(f"# {run.name}: playbook step {steps[0]} -> {steps[-1]}\n"
                   + analysis.diff_steps(run, steps[0], steps[-1]).text())
  if diffs:
    (out / "playbook_diff.txt").write_text("\n\n".join(diffs) + "\n", encoding="utf-8")
    print(f"wrote {out / 'playbook_diff.txt'}")


if __name__ == "__main__":
  app.run(main)
