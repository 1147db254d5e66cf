"""Small text helpers shared by the graders: reasoning stripping, fenced-block extraction, length caps.

All of them take untrusted model text and run in time linear in its length (no nested quantifiers).
"""
from __future__ import annotations

import re
from typing import Any

_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_THINK_PREFIX_RE = re.compile(r"^.*?</think>\s*", re.DOTALL)
_PY_FENCE_RE = re.compile(r"```(?:python)?(.*?)```", re.DOTALL)

DEBUG_LINES = 10       # debug section: first 10 lines ...
DEBUG_LINE_CAP = 300   # ... of at most 300 characters each
FIELD_CAP = 250        # inputs / outputs / expected values shown in feedback


def strip_reasoning(text: str) -> str:
  """Remove reasoning the way the reference does (TASKS.md §4): every `<think>...</think>` block with the
  whitespace after it, then everything up to and including the first remaining `</think>`. Text without any
  `</think>` (e.g. truncated mid-reasoning) comes back unchanged."""
  text = _THINK_BLOCK_RE.sub("", text)
  return _THINK_PREFIX_RE.sub("", text, count=1)


def last_python_block(text: str) -> str | None:
  """Stripped contents of the last ```` ``` ````/```` ```python ```` fenced block in the whole text (reasoning
  included), or None when there is none or it is empty. Fences pair left to right, as in the reference: an odd
  number of fences earlier in the text shifts the pairing. Any other language tag stays in the code."""
  matches = _PY_FENCE_RE.findall(text)
  if not matches:
    return None
  code = matches[-1].strip()
  return code or None


def cap(text: Any, limit: int = FIELD_CAP) -> str:
  """`text` cut to `limit` characters, with "..." appended when something was cut."""
  text = str(text)
  return text if len(text) <= limit else text[:limit] + "..."


def hard_cut(text: str, limit: int) -> str:
  """Right-stripped text cut to `limit` characters, no ellipsis (the final feedback cap)."""
  return text.rstrip()[:limit]


def debug_section(debug: str) -> list[str]:
  """The "Debug Output" section: first 10 lines of the stripped debug text, each capped, and a count of the rest.
  Returned as a one-element list (empty when there is no debug text) to append to a block's lines."""
  lines = debug.strip().split("\n") if debug.strip() else []
  if not lines:
    return []
  shown = [cap(line, DEBUG_LINE_CAP) for line in lines[:DEBUG_LINES]]
  if len(lines) > DEBUG_LINES:
    shown.append(f"... ({len(lines) - DEBUG_LINES} more lines)")
  return ["\nDebug Output\n" + "\n".join(shown)]
