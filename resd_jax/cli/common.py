"""What every command shares: config names that resolve to the packaged configs, quiet library logging, and the
flag parser that turns a bad `--config.x=y` override into one line."""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

# Loggers whose INFO lines are library chatter on a normal run (Orbax's manager options, XLA's backend probing).
_CHATTY = ("absl", "orbax", "jax", "jax._src.xla_bridge", "etils", "tensorflow")


def resolve_config_args(argv: Sequence[str]) -> list[str]:
  """`--config=manufactoria:tiny` (a packaged config's name) -> `--config=<package>/configs/manufactoria.py:tiny`;
  file paths pass through, so `--config=configs/manufactoria.py:tiny` keeps working from a checkout."""
  from resd_jax import configs
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      target, sep, variant = arg[len("--config="):].partition(":")
      if not target.endswith(".py") and target in configs.NAMES:
        arg = f"--config={configs.module_path(target)}{sep}{variant}"
    out.append(arg)
  return out


def quiet_library_logs(verbosity_given: bool) -> None:
  """Library INFO chatter off unless the user asked for it with --verbosity (absl's flag: 0 = INFO, 1 = DEBUG).

  Our own progress goes to stdout with print, so it is not affected."""
  if verbosity_given:
    return
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in _CHATTY:
    logging.getLogger(name).setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO/WARNING lines of XLA and TensorFlow
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # e.g. its note that PyTorch is not installed


def verbosity_given() -> bool:
  from absl import flags
  return bool(flags.FLAGS["verbosity"].present)


def fail(message: str) -> "NoReturn":  # noqa: F821
  """Exit with one line on stderr."""
  sys.exit(" ".join(str(message).split()))
