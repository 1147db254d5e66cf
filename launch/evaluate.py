"""Evaluate a run's checkpoint: n samples per test problem, mean@n / best@n of per-task and per-test-case accuracy.

  python launch/evaluate.py --config=configs/manufactoria.py:tiny --workdir=runs/quick [--step=4] [--out=eval.json]

Reads the checkpoint without writing to the run directory. `--config.eval.num_samples=8` etc. change the protocol.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, optionally `path.py:variant`",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the run directory to evaluate")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest readable one)")
_OUT = flags.DEFINE_string("out", None, "also write the metrics as JSON here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax
  from resd_jax import config_schema
  from resd_jax.loop import evaluate_checkpoint
  cfg = _CONFIG.value
  cfg.workdir = _WORKDIR.value
  try:
    run = config_schema.validate(cfg, jax.device_count())
  except config_schema.ConfigError as e:
    sys.exit(f"config error: {e}")
  step, metrics = evaluate_checkpoint(run, _WORKDIR.value, _STEP.value)
  if jax.process_index() == 0:
    result = {"step": step, **metrics}
    print(json.dumps(result, indent=2, sort_keys=True))
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  from resd_jax.config_schema import absl_flags_parser
  app.run(main, flags_parser=absl_flags_parser)
