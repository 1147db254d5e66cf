"""Robust extraction of one JSON object from model-written text.

Model output is untrusted: it may wrap the JSON in a fenced block, add prose around it, stop half-way, contain
control characters or be megabytes long. `extract_json_object` tries, in order:

1. the whole text;
2. fenced blocks (```json ... ```), last first;
3. balanced `{...}` spans found by a string-aware scan, preferring one that has an expected key;
4. a repair of a truncated object (close the open string and brackets, cutting back to a comma if needed).

It never raises on bad input and bounds the work: texts longer than `max_chars` are searched in a tail window
and then a head window only. `recover_tags` is the last resort for tag lists when no object parses at all.

Model text enters the system here, so both the raw text and every string of the parsed object (where JSON
escapes such as "\ud800" can make lone surrogates) go through `text.clean_text`: what comes out is valid
Unicode without dangerous controls, and `Extracted.cleaned` says how many places were changed (callers count
it in their parse metrics).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from resd_jax.context.prompts import TEMPLATE_PLACEHOLDERS
from resd_jax.context.text import clean_text, clean_value

MAX_PARSE_CHARS = 100_000
_MAX_CANDIDATES = 32
_MAX_REPAIR_CUTS = 24
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|js|javascript)?[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
_OBJ_START = re.compile(r'\{\s*["}]')  # a JSON object opens with a key or is empty; prose braces rarely do
_SPECIAL = re.compile(r'[{}\[\]"\\]')
TAG_VALUES = ("helpful", "harmful", "neutral")
_TAG_ID_FIRST = re.compile(r'"id"\s*:\s*"([^"\\\n]{1,64})"\s*,\s*"tag"\s*:\s*"([A-Za-z]{1,16})"')
_TAG_TAG_FIRST = re.compile(r'"tag"\s*:\s*"([A-Za-z]{1,16})"\s*,\s*"id"\s*:\s*"([^"\\\n]{1,64})"')
_MIN_ECHO_PREFIX = 8  # a cut-off copy of a placeholder counts as an echo from this many characters on
_ECHO_MAX_CHARS = 200  # longer texts are never a copy of a (short) placeholder


@dataclasses.dataclass
class Extracted:
  """obj: the parsed object or None; how: whole / fenced / balanced / repaired / none; cleaned: places in the
  text and the object's strings that `clean_text` changed (lone surrogates, controls, ...)."""
  obj: dict[str, Any] | None
  how: str
  cleaned: int = 0


def _loads(s: str) -> Any:
  try:
    return json.loads(s, strict=False)  # strict=False: raw control characters inside strings are accepted
  except (ValueError, RecursionError):
    return None


def _scan(s: str) -> tuple[list[tuple[int, int]], int | None, list[str]]:
  """One pass over `s`: complete top-level `{...}` spans, the start of an unclosed one, its open brackets.

  Outside an object, quotes are prose and are ignored, and a `{` starts a candidate only when a quote or `}`
  follows it; inside, strings are tracked so braces in strings do not count.
  """
  spans: list[tuple[int, int]] = []
  stack: list[str] = []
  start: int | None = None
  in_str = False
  skip_to = -1
  for m in _SPECIAL.finditer(s):
    i, c = m.start(), m.group()
    if i < skip_to:
      continue
    if not stack:
      if c == "{" and _OBJ_START.match(s, i):
        stack, start, in_str = ["{"], i, False
      continue
    if in_str:
      if c == "\\":
        skip_to = i + 2
      elif c == '"':
        in_str = False
      continue
    if c == '"':
      in_str = True
    elif c in "{[":
      stack.append(c)
    elif c in "}]":
      if stack[-1] != ("{" if c == "}" else "["):  # mismatched bracket: abandon this span
        stack, start = [], None
        continue
      stack.pop()
      if not stack:
        spans.append((start, i + 1))
        start = None
  return spans, start, stack


def _close(s: str) -> str:
  """Append the closers an unfinished JSON prefix needs (string quote, then brackets)."""
  _, start, stack = _scan(s)
  if start is None:
    return s
  # Recompute string state for the unclosed tail only.
  in_str, esc = False, False
  for ch in s[start:]:
    if in_str:
      if esc:
        esc = False
      elif ch == "\\":
        esc = True
      elif ch == '"':
        in_str = False
    elif ch == '"':
      in_str = True
  tail = s
  if in_str:
    tail = (tail[:-1] if esc else tail) + '"'  # a dangling backslash would escape the closing quote
  tail = tail.rstrip()
  while tail.endswith((",", ":")):
    tail = tail[:-1].rstrip()
  return tail + "".join("}" if b == "{" else "]" for b in reversed(stack))


def _repair(s: str) -> dict[str, Any] | None:
  """Best effort on a truncated object `s` (starting at `{`): close it, else cut back comma by comma."""
  cuts = [len(s)] + [m.start() for m in re.finditer(",", s)][::-1][:_MAX_REPAIR_CUTS]
  for cut in cuts:
    obj = _loads(_close(s[:cut]))
    if isinstance(obj, dict) and obj:  # an empty object from a lone "{" in prose is no answer
      return obj
  return None


