"""The solution buffer: the latest successful raw response per example id (plain data, JSON round-trip)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass
class Solution:
  response: str  # raw decoded response, reasoning included (the teacher context strips it)
  step: int      # training step at which it succeeded


@dataclasses.dataclass
class SolutionBuffer:
  solutions: dict[str, Solution] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.solutions)

  def put(self, example_id: str, response: str, step: int) -> None:
    self.solutions[example_id] = Solution(response, step)

  def get(self, example_id: str) -> str | None:
    sol = self.solutions.get(example_id)
    return None if sol is None else sol.response

  def to_dict(self) -> dict[str, Any]:
    return {"solutions": {k: dataclasses.asdict(v) for k, v in self.solutions.items()}}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SolutionBuffer":
    try:
      return cls({k: Solution(str(v["response"]), int(v["step"])) for k, v in d["solutions"].items()})
    except (KeyError, TypeError, AttributeError) as err:
      raise ValueError(f"solution buffer state is malformed ({err}); expected "
                       "{'solutions': {id: {'response': str, 'step': int}}} as written by to_dict") from None

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "SolutionBuffer":
    return cls.from_dict(json.loads(text))
