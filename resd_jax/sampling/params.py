"""SamplingParams: how to draw a completion (temperature, nucleus, top-k, stopping), validated at construction."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

# Longest stop string we accept (they are searched in decoded text on the host).
MAX_STOP_STRING_CHARS = 256


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Settings of one `generate` call.

  temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
  top_p: nucleus sampling, keep the smallest set of most likely tokens whose mass reaches top_p (1 = off).
  top_k: keep the k most likely tokens (0 = off).
  max_new_tokens: hard cap on generated tokens per prompt (finish reason 'length' when reached).
  stop_token_ids: generation ends after one of these tokens (it is kept in the output tokens). The text
    front end fills in the tokenizer's EOS and chat end-of-turn tokens when this is empty.
  stop_strings: generation ends at the first occurrence of one of these in the decoded text (checked on the
    host; the output is cut after the tokens that complete it, the text before it).
  seed: used when `generate` is given no explicit key.
  """
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 256
  stop_token_ids: tuple[int, ...] = ()
  stop_strings: tuple[str, ...] = ()
  seed: int = 0

  def __post_init__(self):
    # Accept lists for the tuple fields (frozen dataclass: set through object.__setattr__).
    object.__setattr__(self, "stop_token_ids", tuple(_as_seq(self.stop_token_ids, "stop_token_ids")))
    object.__setattr__(self, "stop_strings", tuple(_as_seq(self.stop_strings, "stop_strings")))

    def need(cond: bool, msg: str) -> None:
      if not cond:
        raise ValueError(f"SamplingParams: {msg}")
    need(_is_real(self.temperature) and self.temperature >= 0,
         f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
    need(_is_real(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
    need(_is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
    need(_is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
         f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
    need(all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
         f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
    need(all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_STRING_CHARS for s in self.stop_strings),
         f"stop_strings must be non-empty strings of at most {MAX_STOP_STRING_CHARS} characters, "
         f"got {self.stop_strings!r}")
    need(_is_int(self.seed), f"seed must be an integer, got {self.seed!r}")

  def replace(self, **changes: Any) -> "SamplingParams":
    return dataclasses.replace(self, **changes)

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def _as_seq(x: Any, name: str) -> Sequence[Any]:
  if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)):
    raise ValueError(f"SamplingParams: {name} must be a list or tuple, got {x!r}")
  return x


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) or (hasattr(x, "dtype") and getattr(x, "ndim", 1) == 0
                                                             and str(x.dtype).startswith(("int", "uint")))


def _is_real(x: Any) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
