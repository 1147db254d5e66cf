"""Alias of the packaged config `resd_jax/configs/manufactoria.py` (edit that file; a wheel install ships it).

Use as `--config=configs/manufactoria.py[:variant]`, or `--config=manufactoria[:variant]` with the `resd-train` command.
"""
from resd_jax.configs.manufactoria import *  # noqa: F401,F403
from resd_jax.configs.manufactoria import get_config  # noqa: F401
