"""Alias of the packaged config `resd_jax/configs/base.py` (edit that file; a wheel install ships it).

Use as `--config=configs/base.py[:variant]`, or `--config=base[:variant]` with the `resd-train` command.
"""
from resd_jax.configs.base import *  # noqa: F401,F403
from resd_jax.configs.base import get_config  # noqa: F401
