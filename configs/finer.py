"""Alias of the packaged config `resd_jax/configs/finer.py` (edit that file; a wheel install ships it).

Use as `--config=configs/finer.py[:variant]`, or `--config=finer[:variant]` with the `resd-train` command.
"""
from resd_jax.configs.finer import *  # noqa: F401,F403
from resd_jax.configs.finer import get_config  # noqa: F401
