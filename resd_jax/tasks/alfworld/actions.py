"""Turning a model's free-form reply into one ALFWorld command, defensively.

The reply is untrusted text: it may hold reasoning (closed or cut off), several candidate lines, markdown,
quotes, or nothing usable. We take, in order of preference: the last fenced block, the last `Action: ...` /
`> ...` line, else the last non-empty line; then normalise case, spacing and decoration, and bound the length.
A command that is not admissible is still sent to the engine, which answers it with its own message
("Nothing happens."), exactly as for a human player.
"""
from __future__ import annotations

import dataclasses
import re

MAX_REPLY_CHARS = 8000  # only the tail of a longer reply is read
MAX_ACTION_CHARS = 120  # longest admissible ALFWorld commands are ~60 characters

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.S)
_TAGGED = re.compile(r"^\s*(?:[*_#\s]*action[*_\s]*[:：]|>)\s*(.*)$", re.I)
_DECOR = " \t\"'`*_.,;:!>[](){}<>"


@dataclasses.dataclass(frozen=True)
class ParsedAction:
  """command: what is sent to the engine ("" when nothing usable was found).
  well_formed: the reply had a usable action (False is counted as a format failure).
  admissible: the command is in the admissible list (None when no list was given).
  """
  command: str
  well_formed: bool
  admissible: bool | None


def strip_reasoning(reply: str) -> str | None:
  """The text after the last `</think>`; None when a `<think>` block was opened and never closed."""
  if "</think>" in reply:
    return reply.rsplit("</think>", 1)[1]
  if "<think>" in reply:
    return None  # generation stopped inside the reasoning: there is no answer
  return reply


def normalise(command: str) -> str:
  """Lower case, single spaces, no surrounding quotes / markdown / final period, bounded length."""
  command = " ".join(command.split()).strip(_DECOR).lower()
  return command[:MAX_ACTION_CHARS].strip()


def _pick(lines: list[str]) -> str:
  """The last tagged command among `lines`, else the last line ("" for a bare tag with nothing after it)."""
  tagged = [m.group(1) for m in map(_TAGGED.match, lines) if m and m.group(1).strip()]
  if tagged:
    return tagged[-1]
  if not lines:
    return ""
  bare = _TAGGED.match(lines[-1])
  return bare.group(1) if bare else lines[-1]


def _candidate(text: str) -> str:
  fences = _FENCE.findall(text)
  if fences:
    lines = [l for l in fences[-1].splitlines() if l.strip()]
    if lines:
      return _pick(lines)
  return _pick([l for l in text.splitlines() if l.strip()])


def parse_action(reply: str, admissible: list[str] | None = None) -> ParsedAction:
  """The command in `reply` (see module doc). Never raises on any string."""
  if not isinstance(reply, str):
    return ParsedAction("", False, False if admissible is not None else None)
  answer = strip_reasoning(reply[-MAX_REPLY_CHARS:] if len(reply) > MAX_REPLY_CHARS else reply)
  command = normalise(_candidate(answer)) if answer is not None else ""
  if admissible is None:
    return ParsedAction(command, bool(command), None)
  lowered = {a.lower(): a for a in admissible}
  if command in lowered:
    return ParsedAction(lowered[command], True, True)
  return ParsedAction(command, bool(command), False)
