"""Reference factories for generated Has problems: a DSL program that solves each one.

Every Has predicate is a regular language recognised by a small automaton that reads the tape once, left to
right: substring -> KMP prefix automaton, ordered -> subsequence automaton, count -> capped per-colour counters.
Each automaton state becomes two pullers: a PULLER_RB (R/B go to the next state; `[EMPTY]` fires on an empty
tape *or* a Y/G front, which is not consumed) chained to a PULLER_YG for Y/G (its missing `[EMPTY]` branch
rejects: the tape has run out before acceptance). Reaching an accepting state routes straight to `end`.
"""
from __future__ import annotations

from typing import Callable, Hashable

from resd_jax.tasks.manufactoria.generator import COLOURS, Problem

State = Hashable


def _kmp_step(seq: str) -> Callable[[State, str], State]:
  def step(matched: int, c: str) -> int:
    text = seq[:matched] + c
    for k in range(min(len(seq), len(text)), -1, -1):  # longest prefix of seq that is a suffix of text
      if text.endswith(seq[:k]):
        return k
    return 0
  return step


def automaton(problem: Problem) -> tuple[State, Callable[[State, str], State], Callable[[State], bool]]:
  """(start state, transition, is_accepting) of the problem's predicate."""
  p = problem.params
  if problem.family == "contains_substring":
    return 0, _kmp_step(p), lambda s: s == len(p)
  if problem.family == "contains_ordered":
    return 0, (lambda s, c: s + 1 if s < len(p) and p[s] == c else s), lambda s: s == len(p)
  if problem.family == "contains_count":
    def step(state: tuple[int, ...], c: str) -> tuple[int, ...]:
      return tuple(min(k + (col == c), n) for k, (col, n) in zip(state, p))
    return tuple(0 for _ in p), step, lambda s: all(k == n for k, (_, n) in zip(s, p))
  raise ValueError(f"no reference factory for family {problem.family!r}")


def reference_program(problem: Problem) -> str:
  """DSL text of a factory accepting exactly the tapes the problem's predicate accepts."""
  start, step, accepting = automaton(problem)
  names: dict[State, str] = {}
  order: list[State] = []

  def name(state: State) -> str:
    if accepting(state):
      return "end"
    if state not in names:
      names[state] = f"q{len(names)}"
      order.append(state)
    return names[state]

  lines = ["START start:", f"    NEXT {name(start)}"]
  i = 0
  while i < len(order):  # breadth-first over reachable non-accepting states
    state = order[i]
    i += 1
    q = names[state]
    targets = {c: name(step(state, c)) for c in COLOURS}
    lines += [f"PULLER_RB {q}:", f"    [R] {targets['R']}", f"    [B] {targets['B']}", f"    [EMPTY] {q}_yg",
              f"PULLER_YG {q}_yg:", f"    [Y] {targets['Y']}", f"    [G] {targets['G']}"]
  lines.append("END end")
  return "\n".join(lines)
