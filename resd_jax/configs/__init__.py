"""Run configs shipped inside the package, so a wheel install has them too.

`base` holds every default (documented there); `manufactoria`, `bouncingsim`, `finer` and `alfworld` hold the
paper's settings per task, each with named variants (`:tiny` for a CPU quick start). The repository's
`configs/*.py` files are thin aliases of these modules, so `--config=configs/manufactoria.py:tiny` works from a
checkout and `load("manufactoria:tiny")` (or `--config=manufactoria:tiny` with the `resd-train` command) works
from anywhere.
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
from typing import Any

NAMES = ("base", "manufactoria", "bouncingsim", "finer", "alfworld")


def module_path(name: str) -> pathlib.Path:
  """The file of the packaged config `name` (one of NAMES)."""
  if name not in NAMES:
    raise ValueError(f"unknown config {name!r}; the packaged configs are {', '.join(NAMES)} "
                     f"(or pass a file: --config=path/to/config.py[:variant])")
  return pathlib.Path(__file__).with_name(f"{name}.py")


def load(spec: str) -> Any:
  """The ConfigDict of `name[:variant]` (a packaged config) or `path/to/file.py[:variant]` (any config file
  with a `get_config(variant)` function)."""
  target, _, variant = str(spec).partition(":")
  if target.endswith(".py"):
    path = pathlib.Path(target).expanduser()
    if not path.is_file():
      raise ValueError(f"config file {target!r} does not exist; pass a config file or one of {', '.join(NAMES)}")
    module_spec = importlib.util.spec_from_file_location(f"_resd_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
  else:
    module_path(target)  # checks the name
    module = importlib.import_module(f"resd_jax.configs.{target}")
  return module.get_config(variant) if variant else module.get_config()
