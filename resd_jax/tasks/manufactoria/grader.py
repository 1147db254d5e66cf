"""Grades one model response against a Manufactoria problem's test cases (docs/TASKS.md §1.4-1.5).

Extraction, pass rule, acc / reward and the feedback layout follow the RESD reference grader, so that the
feedback the self-teacher sees carries the same information. The wording of our own messages is ours except
where the text is itself observable behaviour (format messages, runtime-error reasons).

Deviation (named by direction): the reference raises KeyError when `extra_info` lacks `split`; we take the
split as an argument and never raise.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from resd_jax.tasks.base import FEEDBACK_CAP, Grade
from resd_jax.tasks.text_utils import cap, debug_section, hard_cut
from resd_jax.tasks.manufactoria import simulator
from resd_jax.tasks.manufactoria.dsl import ParseError, Program, parse

# Lazily paired fences over the whole response (reasoning included); the last pair is the answer. An optional
# `manufactoria` label is swallowed; any other label stays in the code (and then fails to parse).
_FENCE_RE = re.compile(r"```(?:manufactoria)?(.*?)```", re.DOTALL)

FORMAT_MESSAGE = "Incorrect Format: Put your code inside a ```manufactoria ... ``` block."
TRUNCATED_MESSAGE = "Truncated Attempt: Your previous response was too long and truncated."
BAD_TESTS_MESSAGE = "Failed to parse ground truth test cases."
ERROR_PREFIX = "Error: "
TRACE_STEPS = 15
WRONG_SHOWN = 2


@dataclasses.dataclass
class TestRecord:
  """The outcome of one test case (or the single record standing for a program that does not parse)."""
  test_idx: int
  input: str | None
  expected: str
  actual: str
  passed: bool
  debug: str = ""
  time: float = 0.0


def extract_code(response: str) -> str | None:
  """The stripped contents of the last fenced block, or None when there is none."""
  matches = _FENCE_RE.findall(response)
  return matches[-1].strip() if matches else None


def load_tests(ground_truth: Any) -> list[dict[str, Any]]:
  """Test cases from a list, a single dict, or their JSON text. Raises ValueError when unusable."""
  if isinstance(ground_truth, (str, bytes)):
    ground_truth = json.loads(ground_truth)
  if not isinstance(ground_truth, list):
    ground_truth = [ground_truth]
  if not all(isinstance(t, dict) for t in ground_truth):
    raise ValueError("every test case must be a JSON object")
  return ground_truth


def _node_type(program: Program, node_id: str) -> str:
  node = program.nodes.get(node_id)
  return node.type.value if node is not None else ""


def _trace(path: list[str]) -> list[str]:
  lines = []
  start = max(0, len(path) - TRACE_STEPS)
  if start:
    lines.append(f"  ... ({start} earlier steps omitted)")
  lines += [f"  Step {k + 1}: {path[k]}" for k in range(start, len(path))]
  return lines


def debug_text(program: Program, result: simulator.RunResult, test: dict[str, Any]) -> str:
  """What went wrong in one failing run: where it stopped, the tail of its path, and the verdict."""
  path, tape = result.path, result.final_tape
  front = tape[0] if tape else "EMPTY"
  lines: list[str] = []
  if result.rejection_reason == simulator.LOOP_REASON and path:
    lines += [f"Stuck at node: {path[-1]} ({_node_type(program, path[-1])})",
              f"Front tape character: {front}", f"Remaining tape: '{tape}'"]
  elif result.rejection_reason == simulator.NONE_REASON and len(path) >= 2:
    lines += ["Execution Trace:", *_trace(path), f"Rejection: {simulator.NONE_REASON}",
              f"Routing node: {path[-2]} ({_node_type(program, path[-2])})",
              f"Front tape character at rejection: {front}"]
  else:
    if path:
      lines += ["Execution Trace:", *_trace(path)]
    if result.rejection_reason:
      lines.append(f"Rejection: {result.rejection_reason}")
  lines += [f"Finished: {result.finished}", f"Actual output: '{tape}'"]
  if test.get("check_output", True):
    lines.append(f"Expected output: '{test.get('expected_output', '')}'")
  lines.append(f"Expected accepted: {bool(test.get('expected_accepted', True))}")
  return "\n".join(lines)


def run_tests(program: Program, tests: list[dict[str, Any]]) -> list[TestRecord]:
  """One record per test; `actual` becomes `Error: <reason>` for a failing run that was rejected."""
  records = []
  for idx, test in enumerate(tests):
    tape = str(test.get("input", ""))
    result = simulator.run(program, tape)
    ok = simulator.passes(result, test)
    actual = result.final_tape
    debug = ""
    if not ok:
      debug = debug_text(program, result, test)
      if result.rejection_reason:
        actual = ERROR_PREFIX + result.rejection_reason
    records.append(TestRecord(idx, tape, str(test.get("expected_output", "")), actual, ok, debug))
  return records


def render_feedback(records: list[TestRecord]) -> str:
  """The first runtime error alone, else the two shortest wrong answers; "" when everything passed."""
  failing = [r for r in records if not r.passed]
  errors = [r for r in failing if r.actual.startswith(ERROR_PREFIX)]
  blocks = []
  if errors:
    r = errors[0]
    lines = ["Runtime Error", cap(r.actual[len(ERROR_PREFIX):]), "", "Last Executed Input", cap(r.input)]
    blocks.append("\n".join(lines + debug_section(r.debug)))
  else:
    shown = sorted(failing, key=lambda r: len(str(r.input)) + len(str(r.actual)))[:WRONG_SHOWN]
    for r in shown:
      lines = [f"Test Case {r.test_idx + 1}: Wrong Answer", "", "Input", cap(r.input), "", "Output", cap(r.actual)]
      if r.expected:
        lines += ["", "Expected", cap(r.expected)]
      blocks.append("\n".join(lines + debug_section(r.debug)))
  return hard_cut("\n\n".join(blocks), FEEDBACK_CAP)


def grade_response(response: Any, ground_truth: Any, *, split: str = "train", truncated: bool = False,
                   sparse: bool = True, max_test_cases: int | None = None) -> Grade:
  """Grade a response. Never raises: bad responses and bad test data become a zero grade with feedback.

  sparse: reward 1.0 iff every test passes (RESD's setting), else reward = acc. The test split is always sparse.
  max_test_cases: keep only the first n tests (train splits only).
  """
  info = {"incorrect_format": 0, "error_in_test_cases": 0, "timed_out": 0, "truncated": int(bool(truncated)),
          "truncated_and_missing_answer": 0, "num_tests": 0}
  if split == "test":
    sparse = True
  try:
    tests = load_tests(ground_truth)
  except (ValueError, TypeError):  # json.JSONDecodeError is a ValueError
    info["error_in_test_cases"] = 1
    return Grade(0.0, 0.0, BAD_TESTS_MESSAGE, info)
  if max_test_cases is not None and split != "test":
    tests = tests[:max_test_cases]
  if isinstance(response, bytes):
    response = response.decode("utf-8", errors="replace")
  code = extract_code(str(response))
  if code is None:
    info["incorrect_format"] = 1
    info["truncated_and_missing_answer"] = int(bool(truncated))
    return Grade(0.0, 0.0, TRUNCATED_MESSAGE if truncated else FORMAT_MESSAGE, info)
  try:
    program = parse(code)
    records = run_tests(program, tests)
  except ParseError as e:
    records = [TestRecord(0, None, "", f"{ERROR_PREFIX}DSL Parse Error: {e}", False)]
  except Exception as e:  # noqa: BLE001 -- a grader must never crash on model output
    records = [TestRecord(0, None, "", f"{ERROR_PREFIX}Unexpected parse error: {e}", False)]
  info["num_tests"] = len(records)
  info["error_in_test_cases"] = int(any(ERROR_PREFIX in r.actual for r in records if not r.passed))
  acc = sum(r.passed for r in records) / len(records) if records else 0.0
  reward = (1.0 if acc == 1.0 else 0.0) if sparse else acc
  return Grade(reward, acc, render_feedback(records), info)
