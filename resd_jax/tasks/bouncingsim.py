"""BouncingSim (MULTIOBJ): the model writes `predict_position(t)` for balls bouncing in a polygon container.

Ground truth is a list of assert strings, one per query time (docs/TASKS.md §2.3):
  `assert check_distance(predict_position(<t>), [[x, y], ...]) <= <tolerance>`
Grading needs only these strings; the physics engine (`bouncingsim_scenes.py`, extra `physics`) is needed only
to generate new scenes.

How a test runs (differences to the reference named):
* The assert is parsed here with the reference regex; `t` and the expected list are read with
  `ast.literal_eval` (never `eval`). The sandbox execs the program in a fresh confined process per test and
  returns only `predict_position(t)`; the distance check happens here. So the program never sees the expected
  positions and cannot forge a pass (the reference runs the whole assert inside the model's process).
* Asserts that do not match the regex run as a raw statement in the sandbox ("assert" mode, judged there).
* Ground truth is decoded from a list or JSON text only. The reference's third form, base64(zlib(pickle)),
  would run `pickle.loads` on dataset text (arbitrary code execution), so it is refused.
* The 1 s budget per test starts once the sandboxed interpreter is up (start-up is not charged).
* Imports: the program may import only the sandbox's preloaded modules (math and a few other stdlib modules);
  the reference also allowed numpy and anything installed.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
from typing import Any, Iterator, Sequence

from resd_jax.tasks import data, sandbox
from resd_jax.tasks.base import FEEDBACK_CAP, Example, Grade, RunTask, register
from resd_jax.tasks.text_utils import cap, debug_section, hard_cut, last_python_block

ASSERT_RE = re.compile(
    r"\s*assert\s+check_distance\(\s*predict_position\((.+?)\)\s*,\s*(\[.+\])\s*\)\s*<=\s*([0-9.]+)", re.DOTALL)
T_RE = re.compile(r"predict_position\(([^)]+)\)")
BLOCKLIST = ("threading", "multiprocess", "multiprocessing", "import os", "from os", "shutil", "import torch",
             "from torch", "import sklearn", "from sklearn")
SPLITS = ("train", "test")
ERROR_PREFIX = "Error: "
WRONG_PREFIX = "WrongAnswer:"
SHOWN_FAILURES = 3
ASSERT_CAP = 400

FORMAT_MESSAGE = "Incorrect Format: Put your code inside a ```python ... ``` block."
TRUNCATED_MESSAGE = "Truncated Attempt: Your previous response was too long and truncated."
BAD_TESTS_MESSAGE = "Failed to parse ground truth (expected a list of assert strings)."
BLOCKED_MESSAGE = "Error: Execution blocked by safety filter (restricted patterns in code)."
TIMEOUT_MESSAGE = ("Error: Time limit exceeded (killed after {limit}s). Your code likely has an infinite loop in "
                   "collision handling.")
WALL_HINT = ("Hint: some balls are far off while others are nearly exact, which usually means a wall collision was "
             "missed. Check every edge of the container for each ball, and count a contact only when it falls "
             "inside the finite edge segment, not on its infinite extension.")


@dataclasses.dataclass
class TestRecord:
  """The outcome of one assert. `actual` is "passed", an "Error: ..." text, or a "WrongAnswer: ..." text."""
  idx: int
  assert_text: str
  actual: str
  passed: bool
  debug: str = ""
  avg_distance: float | None = None


def decode_tests(ground_truth: Any) -> list[str]:
  """The assert strings from a list or its JSON text. Raises ValueError otherwise (pickle is refused on purpose)."""
  if isinstance(ground_truth, (str, bytes)):
    try:
      ground_truth = json.loads(ground_truth)
    except ValueError:
      raise ValueError("ground truth is neither a list nor JSON text (base64/pickle is not supported)") from None
  if hasattr(ground_truth, "tolist"):  # numpy arrays from parquet
    ground_truth = ground_truth.tolist()
  if not isinstance(ground_truth, (list, tuple)) or not ground_truth:
    raise ValueError("ground truth must be a non-empty list of assert strings")
  if not all(isinstance(a, str) for a in ground_truth):
    raise ValueError("every ground-truth entry must be an assert string")
  return list(ground_truth)


@dataclasses.dataclass(frozen=True)
class ParsedAssert:
  t: float
  expected: list[list[float]]
  threshold: float


def parse_assert(text: str) -> ParsedAssert | None:
  """Split a dataset assert into (t, expected points, threshold) without evaluating anything; None if it does
  not have the `check_distance(predict_position(t), [...]) <= thr` shape or its parts are not plain literals."""
  m = ASSERT_RE.match(text)
  if m is None:
    return None
  try:
    t = ast.literal_eval(m.group(1).strip())
    expected = ast.literal_eval(m.group(2))
    threshold = float(m.group(3))
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return None
  if isinstance(t, bool) or not isinstance(t, (int, float)) or not isinstance(expected, list):
    return None
  return ParsedAssert(float(t), expected, threshold)


def check_distance(a: Any, b: Any) -> float:
  """Mean Euclidean distance between corresponding [x, y] points, rounded to 3 decimals (reference semantics:
  TypeError for empty / non-list input, ValueError for a length mismatch or a malformed point)."""
  if not isinstance(a, list) or not isinstance(b, list) or not a or not b:
    raise TypeError("Input lists must be lists")
  if len(a) != len(b):
    raise ValueError(f"Lists must have same length: {len(a)} vs {len(b)}")
  return round(sum(_point_distance(p, q) for p, q in zip(a, b)) / len(a), 3)


def _point_distance(p: Any, q: Any) -> float:
  if not isinstance(p, (list, tuple)) or not isinstance(q, (list, tuple)) or len(p) != 2 or len(q) != 2:
    raise ValueError(f"each point must be [x, y], got {str(p)[:50]} and {str(q)[:50]}")
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*p, *q)):
    raise ValueError(f"point coordinates must be numbers, got {str(p)[:50]}")
  return math.hypot(p[0] - q[0], p[1] - q[1])


def _t_of(assert_text: str) -> float | None:
  m = T_RE.search(assert_text)
  if m is None:
    return None
  try:
    return float(m.group(1))
  except ValueError:
    return None


def _judge(idx: int, text: str, parsed: ParsedAssert | None, res: sandbox.SandboxResult,
           limit: float) -> TestRecord:
  """Turn one sandbox result into a record with the reference's `actual` / debug texts."""
  fail = lambda actual, debug="", d=None: TestRecord(idx, text, actual, False, debug, d)
  out_debug = f"actual_output={cap(json.dumps(res.value), 250)}" if res.value is not None else ""
  if res.status in ("timeout", "no_result"):  # a child that dies without a result counts as a timeout, as before
    return fail(TIMEOUT_MESSAGE.format(limit=limit))
  if res.status == "sandbox_error":
    return fail(f"{ERROR_PREFIX}Sandbox error: {res.error_type}: {res.error}")
  if res.status == "error":
    if res.stage == "definition":
      return fail(f"{ERROR_PREFIX}DefinitionError: {res.error_type}: {res.error}")
    tb = f"\n{res.traceback}" if res.traceback else ""
    return fail(f"{ERROR_PREFIX}{res.error_type}: {res.error}{tb}", out_debug)
  if parsed is None:  # raw assert judged in the sandbox
    return TestRecord(idx, text, "passed", True, f"runtime_s={res.runtime_s:.4f}") if res.passed else fail(
        f"{ERROR_PREFIX}Unknown error.")
  if res.value is None:
    return fail(f"{ERROR_PREFIX}TypeError: predict_position returned a non-JSON value: {cap(res.value_repr, 200)}")
  try:
    dist = check_distance(res.value, parsed.expected)
  except (TypeError, ValueError) as e:
    return fail(f"{ERROR_PREFIX}{type(e).__name__}: {e}", out_debug)
  if dist <= parsed.threshold:
    return TestRecord(idx, text, "passed", True, f"runtime_s={max(res.call_time_s, 0.0):.4f}", dist)
  lines = [f"{WRONG_PREFIX} avg_distance={dist:.3f}, threshold={parsed.threshold}"]
  for i, (p, q) in enumerate(zip(res.value, parsed.expected)):
    lines.append(f"Ball {i + 1}: off by {_point_distance(p, q):.1f}m (got [{p[0]}, {p[1]}], "
                 f"expected [{q[0]}, {q[1]}])")
  return fail("\n".join(lines), out_debug, dist)


