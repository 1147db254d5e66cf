"""Seeded, resumable randomness for the context engine.

State is two integers (seed, counter). Each use derives a fresh `random.Random` from the string
"seed:purpose:counter" (string seeds go through SHA-512, so this does not depend on Python's hash
randomisation) and bumps the counter; saving the two integers is enough for a resumed run to continue
exactly as if it had not stopped.
"""
from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass
class SeededRng:
  seed: int = 0
  counter: int = 0

  def draw(self, purpose: str) -> random.Random:
    """A generator for one use (one shuffle / one sample)."""
    rng = random.Random(f"{self.seed}:{purpose}:{self.counter}")
    self.counter += 1
    return rng

  def to_dict(self) -> dict[str, int]:
    return {"seed": self.seed, "counter": self.counter}

  @classmethod
  def from_dict(cls, d: dict[str, int]) -> "SeededRng":
    return cls(int(d["seed"]), int(d["counter"]))
