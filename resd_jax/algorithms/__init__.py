"""Training algorithms as strategies of one loop (`resd_jax/loop/`): RESD, SDPO (+ss) and GRPO.

`get(name)` finds one by its config name; `register(Algorithm())` adds one (docs/DESIGN.md, "Adding an
algorithm").
"""
from resd_jax.algorithms.base import Algorithm, BatchKit, get, names, register

__all__ = ["Algorithm", "BatchKit", "get", "names", "register"]
