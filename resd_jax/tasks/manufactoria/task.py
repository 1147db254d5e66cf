"""The Manufactoria-Has task: prompts from generated problems (or public dataset rows) and the grader."""
from __future__ import annotations

import json
from typing import Any, Iterator

from resd_jax.tasks.base import Example, Grade, RunTask, register
from resd_jax.tasks.manufactoria import generator
from resd_jax.tasks.manufactoria.grader import grade_response
from resd_jax.tasks.manufactoria.prompt import build_prompt

SPLITS = ("train", "test")


def example_from_problem(problem: generator.Problem, split: str) -> Example:
  prompt = build_prompt(problem.criteria, check_output=any(t["check_output"] for t in problem.tests))
  meta = {"tests": [dict(t) for t in problem.tests], "split": split, "family": problem.family,
          "name": problem.name, "difficulty": "easy"}
  return Example(problem.id, ({"role": "user", "content": prompt},), meta)


def _as_list(value: Any) -> list[Any]:
  """Lists stored in parquet come back as numpy arrays; JSON columns as text."""
  if isinstance(value, (str, bytes)):
    value = json.loads(value)
  if isinstance(value, dict):
    return [value]
  return list(value)


def _clean_test(test: Any) -> dict[str, Any]:
  """One test case with proper Python types. Missing flags take the grader's defaults (True)."""
  if not isinstance(test, dict):
    raise ValueError(f"a Manufactoria test case must be an object with an 'input' field, got {type(test).__name__}")
  return {"input": str(test.get("input", "") or ""), "expected_output": str(test.get("expected_output", "") or ""),
          "expected_accepted": bool(test.get("expected_accepted", True)),
          "check_output": bool(test.get("check_output", True)), "description": str(test.get("description", "") or "")}


def example_from_row(row: dict[str, Any], split: str) -> Example:
  """An `Example` from a public HF row (`messages`, `ground_truth`, `id`, ...) or a verl parquet row (`prompt`,
  `reward_model.ground_truth` as JSON text, `extra_info.index`, ...). Raises ValueError naming what is missing."""
  if split not in SPLITS:
    raise ValueError(f"Manufactoria split must be one of {SPLITS}, got {split!r}")
  extra = row.get("extra_info") or {}
  if "messages" in row:
    messages, tests, rid = row["messages"], row.get("ground_truth"), row.get("id")
  elif "prompt" in row:
    messages, tests, rid = row["prompt"], (row.get("reward_model") or {}).get("ground_truth"), extra.get("index")
  else:
    raise ValueError(f"Manufactoria row has neither 'messages' (HF schema) nor 'prompt' (verl schema); "
                     f"keys: {sorted(row)}")
  if tests is None:
    raise ValueError("Manufactoria row has no test cases: expected 'ground_truth' or 'reward_model.ground_truth'")
  if not rid:
    raise ValueError("Manufactoria row has no id: expected 'id' (HF schema) or 'extra_info.index' (verl schema)")
  try:
    tests = [_clean_test(t) for t in _as_list(tests)]
  except json.JSONDecodeError as e:
    raise ValueError(f"Manufactoria row {rid}: ground truth is not valid JSON ({e})") from None
  msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in _as_list(messages))
  meta = {"tests": tests, "split": split,
          "family": str(row.get("problem_family") or extra.get("problem_family") or ""),
          "name": str(row.get("name") or extra.get("name") or ""),
          "difficulty": str(row.get("difficulty") or extra.get("difficulty") or "")}
  return Example(str(rid), msgs, meta)


@register("manufactoria")
class ManufactoriaTask(RunTask):
  """Manufactoria-Has. Without `examples`, problems come from our generator (874, split 742/132 by `split_seed`).

  split_seed: seed of the train/test split (the reference uses 42).
  tests_seed: seed of the generated test tapes.
  data_path: the public dataset on disk (HF or verl rows, parquet or JSONL), read by
    `resd_jax.tasks.data.load_manufactoria`: a folder whose file names mention the split (e.g. has_train.jsonl,
    has_test.jsonl), or a dict {"train": path, "test": path}.
  examples: pre-built examples per split (overrides the generator and data_path).
  sparse: reward 1.0 iff every test passes (RESD's setting); otherwise reward = acc. The test split is always sparse.
  max_test_cases: grade only the first n tests on train (None: all).
  """
  name = "manufactoria"

  @classmethod
  def from_run(cls, run, **options):
    """data.train_path / data.test_path when given (either), else the generated problems; the split seed is the
    reference's 42."""
    d = run.data
    paths = {k: v for k, v in (("train", d.train_path), ("test", d.test_path)) if v}
    return cls(split_seed=42, data_path=paths or None)

  def __init__(self, split_seed: int = 42, data_path: str | dict[str, str] | None = None, *, tests_seed: int = 0,
               sparse: bool = True, max_test_cases: int | None = None,
               examples: dict[str, list[Example]] | None = None):
    if max_test_cases is not None and max_test_cases < 1:
      raise ValueError(f"max_test_cases must be a positive integer or None, got {max_test_cases}")
    self.split_seed, self.tests_seed, self.data_path = int(split_seed), int(tests_seed), data_path
    self.sparse, self.max_test_cases = bool(sparse), max_test_cases
    self._examples = dict(examples) if examples is not None else None

  def _load(self) -> dict[str, list[Example]]:
    if self._examples is None:
      if self.data_path is not None:
        from resd_jax.tasks import data  # the loaders module (public HF rows)
        paths = self.data_path if isinstance(self.data_path, dict) else dict.fromkeys(SPLITS, self.data_path)
        self._examples = {s: list(data.load_manufactoria(paths.get(s), s)) for s in SPLITS}
      else:
        train, test = generator.split(generator.generate(self.tests_seed), seed=self.split_seed)
        self._examples = {"train": [example_from_problem(p, "train") for p in train],
                          "test": [example_from_problem(p, "test") for p in test]}
    return self._examples

  def prompts(self, split: str) -> Iterator[Example]:
    if split not in SPLITS:
      raise ValueError(f"Manufactoria split must be one of {SPLITS}, got {split!r}")
    yield from self._load()[split]

  def grade(self, example: Example, response_text: str, *, truncated: bool = False) -> Grade:
    return grade_response(response_text, example.meta.get("tests", []), split=example.meta.get("split", "train"),
                          truncated=truncated, sparse=self.sparse, max_test_cases=self.max_test_cases)