def _candidates(text: str):
  """Objects in the order they are tried: complete spans, the repaired truncated object, then spans found by
  rescanning past a stray unclosed "{" (bounded)."""
  spans, open_start, _ = _scan(text)
  for a, b in spans[:_MAX_CANDIDATES]:
    yield "balanced", _loads(text[a:b])
  if open_start is None:
    return
  yield "repaired", _repair(text[open_start:])
  for _ in range(8):
    base = open_start + 1
    more, nxt, _ = _scan(text[base:])
    for a, b in more[:_MAX_CANDIDATES]:
      yield "balanced", _loads(text[base + a:base + b])
    if nxt is None:
      return
    open_start = base + nxt


def _from_window(text: str, prefer_keys: tuple[str, ...]) -> Extracted:
  obj = _loads(text.strip())
  if isinstance(obj, dict):
    return Extracted(obj, "whole")
  if "```" in text:
    for block in reversed(_FENCE.findall(text)):
      obj = _loads(block.strip())
      if isinstance(obj, dict):
        return Extracted(obj, "fenced")
  first = None
  for how, obj in _candidates(text):
    if isinstance(obj, dict):
      if not prefer_keys or any(k in obj for k in prefer_keys):
        return Extracted(obj, how)
      first = first or Extracted(obj, how)
  return first or Extracted(None, "none")


def extract_json_object(text: Any, prefer_keys: tuple[str, ...] = (),
                        max_chars: int = MAX_PARSE_CHARS) -> Extracted:
  """The JSON object in `text` (its strings cleaned), or `Extracted(None, "none")`. Never raises."""
  if not isinstance(text, str) or not text:
    return Extracted(None, "none")
  text, cleaned = clean_text(text)
  if len(text) <= max_chars:
    found = _from_window(text, prefer_keys)
  else:
    found = _from_window(text[-max_chars:], prefer_keys)  # answers usually come last
    if found.obj is None:
      found = _from_window(text[:max_chars], prefer_keys)
  try:
    obj, in_obj = clean_value(found.obj)
  except RecursionError:  # nested deeper than the cleaner walks: no usable answer
    return Extracted(None, "none", cleaned)
  return Extracted(obj, found.how, cleaned + in_obj)


def recover_tags(text: Any, max_chars: int = MAX_PARSE_CHARS) -> list[tuple[str, str]]:
  """Regex fallback for `{"id": ..., "tag": ...}` pairs when no object parses; valid tags only."""
  if not isinstance(text, str):
    return []
  window = clean_text(text[-max_chars:])[0]
  pairs = [(i, t.lower()) for i, t in _TAG_ID_FIRST.findall(window)]
  pairs += [(i, t.lower()) for t, i in _TAG_TAG_FIRST.findall(window)]
  return [(i, t) for i, t in pairs if t in TAG_VALUES]


def _squash(text: str) -> str:
  """Lower case, runs of whitespace as one space, surrounding quotes / brackets / punctuation dropped."""
  return " ".join(text.lower().split()).strip(" \"'<>.,;:!")


_PLACEHOLDERS = tuple(_squash(p) for p in TEMPLATE_PLACEHOLDERS)


def is_template_echo(value: Any) -> bool:
  """True when a model-written field is a copy of an answer-schema placeholder (`prompts.TEMPLATE_PLACEHOLDERS`,
  any field's: small models also shift them between keys), whole or cut off after `_MIN_ECHO_PREFIX` characters;
  case, spacing and surrounding punctuation are ignored."""
  if not isinstance(value, str) or len(value) > _ECHO_MAX_CHARS:
    return False
  v = _squash(value)
  return bool(v) and any(v == p or (len(v) >= _MIN_ECHO_PREFIX and p.startswith(v)) for p in _PLACEHOLDERS)


def as_text(value: Any, max_chars: int) -> str | None:
  """A model-written field as bounded text: strings as is, numbers / bools via str, lists of scalars joined
  with "; ". None for anything else (a wrong type the caller counts)."""
  if isinstance(value, str):
    out = value
  elif isinstance(value, (bool, int, float)):
    out = str(value)
  elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
    out = "; ".join(str(v) for v in value)
  else:
    return None
  out = out.strip()
  return out[:max_chars]


def parse_tag_list(value: Any, max_tags: int = 256) -> tuple[list[tuple[str, str]], int]:
  """`[{"id": ..., "tag": helpful|harmful|neutral}, ...]` -> (valid (id, tag) pairs, invalid item count).

  Also accepts the mapping form `{"<id>": "<tag>"}`. Ids are taken as strings (ints converted); tags are
  case-insensitive. Items past `max_tags` and repeats of an id are counted as invalid.
  """
  if isinstance(value, dict):
    value = [{"id": k, "tag": v} for k, v in value.items()]
  if not isinstance(value, list):
    return [], 0 if value is None else 1
  pairs: list[tuple[str, str]] = []
  invalid = max(0, len(value) - max_tags)
  seen: set[str] = set()
  for item in value[:max_tags]:
    if not isinstance(item, dict):
      invalid += 1
      continue
    entry_id, tag = item.get("id"), item.get("tag")
    if isinstance(entry_id, int) and not isinstance(entry_id, bool):
      entry_id = str(entry_id)
    if not isinstance(entry_id, str) or not isinstance(tag, str) or tag.strip().lower() not in TAG_VALUES:
      invalid += 1
      continue
    entry_id = entry_id.strip()[:64]
    if entry_id in seen:  # one vote per entry per answer: repeats are counted, not applied
      invalid += 1
      continue
    seen.add(entry_id)
    pairs.append((entry_id, tag.strip().lower()))
  return pairs, invalid
