"""Small text helpers of the context engine: valid-Unicode cleaning, one-line collapse, length caps, a rough
token count, and `strip_reasoning` (re-exported from `resd_jax.models.tokenizer`).

Everything model-written passes through these before it reaches a prompt or the playbook, so every length
the context engine handles is bounded here, and every string is encodable as UTF-8 (`clean_text`).
"""
from __future__ import annotations

import re
from typing import Any

from resd_jax.models.tokenizer import strip_reasoning  # noqa: F401  (re-exported: one definition project-wide)

_WS = re.compile(r"\s+")
# C0 / C1 control characters other than tab and newline; they confuse tokenizers and terminals.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# Line boundaries other than LF (as str.splitlines knows them: CR and CR LF, VT, FF, the separators
# U+001C-001E, NEL, U+2028, U+2029) become LF in `clean_text`.
_BREAK = re.compile(r"\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# What `clean_text` takes out of model text:
#   the other C0 / C1 controls and DEL (tab and LF stay): NUL, ESC sequences for terminals, ...;
#   bidi embeddings / overrides / isolates U+202A-202E, U+2066-2069 (they reorder what a reader sees:
#     a lesson could display differently from what the model is shown); the marks LRM / RLM / ALM stay;
#   invisible separators that hide text from dedupe and readers: ZWSP U+200B, WJ U+2060, BOM U+FEFF,
#     U+180E, and Unicode tag characters U+E0000-E007F (invisible "ASCII smuggling"; the flag sequences
#     that use them fall back to a plain black flag). ZWJ / ZWNJ stay: emoji and several scripts need them.
_REMOVE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff\u180e"
                     r"\U000e0000-\U000e007f]")
# Not valid for interchange: surrogate code points (a str can hold them, UTF-8 cannot) and the 66
# noncharacters (U+FDD0-FDEF and the last two code points of every plane).
_INVALID = re.compile(r"[\ud800-\udfff\ufdd0-\ufdef" + "".join(
    f"\\U{p:04x}fffe\\U{p:04x}ffff" for p in range(17)) + "]")
_SURROGATE_PAIR = re.compile(r"[\ud800-\udbff][\udc00-\udfff]")
REPLACEMENT = "\ufffd"


def _join_pair(m: re.Match) -> str:
  return m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def clean_text(text: str) -> tuple[str, int]:
  """Model text as valid, safe Unicode, and how many places were changed.

  A surrogate pair split into two code points (text that went through UTF-16 with `surrogatepass`) becomes
  the character it encodes; any other surrogate (lone high or low, bytes kept by `surrogateescape`) and
  noncharacters become U+FFFD; line breaks become LF (`_BREAK`); the controls listed at `_REMOVE` are dropped.
  The result always encodes as UTF-8. Never raises; a non-string gives ("", 0).
  """
  if not isinstance(text, str):
    return "", 0
  text, joined = _SURROGATE_PAIR.subn(_join_pair, text)
  text, breaks = _BREAK.subn("\n", text)
  text, removed = _REMOVE.subn("", text)
  text, replaced = _INVALID.subn(REPLACEMENT, text)
  return text, joined + breaks + removed + replaced


def clean_value(value: Any) -> tuple[Any, int]:
  """`clean_text` applied to every string (dict keys included) of a parsed JSON value; (value, changes)."""
  if isinstance(value, str):
    return clean_text(value)
  if isinstance(value, list):
    pairs = [clean_value(v) for v in value]
    return [v for v, _ in pairs], sum(n for _, n in pairs)
  if isinstance(value, dict):
    out, total = {}, 0
    for k, v in value.items():
      (k2, nk), (v2, nv) = clean_text(k) if isinstance(k, str) else (k, 0), clean_value(v)
      out.setdefault(k2, v2)  # two keys that clean to the same text: the first wins
      total += nk + nv
    return out, total
  return value, 0


def one_line(text: str, max_chars: int) -> str:
  """Collapse whitespace (newlines included) to single spaces, drop control characters, cap the length."""
  text = _WS.sub(" ", _CONTROL.sub(" ", clean_text(text)[0])).strip()
  if len(text) > max_chars:
    text = text[: max(0, max_chars - 3)].rstrip() + "..."
  return text


def clip_middle(text: str, max_chars: int) -> str:
  """Keep the head and tail of `text` within `max_chars`, marking what was left out in the middle.

  Answers usually sit at the end of a response and the approach at its start, so both ends are kept.
  """
  text = _CONTROL.sub(" ", clean_text(text)[0])
  if len(text) <= max_chars:
    return text
  marker = f"\n[... {len(text) - max_chars} characters omitted ...]\n"
  keep = max(0, max_chars - len(marker))
  head = keep // 2
  return text[:head] + marker + text[len(text) - (keep - head):]


def approx_token_count(text: str) -> int:
  """Rough token count (UTF-8 bytes / 4, rounded up) for budgets when no tokenizer is injected."""
  return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4  # a lone surrogate counts, never raises