def run_tests(program: str, asserts: Sequence[str], limits: sandbox.SandboxLimits, workers: int = 1
              ) -> list[TestRecord]:
  """Pre-checks (blocklist, syntax), then each assert in its own sandboxed process."""
  if any(pattern in program for pattern in BLOCKLIST):
    return [TestRecord(i, a, BLOCKED_MESSAGE, False) for i, a in enumerate(asserts)]
  try:
    compile(program, "<solution>", "exec")  # parses only; nothing runs
  except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
    return [TestRecord(i, a, f"{ERROR_PREFIX}Syntax Error: {cap(e, 300)}", False, "Compilation failed.")
            for i, a in enumerate(asserts)]
  parsed = [parse_assert(a) for a in asserts]
  requests = [sandbox.Request(program=program, func="predict_position", args=(p.t,)) if p is not None else
              sandbox.Request(program=program, mode="assert", statement=a) for a, p in zip(asserts, parsed)]
  results = sandbox.run_many(requests, limits, workers=workers)
  return [_judge(i, a, p, r, limits.timeout_s) for i, (a, p, r) in enumerate(zip(asserts, parsed, results))]


def _header(records: list[TestRecord], shown: list[TestRecord]) -> list[str]:
  passed = [r for r in records if r.passed]
  lines = [f"Passed {len(passed)}/{len(records)} test cases."]
  pass_t = [t for t in (_t_of(r.assert_text) for r in passed) if t is not None]
  fail_t = [t for t in (_t_of(r.assert_text) for r in records if not r.passed) if t is not None]
  if pass_t and fail_t and shown:
    lines.append(f"Tests pass for t <= {max(pass_t):.2f}, first failure at t = {min(fail_t):.2f} "
                 f"(Test Case {shown[0].idx + 1}).")
  wrong = sorted((t, r.avg_distance) for r in records
                 if r.actual.startswith(WRONG_PREFIX) and (t := _t_of(r.assert_text)) is not None)
  if len(wrong) >= 2 and wrong[-1][1] > 2 * wrong[0][1]:
    (t0, d0), (t1, d1) = wrong[0], wrong[-1]
    lines.append(f"Position error grows with time (avg_distance {d0:.0f} at t={t0:.2f} -> {d1:.0f} at "
                 f"t={t1:.2f}), suggesting collision/bounce handling may be incorrect.")
  return lines + [""]


