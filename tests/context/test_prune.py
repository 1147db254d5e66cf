"""Pruning: table-driven cases for every method, the cap, seeded tie-breaks."""
import random

import pytest

from resd_jax.context.playbook import Entry, Playbook
from resd_jax.context.prune import category, prune
from resd_jax.context.rng import SeededRng

# id: (helpful, harmful, last_tagged); the playbook is at update 10.
ROWS = {
  "misc-00001": (0, 0, 10),  # unused, fresh
  "misc-00002": (0, 0, 5),   # unused, stale
  "misc-00003": (1, 3, 9),   # harmful, tagged one update ago: not stale
  "misc-00004": (2, 2, 3),   # harmful (tie counts as harmful), stale
  "misc-00005": (5, 0, 2),   # helpful, longest untagged
  "misc-00006": (3, 1, 8),   # helpful
  "misc-00007": (1, 0, 9),   # helpful
}


def _pb() -> Playbook:
  entries = [Entry(i, "others", f"lesson {i}", h, d, 0, t) for i, (h, d, t) in ROWS.items()]
  return Playbook(entries, next_id=8, update_count=10)


def test_categories():
  cats = {e.id: category(e) for e in _pb().entries}
  assert cats == {"misc-00001": "unused", "misc-00002": "unused", "misc-00003": "harmful",
                  "misc-00004": "harmful", "misc-00005": "helpful", "misc-00006": "helpful",
                  "misc-00007": "helpful"}


@pytest.mark.parametrize("method, cap, kept", [
  ("staleness", None, ["misc-00001", "misc-00003", "misc-00005", "misc-00006", "misc-00007"]),
  ("staleness", 5, ["misc-00001", "misc-00003", "misc-00005", "misc-00006", "misc-00007"]),
  ("staleness", 3, ["misc-00001", "misc-00003", "misc-00007"]),  # evicts tagged-at 2 and 8
  ("staleness", 0, []),
  ("prioritized", None, ["misc-00005", "misc-00006", "misc-00007"]),
  ("prioritized", 3, ["misc-00005", "misc-00006", "misc-00007"]),
  ("prioritized", 0, []),
  ("reset", None, []),
  ("reset", 100, []),
])
def test_prune_table(method, cap, kept):
  pb = _pb()
  res = prune(pb, method, cap, random.Random(0))
  assert pb.ids() == kept
  assert sorted(res.removed) == sorted(set(ROWS) - set(kept))
  assert sum(res.by_category.values()) == len(ROWS) - len(kept)
  assert pb.next_id == 8  # the id counter never moves back


def test_prune_counts_by_category():
  res = prune(_pb(), "prioritized", None, random.Random(0))
  assert res.by_category == {"unused": 2, "harmful": 2, "helpful": 0}


def test_staleness_tie_break_is_seeded():
  # cap 2 after dropping the stale ones: evict tagged-at 2, 8, then one of the two tagged at 9 (03 or 07).
  outcomes = set()
  for seed in range(20):
    a, b = _pb(), _pb()
    prune(a, "staleness", 2, random.Random(seed))
    prune(b, "staleness", 2, random.Random(seed))
    assert a.ids() == b.ids()
    assert a.ids()[0] == "misc-00001" and len(a) == 2
    outcomes.add(tuple(a.ids()))
  assert outcomes == {("misc-00001", "misc-00003"), ("misc-00001", "misc-00007")}


def test_prioritized_random_sample_is_seeded():
  outcomes = set()
  for seed in range(20):
    a, b = _pb(), _pb()
    prune(a, "prioritized", 2, SeededRng(seed).draw("prune"))
    prune(b, "prioritized", 2, SeededRng(seed).draw("prune"))
    assert a.ids() == b.ids() and len(a) == 2
    assert set(a.ids()) <= {"misc-00005", "misc-00006", "misc-00007"}
    outcomes.add(tuple(a.ids()))
  assert len(outcomes) == 3  # every helpful entry can be the one dropped


def test_seeded_rng_streams():
  r = SeededRng(3)
  x = [r.draw("p").random() for _ in range(3)]
  assert r.counter == 3 and len(set(x)) == 3
  r2 = SeededRng.from_dict({"seed": 3, "counter": 1})
  assert r2.draw("p").random() == x[1]  # a restored counter continues the same stream


@pytest.mark.parametrize("method, cap, msg", [("nope", None, "unknown prune method"), ("reset", -1, "cap")])
def test_prune_bad_arguments(method, cap, msg):
  with pytest.raises(ValueError, match=msg):
    prune(_pb(), method, cap, random.Random(0))
