"""Generator of the Manufactoria "Has" problem set: three families over the colours R, B, Y, G (docs/TASKS.md §1.8).

* contains_substring: every sequence of length 1-4 (340 problems) -- accept iff the tape contains it consecutively;
* contains_ordered: every sequence of length 1-4 (340) -- accept iff the tape contains it as a subsequence;
* contains_count: every set of 1-3 distinct colours with counts >= 1 summing to <= 6 (194) -- accept iff the
  tape holds at least that many of each.

That is the full parameter space, 874 problems, as in the public set. Test tapes follow the reference recipe
(fixed short tapes, random corner cases, family-specific near-misses, random top-up) but are drawn from a
`random.Random` seeded by (seed, problem id), so a problem's tests do not depend on which other problems are
generated. Labels always come from the predicate, never from the recipe's intent.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any, Callable

COLOURS = "RBYG"
FAMILIES = ("contains_count", "contains_ordered", "contains_substring")
MAX_TESTS = 35
MIN_PER_LABEL = 3
TOPUP_ATTEMPTS = 50
TRAIN_RATIO = 0.85


@dataclasses.dataclass(frozen=True)
class Problem:
  """One Has problem. `params` is the sequence (ordered / substring) or ((colour, n), ...) (count)."""
  id: str
  family: str
  name: str
  criteria: str
  params: Any
  tests: tuple[dict[str, Any], ...]


# ---- predicates -------------------------------------------------------------------------------------------
def is_subsequence(seq: str, tape: str) -> bool:
  it = iter(tape)
  return all(c in it for c in seq)


def predicate(family: str, params: Any) -> Callable[[str], bool]:
  """The acceptance rule of a problem: tape -> should the robot be accepted."""
  if family == "contains_substring":
    return lambda tape: params in tape
  if family == "contains_ordered":
    return lambda tape: is_subsequence(params, tape)
  if family == "contains_count":
    return lambda tape: all(tape.count(c) >= n for c, n in params)
  raise ValueError(f"unknown Manufactoria family {family!r}; known: {FAMILIES}")


# ---- parameter space --------------------------------------------------------------------------------------
def sequences(max_len: int = 4) -> list[str]:
  return ["".join(p) for k in range(1, max_len + 1) for p in itertools.product(COLOURS, repeat=k)]


def count_requirements(max_colours: int = 3, max_total: int = 6) -> list[tuple[tuple[str, int], ...]]:
  out = []
  for k in range(1, max_colours + 1):
    for cols in itertools.combinations(COLOURS, k):
      for counts in itertools.product(range(1, max_total + 1), repeat=k):
        if sum(counts) <= max_total:
          out.append(tuple(zip(cols, counts)))
  return out


def _plural(c: str, n: int) -> str:
  return f"{n} {c}{'s' if n > 1 else ''}"


def describe(family: str, params: Any) -> tuple[str, str, str]:
  """(id, name, criteria sentence) of a problem."""
  if family == "contains_substring":
    return (f"has-substring-{params}", f"Contains '{params}'",
            f"Accept the robot if the substring '{params}' appears in its tape (the colours must be consecutive); "
            "reject it otherwise.")
  if family == "contains_ordered":
    return (f"has-ordered-{params}", f"Contains {params}",
            f"Accept the robot if its tape contains the colours {params} in this order, not necessarily next to "
            "each other (a subsequence); reject it otherwise.")
  pid = "has-count-" + "-".join(f"{c}{n}" for c, n in params)
  if len(params) == 1:
    c, n = params[0]
    return pid, f"At least {_plural(c, n)}", f"Accept the robot if its tape has at least {_plural(c.lower(), n)}; reject it otherwise."
  name = "Need " + " and ".join(_plural(c, n) for c, n in params)
  need = " and ".join(f"at least {_plural(c.lower(), n)}" for c, n in params)
  return pid, name, f"Accept the robot if its tape has {need}; reject it otherwise."


# ---- test tapes -------------------------------------------------------------------------------------------
class _Tapes:
  """Random tape pieces for one problem."""

  def __init__(self, rng: random.Random):
    self.rng = rng

  def rand(self, k: int, alphabet: str = COLOURS) -> str:
    return "".join(self.rng.choice(alphabet) for _ in range(k)) if alphabet else ""

  def between(self, seq: str, lo: int = 1, hi: int = 1) -> str:
    """`seq` with lo..hi random colours between each adjacent pair."""
    return seq[:1] + "".join(self.rand(self.rng.randint(lo, hi)) + c for c in seq[1:])

  def shuffled(self, s: str) -> str:
    chars = list(s)
    self.rng.shuffle(chars)
    return "".join(chars)


def _substring_cases(t: _Tapes, s: str) -> list[str]:
  r, other = t.rng, "".join(c for c in COLOURS if c not in s)
  cases = [s, s + t.rand(3), t.rand(6) + s, t.rand(r.randint(1, 3)) + s + t.rand(r.randint(1, 3)),
           s + t.rand(r.randint(1, 3)) + s, t.rand(r.randint(3, 5)) + s + t.rand(r.randint(3, 5))]
  if len(set(s)) < len(s):
    cases.append(s + s[1:])
  cases.append(t.between(s))
  for i in range(1, len(s)):
    pad = t.rand(r.randint(3, 6))
    cases.append(pad + s[:i] + pad)
  pad = t.rand(r.randint(2, 4))
  cases.append(pad + s[::-1] + pad)
  rev = s[::-1] if s[::-1] != s else s[1::-1] + s[2:]
  pad = t.rand(3)
  cases.append(pad + rev + pad)
  mid = len(s) // 2
  cases.append(s[:mid] + t.rand(1) + s[mid:])
  if other:
    cases.append(t.rand(12, other))
  if len(s) >= 2:
    pos, pad = r.randint(1, len(s) - 1), t.rand(3)
    cases.append(pad + s[:pos] + t.rand(1) + s[pos:] + pad)
  cases.append(t.rand(2) + t.between(s) + t.rand(2))
  return cases


def _ordered_cases(t: _Tapes, s: str) -> list[str]:
  r, other = t.rng, "".join(c for c in COLOURS if c not in s)
  mid = len(s) // 2
  cases = [s] + [s[:i] + t.rand(1) + s[i:] for i in range(1, len(s))]
  cases += [t.between(s), s + t.rand(3), t.rand(6) + s,
            t.rand(r.randint(2, 4)) + t.between(s, 1, 3) + t.rand(r.randint(2, 4)),
            s[:mid] + t.rand(1) + s[mid:] + t.rand(2) + s]
  cases += [s[1:], s[:-1], s[:mid] + s[mid + 1:]]
  pad = t.rand(r.randint(2, 5))
  cases.append(pad + s[::-1] + pad)
  pad = t.rand(3)
  cases.append(pad + s[-1:] + s[:-1] + pad)
  if len(s) >= 2:
    pad = t.rand(9)
    cases.append(pad + s[:-2] + s[-1] + pad)
  if other:
    cases.append(t.rand(12, other))
  pad = t.rand(18)
  cases.append(pad + s[:mid] + s[mid + 1:] + pad)
  return cases


def _count_cases(t: _Tapes, reqs: tuple[tuple[str, int], ...]) -> list[str]:
  r = t.rng
  need = "".join(c for c, _ in reqs)
  other = "".join(c for c in COLOURS if c not in need)
  exact = "".join(c * n for c, n in reqs)

  def padded(base: str, length: int, pick: Callable[[], str]) -> str:
    return base + "".join(pick() for _ in range(max(0, length - len(base))))

  cases = [exact, exact + "".join(c * r.randint(1, 2) for c in need), exact + t.rand(3, other),
           padded("".join(c * (n + r.randint(0, 2)) for c, n in reqs), 12, lambda: t.rand(1)),
           padded(exact, 18, lambda: r.choice(need) if r.random() < 0.6 else r.choice(COLOURS))]
  c0, n0 = reqs[0]
  cases.append("".join(c * n for c, n in reqs[:-1]) + t.rand(5, other))
  if n0 > 1:
    cases.append(c0 * (n0 - 1) + "".join(c * n for c, n in reqs[1:]) + t.rand(3, other))
  cases.append(t.rand(12, other))
  fewer = "".join(c * (n - 1) for c, n in reqs)
  cases.append(fewer + t.rand(max(5, 12 - len(fewer)), other))
  cases.append(padded(c0 * (n0 - 1) + "".join(c * n for c, n in reqs[1:]), 18, lambda: t.rand(1)))
  return [t.shuffled(c) for c in cases]


_FAMILY_CASES = {"contains_substring": _substring_cases, "contains_ordered": _ordered_cases,
                 "contains_count": _count_cases}


def make_tests(family: str, params: Any, rng: random.Random) -> list[dict[str, Any]]:
  """Test cases of one problem: fixed + corner + family tapes, de-duplicated, topped up to >= 3 per label."""
  t, accept = _Tapes(rng), predicate(family, params)
  pool = [""] + list(COLOURS) + [a + b for a in COLOURS for b in COLOURS]
  corner = {rng.choice(pool) for _ in range(5)} | {"RB", "BR", "RBR", "BRB", "RRB", "BBR", ""}
  tapes = list(dict.fromkeys(["", "R", "RB", *sorted(corner), *_FAMILY_CASES[family](t, params)]))
  labels = [accept(s) for s in tapes]
  for attempt in range(TOPUP_ATTEMPTS):
    want = [lab for lab in (True, False) if labels.count(lab) < MIN_PER_LABEL]
    if not want:
      break
    s = t.rand(rng.randint(1, min(1 + (attempt // 10 + 1), 12)))
    if s not in tapes and accept(s) in want:
      tapes.append(s)
      labels.append(accept(s))
  return [{"input": s, "expected_output": "", "expected_accepted": lab, "check_output": False, "description": ""}
          for s, lab in zip(tapes[:MAX_TESTS], labels[:MAX_TESTS])]


# ---- the problem set --------------------------------------------------------------------------------------
def family_params(family: str) -> list[Any]:
  return count_requirements() if family == "contains_count" else sequences()


def make_problem(family: str, params: Any, seed: int = 0) -> Problem:
  pid, name, criteria = describe(family, params)
  tests = make_tests(family, params, random.Random(f"{seed}/{pid}"))
  return Problem(pid, family, name, criteria, params, tuple(tests))


def generate(seed: int = 0, families: tuple[str, ...] = FAMILIES) -> list[Problem]:
  """Every Has problem of `families`, in a fixed order (family, then parameter order)."""
  return [make_problem(f, p, seed) for f in families for p in family_params(f)]


def split(problems: list[Problem], seed: int = 42, train_ratio: float = TRAIN_RATIO
          ) -> tuple[list[Problem], list[Problem]]:
  """The reference ensemble rule: per family a seeded shuffle, concatenate, shuffle, first 85% is train."""
  rng = random.Random(seed)
  pooled: list[Problem] = []
  for family in FAMILIES:
    members = [p for p in problems if p.family == family]
    pooled += rng.sample(members, len(members))
  rng.shuffle(pooled)
  n_train = int(len(pooled) * train_ratio)
  return pooled[:n_train], pooled[n_train:]
