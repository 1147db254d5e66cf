"""`RoleGenerators`: the per-role text generators handed to `ContextUpdater.update`.

A generator is any `generate(conversations) -> texts` callable. Ones that also have `take_metrics() -> dict`
report their (sum, count) counters (calls, timeouts, cut reasoning, ...) to the updater after each call.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from resd_jax.roles.config import ROLES

GenerateText = Callable[[list[list[dict[str, str]]]], list[str]]


class RoleGenerators:
  """One generator per role (reflector, tagger, curator); several roles may share one generator."""

  def __init__(self, generators: Mapping[str, GenerateText]):
    missing = set(ROLES) - set(generators)
    if missing:
      raise ValueError(f"RoleGenerators needs a generator for every role; missing {sorted(missing)}")
    self.generators = {r: generators[r] for r in ROLES}

  def __getitem__(self, role: str) -> GenerateText:
    return self.generators[role]

  def map(self, wrap: Callable[[str, GenerateText], GenerateText]) -> "RoleGenerators":
    """The same roles with each generator replaced by `wrap(role, generator)` (e.g. to record outputs)."""
    return RoleGenerators({r: wrap(r, g) for r, g in self.generators.items()})


def take_metrics(generate: Any) -> dict[str, tuple[float, int]]:
  """The counters a generator accumulated since the last call (empty for a plain callable)."""
  take = getattr(generate, "take_metrics", None)
  return dict(take()) if callable(take) else {}
