"""Train with RESD (or the SDPO / GRPO baselines) from a config.

  resd-train --config=manufactoria:tiny --workdir=runs/quick            # a packaged config, by name
  python launch/train.py --config=configs/manufactoria.py:tiny --workdir=runs/quick   # the same, from a checkout
  python launch/train.py --config=configs/finer.py --config.model.path=models/qwen3-4b \\
      --config.data.train_path=... --config.data.test_path=... --workdir=runs/finer

Re-running the same command resumes from the newest readable checkpoint in --workdir. Multi-host: run the same
command on every host with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set; process 0 writes
files and its context state is broadcast to the others (docs/multihost.md). Library INFO logging is off; `--verbosity=0` (INFO) or `1` (DEBUG)
brings it back.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from resd_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "config: a packaged name (manufactoria, bouncingsim, "
                                          "finer, alfworld, base) or a file, optionally `:variant`",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, playbooks")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  common.quiet_library_logs(common.verbosity_given())
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or cfg.workdir
  if not workdir:
    common.fail("error: no run directory; pass --workdir=<dir> (checkpoints, metrics and playbooks go there)")
  cfg.workdir = workdir  # checked with the config (config_schema.check_workdir), before any model loads
  import jax
  from resd_jax import config_schema
  from resd_jax.parallel.mesh import DistributedInitError, maybe_initialize_distributed
  try:
    maybe_initialize_distributed()  # multi-host: see docs/multihost.md
  except DistributedInitError as e:
    common.fail(f"error: {e}")
  try:
    run = config_schema.validate(cfg, jax.device_count())  # once; the trainer takes the typed result
  except config_schema.ConfigError as e:
    common.fail(f"config error: {e}")
  main_process = jax.process_index() == 0
  if main_process:
    print(config_schema.describe(cfg), flush=True)
    print(f"\nrun directory: {os.path.abspath(workdir)}", flush=True)
  if main_process:
    print("loading the model, tokenizer, task and data ...", flush=True)
  from resd_jax.loop import train
  summary = train(run, workdir)
  if main_process:
    print(f"\n{summary.status} at step {summary.step}")
    print(f"checkpoints: {os.path.join(workdir, 'checkpoints')} (steps {summary.checkpoint_steps})")
    print(f"playbooks:   {os.path.join(workdir, 'playbooks')}")
    print(f"metrics:     {os.path.join(workdir, 'metrics.jsonl')}")
    if summary.best_step_by_rank is not None:
      best = summary.validation[str(summary.best_step_by_rank)]
      print(f"best validation step by the rank rule: {summary.best_step_by_rank} "
            f"(per-task mean@n {best.get('per_task/mean@n', 0):.4f}, best@n {best.get('per_task/best@n', 0):.4f})")
  if summary.status == "preempted":
    sys.exit(0)


def run(argv: list[str] | None = None) -> None:
  """Console entry point: re-run once with huge-page malloc where that helps (CPU), then parse flags and train."""
  from resd_jax.host_memory import reexec_with_hugepage_malloc
  reexec_with_hugepage_malloc()  # once, before any work: glibc reads its tunables at start-up
  from resd_jax.config_schema import absl_flags_parser
  app.run(main, argv=common.resolve_config_args(sys.argv if argv is None else argv),
          flags_parser=absl_flags_parser)


if __name__ == "__main__":
  run()
