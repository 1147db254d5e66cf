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
from resd_jax.analysis.diff import PlaybookDiff, diff_explorer, diff_playbooks, diff_steps
from resd_jax.analysis.plots import (entry_flow, playbook_counts, plot_entry_flow, plot_metric, plot_playbook,
                                     plot_success, plot_timings, plot_validation, report_figures, timing_keys)
from resd_jax.analysis.runs import (ADDED_KEYS, PHASE_ORDER, PLAYBOOK_SIZE_KEYS, REMOVED_KEYS, SUCCESS_KEYS,
                                    VALIDATION_KEYS, Run, load_run)
from resd_jax.analysis.tokens import (Inspection, inspect_rollout, per_token_kl,
                                      plot_token_strip, response_token_strings, sample_kl, token_strip_html,
                                      trainer_mesh)

__all__ = ["PlaybookDiff", "diff_explorer", "diff_playbooks", "diff_steps", "entry_flow", "playbook_counts",
           "plot_entry_flow", "plot_metric", "plot_playbook", "plot_success", "plot_timings", "plot_validation",
           "report_figures", "timing_keys", "ADDED_KEYS", "PHASE_ORDER", "PLAYBOOK_SIZE_KEYS", "REMOVED_KEYS",
           "SUCCESS_KEYS", "VALIDATION_KEYS", "Run", "load_run", "Inspection", "inspect_rollout", "per_token_kl",
           "plot_token_strip", "response_token_strings", "sample_kl", "token_strip_html", "trainer_mesh"]
