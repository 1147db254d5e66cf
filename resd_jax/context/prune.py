"""Playbook pruning ("concise"): keep the playbook small and useful.

Entries fall into three categories: unused (never tagged: helpful == harmful == 0), harmful
(harmful >= helpful and harmful > 0) and helpful (everything else). Methods:

- `staleness`: drop every harmful entry and the unused entries not tagged for more than one update
  (`update_count - last_tagged > 1`); if a cap is given and still exceeded, evict the longest-untagged of the
  remaining entries, ties broken by a seeded shuffle. With `keep_recent_harmful` (our extension, off in the
  paper configs) a harmful entry tagged within the last update survives too, like a fresh unused one; the
  reference code removes every harmful entry.
- `prioritized`: drop every unused and harmful entry; if a cap is given and still exceeded, drop a seeded random
  sample of the helpful ones.
- `reset`: drop everything.

Triggers live in the updater: every F updates (no cap) and whenever the size exceeds M_max (cap = M_max).
"""
from __future__ import annotations

import dataclasses
import random

from resd_jax.context.playbook import Entry, Playbook

METHODS = ("staleness", "prioritized", "reset")


def category(e: Entry) -> str:
  if e.helpful == 0 and e.harmful == 0:
    return "unused"
  if e.harmful >= e.helpful:
    return "harmful"
  return "helpful"


@dataclasses.dataclass
class PruneResult:
  removed: list[str]
  by_category: dict[str, int]


def prune(pb: Playbook, method: str, cap: int | None, rng: random.Random, keep_recent_harmful: bool = True
          ) -> PruneResult:
  """Remove entries from `pb` in place; returns the removed ids and how many of each category went."""
  if method not in METHODS:
    raise ValueError(f"unknown prune method {method!r}; choose one of {METHODS}")
  if cap is not None and cap < 0:
    raise ValueError(f"prune cap must be >= 0, got {cap}")
  if method == "reset":
    drop = [e.id for e in pb.entries]
  elif method == "staleness":
    def goes(e: Entry) -> bool:
      cat, stale = category(e), pb.update_count - e.last_tagged > 1
      return (cat == "unused" and stale) or (cat == "harmful" and (stale or not keep_recent_harmful))
    drop = [e.id for e in pb.entries if goes(e)]
    stale = set(drop)
    rest = [e for e in pb.entries if e.id not in stale]
    if cap is not None and len(rest) > cap:
      order = list(rest)
      rng.shuffle(order)  # tie-break among equally stale entries
      order.sort(key=lambda e: e.last_tagged)  # stable: shuffled order survives within a tie
      drop += [e.id for e in order[: len(rest) - cap]]
  else:  # prioritized
    drop = [e.id for e in pb.entries if category(e) != "helpful"]
    rest = [e for e in pb.entries if category(e) == "helpful"]
    if cap is not None and len(rest) > cap:
      drop += [e.id for e in rng.sample(rest, len(rest) - cap)]
  counts = {"unused": 0, "harmful": 0, "helpful": 0}
  dropset = set(drop)
  for e in pb.entries:
    if e.id in dropset:
      counts[category(e)] += 1
  pb.remove(dropset)
  return PruneResult(removed=drop, by_category=counts)
