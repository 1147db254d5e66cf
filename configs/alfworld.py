"""Alias of the packaged config `resd_jax/configs/alfworld.py` (edit that file; a wheel install ships it).

Use as `--config=configs/alfworld.py[:variant]`, or `--config=alfworld[:variant]` with the `resd-train` command.
"""
from resd_jax.configs.alfworld import *  # noqa: F401,F403
from resd_jax.configs.alfworld import get_config  # noqa: F401
