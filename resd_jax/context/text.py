"""Small text helpers of the context engine: one-line collapse, length caps, a rough token count, and
`strip_reasoning` (re-exported from `resd_jax.models.tokenizer`).

Everything model-written passes through these before it reaches a prompt or the playbook, so every length
the context engine handles is bounded here.
"""
from __future__ import annotations

import re

from resd_jax.models.tokenizer import strip_reasoning  # noqa: F401  (re-exported: one definition project-wide)

_WS = re.compile(r"\s+")
# C0 / C1 control characters other than tab and newline; they confuse tokenizers and terminals.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(text: str, max_chars: int) -> str:
  """Collapse whitespace (newlines included) to single spaces, drop control characters, cap the length."""
  text = _WS.sub(" ", _CONTROL.sub(" ", text)).strip()
  if len(text) > max_chars:
    text = text[: max(0, max_chars - 3)].rstrip() + "..."
  return text


def clip_middle(text: str, max_chars: int) -> str:
  """Keep the head and tail of `text` within `max_chars`, marking what was left out in the middle.

  Answers usually sit at the end of a response and the approach at its start, so both ends are kept.
  """
  text = _CONTROL.sub(" ", text)
  if len(text) <= max_chars:
    return text
  marker = f"\n[... {len(text) - max_chars} characters omitted ...]\n"
  keep = max(0, max_chars - len(marker))
  head = keep // 2
  return text[:head] + marker + text[len(text) - (keep - head):]


def approx_token_count(text: str) -> int:
  """Rough token count (UTF-8 bytes / 4, rounded up) for budgets when no tokenizer is injected."""
  return (len(text.encode("utf-8")) + 3) // 4
