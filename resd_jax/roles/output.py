"""What a role's raw output becomes before the context engine parses it: untrusted text made a bounded, valid
str, and a thinking model's reasoning split off. An output cut (or stopped) before its reasoning block closed
has no answer: it becomes "" and is counted, instead of its half-finished reasoning being parsed as one.

`sanitize` is a small local sanitiser (valid UTF-8, no NUL / C0 controls except tab and newline, bounded);
the context engine's own text helpers (`resd_jax/context/text.py`) bound and clean again at prompt time.
"""
from __future__ import annotations

import re
from typing import Any

from resd_jax.context.types import Metrics
from resd_jax.models.tokenizer import strip_reasoning

MAX_OUTPUT_CHARS = 200_000  # a role's answer beyond this is cut (the parsers read a few thousand characters)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # only lone ones can exist in a str
OPEN, CLOSE = "<think>", "</think>"


def sanitize(value: Any, max_chars: int = MAX_OUTPUT_CHARS) -> str:
  """Any value -> a str that encodes as UTF-8 (lone surrogates -> U+FFFD), without NUL / controls, capped."""
  if not isinstance(value, str):
    return ""
  return _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", value[:max_chars]))


def prompt_opens_reasoning(prompt_text: str) -> bool:
  """True when the chat template itself opened the reasoning block (the output then only closes it)."""
  return prompt_text.rstrip().endswith(OPEN)


def answer_of(text: str, truncated: bool, opened_in_prompt: bool = False) -> tuple[str, str]:
  """(answer, status). status: ok | truncated (answer cut, kept: parsers may still read it) |
  cut_in_reasoning (hit the budget inside the reasoning block: no answer) | unclosed_reasoning (stopped
  inside it: no answer)."""
  unclosed = (opened_in_prompt and CLOSE not in text) or text.rfind(OPEN) > text.rfind(CLOSE)
  if unclosed:
    return "", "cut_in_reasoning" if truncated else "unclosed_reasoning"
  return strip_reasoning(text).strip(), "truncated" if truncated else "ok"


def record(metrics: Metrics, role: str, status: str) -> None:
  """Per-output status counters: each as (hits, outputs), so the mean is a rate."""
  for name in ("truncated", "cut_in_reasoning", "unclosed_reasoning"):
    metrics.add(f"role/{role}/{name}", status == name)
