"""Alias of the packaged config `resd_jax/configs/bouncingsim.py` (edit that file; a wheel install ships it).

Use as `--config=configs/bouncingsim.py[:variant]`, or `--config=bouncingsim[:variant]` with the `resd-train` command.
"""
from resd_jax.configs.bouncingsim import *  # noqa: F401,F403
from resd_jax.configs.bouncingsim import get_config  # noqa: F401
