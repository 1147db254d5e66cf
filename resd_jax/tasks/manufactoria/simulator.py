"""Runs a parsed factory on one tape, and decides whether a run passes a test case (docs/TASKS.md §1.2-1.3).

The tape is a queue: pullers remove the front colour, painters append at the back. A run ends on `end`
(accepted), on `NONE` or an undeclared ID (rejected), or after `MAX_VISITS` node visits (rejected as a
possible infinite loop). Visits count `start` and the terminal node, so a rejected-by-limit path has exactly
`MAX_VISITS` entries.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

from resd_jax.tasks.manufactoria.dsl import PAINT_COLOUR, PULL_COLOURS, NodeType, Program

MAX_VISITS = 1000
LOOP_REASON = "Maximum iterations exceeded (possible infinite loop)"
NONE_REASON = "Routed to NONE"
# Characters that make `expected_output` a regular expression rather than a literal tape.
_REGEX_CHARS = frozenset(".+*?|()")


@dataclasses.dataclass
class RunResult:
  finished: bool  # reached `end`
  final_tape: str  # what is left on the tape when the run stopped
  path: list[str]  # every visited ID in order, including start, end, NONE and unknown IDs
  rejection_reason: str | None  # None when accepted


_PULL, _PAINT, _NEXT = 0, 1, 2


def _compile(program: Program) -> dict[str, tuple[int, Any, dict[str, str]]]:
  """Per node: (kind, readable colours or painted colour, route table); enum lookups are slow in the hot loop."""
  if "table" in program.cache:
    return program.cache["table"]
  table = program.cache["table"] = {}
  for nid, node in program.nodes.items():
    if node.type in PULL_COLOURS:
      table[nid] = (_PULL, PULL_COLOURS[node.type], node.route_map)
    elif node.type in PAINT_COLOUR:
      table[nid] = (_PAINT, PAINT_COLOUR[node.type], node.route_map)
    elif node.type is NodeType.START:
      table[nid] = (_NEXT, None, node.route_map)
    # END: its ID is always `end`, which the loop handles before any table lookup
  return table


def run(program: Program, tape: str, max_visits: int = MAX_VISITS) -> RunResult:
  """Send a robot carrying `tape` through the factory."""
  table = _compile(program)
  queue = collections.deque(tape)
  path: list[str] = []
  current = "start"
  for _ in range(max_visits):
    path.append(current)
    if current == "NONE":
      return RunResult(False, "".join(queue), path, NONE_REASON)
    if current == "end":
      return RunResult(True, "".join(queue), path, None)
    entry = table.get(current)
    if entry is None:
      return RunResult(False, "".join(queue), path, f"Unknown node: {current}")
    kind, arg, routes = entry
    if kind == _PULL:
      if queue and queue[0] in arg:
        current = routes.get(queue.popleft(), "NONE")  # a readable colour is consumed even without a route
      else:
        current = routes.get("EMPTY", "NONE")  # empty tape, or a colour this puller cannot read (kept)
    else:
      if kind == _PAINT:
        queue.append(arg)
      current = routes.get("NEXT", "NONE")
  return RunResult(False, "".join(queue), path, LOOP_REASON)


def output_matches(expected_output: str, final_tape: str) -> bool:
  """Literal comparison, or a full regex match when `expected_output` contains any of `.+*?|()`.

  An invalid regex falls back to literal comparison.
  """
  if _REGEX_CHARS.intersection(expected_output):
    try:
      return re.fullmatch(expected_output, final_tape) is not None
    except re.error:
      pass
  return final_tape == expected_output


def passes(result: RunResult, test: dict[str, Any]) -> bool:
  """The pass rule. Missing `expected_accepted` / `check_output` default to True (the grader's defaults)."""
  expected_accepted = bool(test.get("expected_accepted", True))
  if not test.get("check_output", True):
    return result.finished == expected_accepted
  matched = output_matches(str(test.get("expected_output", "")), result.final_tape)
  return (matched and result.finished) == expected_accepted