def _error_block(r: TestRecord) -> str:
  msg = r.actual[len(ERROR_PREFIX):]
  lines = ["Time Limit Exceeded" if "Time limit" in r.actual else "Runtime Error", msg, ""]
  t = _t_of(r.assert_text)
  if t is not None:
    lines += ["Input", f"t = {t}", ""]
  lines += ["Assert", cap(r.assert_text, ASSERT_CAP)]
  return "\n".join(lines + debug_section(r.debug))


def _wrong_block(r: TestRecord) -> str:
  head, *balls = r.actual.split("\n")
  lines = [f"Test Case {r.idx + 1}: Wrong Answer", head[len(WRONG_PREFIX):].strip(), ""]
  t = _t_of(r.assert_text)
  if t is not None:
    lines += ["Input", f"t = {t}", ""]
  lines += ["Per-Ball Distances", *(cap(b, ASSERT_CAP) for b in balls), ""]
  errors = [float(m.group(1)) for b in balls if (m := re.search(r"off by ([0-9.]+)m", b))]
  if errors and max(errors) > 100 and min(errors) < 10:
    lines += [WALL_HINT, ""]
  return "\n".join(lines + debug_section(r.debug))


def render_feedback(records: list[TestRecord]) -> str:
  """Header, then the first error record alone, or else the first three wrong answers; "" when all pass."""
  failing = [r for r in records if not r.passed]
  if not failing:
    return ""
  errors = [r for r in failing if r.actual.startswith(ERROR_PREFIX)]
  if errors:
    shown, blocks = errors[:1], [_error_block(errors[0])]
  else:
    shown = failing[:SHOWN_FAILURES]
    blocks = [_wrong_block(r) for r in shown]
  return hard_cut("\n".join(_header(records, shown)) + "\n" + "\n\n".join(blocks), FEEDBACK_CAP)


def grade_response(response: Any, ground_truth: Any, *, split: str = "train", truncated: bool = False,
                   sparse: bool = True, limits: sandbox.SandboxLimits = sandbox.SandboxLimits(),
                   workers: int = 1) -> Grade:
  """Grade one response. Never raises on bad model output. The test split is always sparse."""
  info = {"incorrect_format": 0, "error_in_test_cases": 0, "timed_out": 0, "truncated": int(truncated),
          "truncated_and_missing_answer": 0}
  try:
    asserts = decode_tests(ground_truth)
  except ValueError:
    return Grade(0.0, 0.0, BAD_TESTS_MESSAGE, {**info, "error_in_test_cases": 1})
  code = last_python_block(response) if isinstance(response, str) else None
  if code is None:
    info.update(incorrect_format=1, truncated_and_missing_answer=int(truncated))
    message = TRUNCATED_MESSAGE if truncated else FORMAT_MESSAGE
    return Grade(0.0, 0.0, f"Passed 0/1 test cases.\n\n{message}", info)
  records = run_tests(code, asserts, limits, workers)
  acc = sum(r.passed for r in records) / len(records)
  reward = float(acc == 1.0) if (sparse or split == "test") else acc
  failing = [r.actual for r in records if not r.passed]
  info.update(error_in_test_cases=int(any(ERROR_PREFIX in a for a in failing)),
              timed_out=int(any("Time limit" in a for a in failing)), n_tests=len(records),
              n_passed=sum(r.passed for r in records))
  return Grade(reward, acc, render_feedback(records), info)


