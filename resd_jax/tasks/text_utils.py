"""Small text helpers shared by the graders: reasoning stripping, fenced-block extraction, length caps.

All of them take untrusted model text and run in time linear in its length. They are written as `str.find`
scans rather than lazy regexes: a regex like `<a>(.*?)</a>` retries from every unmatched opening tag and is
quadratic on inputs such as "<a>" * 100000. Each scan reproduces the regex's left-to-right, non-overlapping
match semantics (docs/TASKS.md §4, §2.4).
"""
from __future__ import annotations

from typing import Any

DEBUG_LINES = 10       # debug section: first 10 lines ...
DEBUG_LINE_CAP = 300   # ... of at most 300 characters each
FIELD_CAP = 250        # inputs / outputs / expected values shown in feedback


def tagged_spans(text: str, open_tag: str, close_tag: str) -> list[tuple[int, int]]:
  """(start, end) of each `open_tag ... close_tag` match, left to right, non-overlapping, shortest body: what
  `re.finditer(open + "(.*?)" + close, DOTALL)` finds, in linear time. `start` is the opening tag, `end` is
  just after the closing tag."""
  spans, pos = [], 0
  while True:
    i = text.find(open_tag, pos)
    if i < 0:
      return spans
    j = text.find(close_tag, i + len(open_tag))
    if j < 0:  # no closing tag after this opening one, hence none after any later one either
      return spans
    spans.append((i, j + len(close_tag)))
    pos = j + len(close_tag)


def last_tagged(text: str, open_tag: str, close_tag: str) -> str | None:
  """Body of the last `open_tag ... close_tag` match (unstripped), or None."""
  spans = tagged_spans(text, open_tag, close_tag)
  if not spans:
    return None
  i, j = spans[-1]
  return text[i + len(open_tag):j - len(close_tag)]


def strip_reasoning(text: str) -> str:
  """Remove reasoning the way the reference does (docs/TASKS.md §4): every `<think>...</think>` block with the
  whitespace after it, then everything up to and including the first remaining `</think>` and the whitespace
  after it. Text without any `</think>` (e.g. truncated mid-reasoning) comes back unchanged."""
  parts, pos = [], 0
  for i, j in tagged_spans(text, "<think>", "</think>"):
    parts.append(text[pos:i])
    pos = len(text) - len(text[j:].lstrip())
  text = "".join(parts) + text[pos:]
  k = text.find("</think>")
  return text if k < 0 else text[k + len("</think>"):].lstrip()


def last_python_block(text: str) -> str | None:
  """Stripped contents of the last ```` ``` ````/```` ```python ```` fenced block in the whole text (reasoning
  included), or None when there is none or it is empty. Fences pair left to right, as in the reference regex
  ```` ```(?:python)?(.*?)``` ````: an odd number of fences earlier in the text shifts the pairing. Any other
  language tag stays in the code."""
  last, pos = None, 0
  while True:
    i = text.find("```", pos)
    if i < 0:
      break
    start = i + 3 + (6 if text.startswith("python", i + 3) else 0)
    j = text.find("```", start)
    if j < 0:
      break
    last, pos = text[start:j], j + 3
  code = last.strip() if last is not None else ""
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