def example_from_row(row: dict[str, Any], split: str) -> Example:
  """An `Example` from a public HF row (`messages`, `ground_truth`, `id`), one of our generated rows (same
  schema) or a verl parquet row (`prompt`, `reward_model.ground_truth` JSON text, `extra_info.index`)."""
  if split not in SPLITS:
    raise ValueError(f"BouncingSim split must be one of {SPLITS}, got {split!r}")
  messages, tests, rid = data.row_fields(row, "BouncingSim")
  try:
    asserts = decode_tests(tests)
  except ValueError as e:
    raise ValueError(f"BouncingSim row {rid}: {e}") from None
  msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)
  difficulty = row.get("difficulty", (row.get("extra_info") or {}).get("difficulty", ""))
  return Example(rid, msgs, {"tests": asserts, "split": split, "difficulty": str(difficulty)})


@register("bouncingsim")
class BouncingSimTask(RunTask):
  """BouncingSim-MULTIOBJ. Data comes from `train_path` / `test_path` (public HF rows or our generated JSONL) or
  from `examples`; without either, scenes are generated with the physics extra (`generate` = rows per split).

  sparse: reward 1.0 iff every assert passes (RESD's setting), else reward = acc; test is always sparse.
  limits: sandbox limits per test (timeout_s=1.0 is the paper's budget); the data files are hidden from the
    programs (strict isolation) unless `limits.hide_paths` is set. workers: tests run in parallel.
  """
  name = "bouncingsim"

  @classmethod
  def check_run(cls, run):
    if run.task.level not in ("easy", "medium"):
      from resd_jax.run_config import ConfigError
      raise ConfigError(f"task.level={run.task.level!r}: bouncingsim needs easy or medium "
                        f"(use --config=configs/bouncingsim.py:easy)")

  @classmethod
  def from_run(cls, run, **options):
    """data.*_path (else generated scenes of task.level, default easy, seeded by the run's seed)."""
    d = run.data
    return cls(train_path=d.train_path or None, test_path=d.test_path or None, level=run.task.level or "easy",
               seed=run.seed)

  def __init__(self, train_path: str | None = None, test_path: str | None = None, *, level: str = "easy",
               generate: tuple[int, int] = (64, 16), seed: int = 0, sparse: bool = True,
               limits: sandbox.SandboxLimits = sandbox.SandboxLimits(), workers: int = 1,
               limit_rows: int | None = None, examples: dict[str, list[Example]] | None = None):
    if not isinstance(workers, int) or workers < 1:
      raise ValueError(f"BouncingSimTask.workers must be a positive int, got {workers!r}")
    self.paths = {"train": train_path, "test": test_path}
    data_files = tuple(os.path.abspath(p) for p in (train_path, test_path) if p and os.path.exists(p))
    if data_files and not limits.hide_paths:  # the programs must not read the expected positions
      limits = dataclasses.replace(limits, hide_paths=data_files)
    self.level, self.generate, self.seed = level, tuple(generate), int(seed)
    self.sparse, self.limits, self.workers, self.limit_rows = bool(sparse), limits, workers, limit_rows
    self._examples = dict(examples) if examples is not None else {}

  def _load(self, split: str) -> list[Example]:
    if split not in self._examples:
      if self.paths[split] is not None or any(self.paths.values()):
        self._examples[split] = list(data.load_bouncingsim(self.paths[split], split,
                                                           limit=self.limit_rows if split == "train" else None))
      else:
        from resd_jax.tasks import bouncingsim_scenes
        n = self.generate[SPLITS.index(split)]
        rows = bouncingsim_scenes.generate_rows(n, self.level, seed=self.seed * 2 + SPLITS.index(split))
        self._examples[split] = [example_from_row(r, split) for r in rows]
    return self._examples[split]

  def prompts(self, split: str) -> Iterator[Example]:
    if split not in SPLITS:
      raise ValueError(f"BouncingSim split must be one of {SPLITS}, got {split!r}")
    yield from self._load(split)

  def grade(self, example: Example, response_text: str, *, truncated: bool = False) -> Grade:
    return grade_response(response_text, example.meta.get("tests", []), split=example.meta.get("split", "train"),
                          truncated=truncated, sparse=self.sparse, limits=self.limits, workers=self.workers)
