"""Manufactoria grader: extraction, reward/acc, feedback layout and caps, robustness to any response."""
import json
import random
import time

import pytest

from resd_jax.tasks.manufactoria.grader import (BAD_TESTS_MESSAGE, FORMAT_MESSAGE, TRUNCATED_MESSAGE, extract_code,
                                                grade_response)


def _t(tape, accepted):
  return {"input": tape, "expected_output": "", "expected_accepted": accepted, "check_output": False,
          "description": ""}


# "Contains a red": accept iff R occurs somewhere.
TESTS = [_t("", False), _t("R", True), _t("BR", True), _t("B", False), _t("YGR", True), _t("GGB", False)]

GOOD = """START start:
    NEXT rb
PULLER_RB rb:
    [R] end
    [B] rb
    [EMPTY] yg
PULLER_YG yg:
    [Y] rb
    [G] rb
END end"""
ACCEPT_ALL = "START start:\n    NEXT end\nEND end"
REJECT_ALL = "START start:\n    NEXT NONE\nEND end"


def _fence(code, label="manufactoria"):
  return f"Let me think.\n\n```{label}\n{code}\n```\n"


def test_good_program_scores_one_with_no_feedback():
  g = grade_response(_fence(GOOD), TESTS)
  assert (g.reward, g.acc, g.feedback) == (1.0, 1.0, "")
  assert g.info["incorrect_format"] == 0 and g.info["error_in_test_cases"] == 0 and g.info["num_tests"] == 6


def test_wrong_answers_show_two_shortest_in_full_layout():
  g = grade_response(_fence(ACCEPT_ALL), TESTS)
  assert g.acc == pytest.approx(3 / 6) and g.reward == 0.0
  assert g.info["error_in_test_cases"] == 0
  expected = (
      "Test Case 1: Wrong Answer\n\nInput\n\n\nOutput\n\n\nDebug Output\nExecution Trace:\n  Step 1: start\n"
      "  Step 2: end\nFinished: True\nActual output: ''\nExpected accepted: False\n\n"
      "Test Case 4: Wrong Answer\n\nInput\nB\n\nOutput\nB\n\nDebug Output\nExecution Trace:\n  Step 1: start\n"
      "  Step 2: end\nFinished: True\nActual output: 'B'\nExpected accepted: False")
  assert g.feedback == expected


def test_dense_reward_and_test_split_forces_sparse():
  g = grade_response(_fence(ACCEPT_ALL), TESTS, sparse=False)
  assert g.reward == pytest.approx(0.5) and g.acc == pytest.approx(0.5)
  g = grade_response(_fence(ACCEPT_ALL), TESTS, sparse=False, split="test")
  assert g.reward == 0.0 and g.acc == pytest.approx(0.5)


def test_runtime_error_shows_only_first_error_record():
  g = grade_response(_fence(REJECT_ALL), TESTS)
  assert g.acc == pytest.approx(3 / 6) and g.info["error_in_test_cases"] == 1
  expected = ("Runtime Error\nRouted to NONE\n\nLast Executed Input\nR\n\nDebug Output\nExecution Trace:\n"
              "  Step 1: start\n  Step 2: NONE\nRejection: Routed to NONE\nRouting node: start (START)\n"
              "Front tape character at rejection: R\nFinished: False\nActual output: 'R'\nExpected accepted: True")
  assert g.feedback == expected


def test_step_limit_debug_and_front_after_pull():
  loop = "START start:\n    NEXT a\nPAINTER_RED a:\n    NEXT b\nPULLER_RB b:\n    [R] a\n    [B] a\nEND end"
  g = grade_response(_fence(loop), [_t("B", True)])
  # Visits: start, then (a, b) pairs, so visit 1000 is a; the tape alternates "BR", "R", "RR", "R", ... "RR".
  assert g.feedback == ("Runtime Error\nMaximum iterations exceeded (possible infinite loop)\n\n"
                        "Last Executed Input\nB\n\nDebug Output\nStuck at node: a (PAINTER_RED)\n"
                        "Front tape character: R\nRemaining tape: 'RR'\nFinished: False\nActual output: 'RR'\n"
                        "Expected accepted: True")
  # Routed-to-NONE: the front shown is the one after the pull.
  g = grade_response(_fence("START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end"), [_t("BG", True)])
  assert "Routing node: p (PULLER_RB)\nFront tape character at rejection: G\n" in g.feedback


def test_long_trace_keeps_last_15_steps_and_10_debug_lines():
  prog = "START start:\n    NEXT p\nPULLER_RB p:\n    [R] p\nEND end"
  g = grade_response(_fence(prog), [_t("R" * 20, True)])  # path: start, p x 21, NONE = 23 visits
  debug = g.feedback.split("Debug Output\n", 1)[1].split("\n")
  assert debug[0] == "Execution Trace:"
  assert debug[1] == "  ... (8 earlier steps omitted)"
  assert debug[2] == "  Step 9: p"
  assert debug[9] == "  Step 16: p"
  # 1 + 16 trace lines + 3 NONE lines + 3 tail lines = 23 lines; 10 shown.
  assert debug[10:] == ["... (13 more lines)"] and len(debug) == 11


def test_parse_error_is_one_failing_record():
  g = grade_response(_fence("START start:\n    NEXT x\nEND end"), TESTS)
  assert g.acc == 0.0 and g.reward == 0.0 and g.info["num_tests"] == 1 and g.info["error_in_test_cases"] == 1
  assert g.feedback == ("Runtime Error\nDSL Parse Error: Line 1: Node 'start' references undefined node 'x'\n\n"
                        "Last Executed Input\nNone")


def test_other_fence_labels_stay_in_the_code():
  g = grade_response(_fence(GOOD, label="python"), TESTS)
  assert g.acc == 0.0 and "DSL Parse Error: Line 1: Invalid node declaration: python" in g.feedback
  assert extract_code("```\nA\n```") == "A"


def test_last_fenced_block_wins_over_reasoning():
  resp = f"draft:\n```manufactoria\n{ACCEPT_ALL}\n```\nbetter:\n```manufactoria\n{GOOD}\n```"
  assert grade_response(resp, TESTS).reward == 1.0
  resp = f"```manufactoria\n{GOOD}\n```\nthen I wrote ``` by mistake"  # odd fence count: pairing is lazy
  assert grade_response(resp, TESTS).reward == 1.0
  resp = f"I use ``` in prose\n```manufactoria\n{GOOD}\n```"  # shifted pairing: the last pair is garbage
  assert grade_response(resp, TESTS).reward == 0.0


@pytest.mark.parametrize("truncated", [False, True])
def test_missing_code_block_format_feedback(truncated):
  g = grade_response("I could not decide.", TESTS, truncated=truncated)
  assert g.reward == 0.0 and g.acc == 0.0 and g.info["incorrect_format"] == 1
  assert g.feedback == (TRUNCATED_MESSAGE if truncated else FORMAT_MESSAGE)
  assert g.feedback in ("Incorrect Format: Put your code inside a ```manufactoria ... ``` block.",
                        "Truncated Attempt: Your previous response was too long and truncated.")
  assert g.info["truncated"] == int(truncated) and g.info["truncated_and_missing_answer"] == int(truncated)


def test_truncated_with_code_is_graded_normally():
  g = grade_response(_fence(GOOD), TESTS, truncated=True)
  assert g.reward == 1.0 and g.info["truncated"] == 1 and g.info["truncated_and_missing_answer"] == 0


def test_feedback_caps():
  tape = "B" * 400
  prog = "START start:\n    NEXT end\nEND end"
  want = "R" * 400  # reaches end with the wrong tape: a wrong answer whose block also shows Expected
  tests = [{"input": tape, "expected_output": want, "expected_accepted": True, "check_output": True}] * 2
  g = grade_response(_fence(prog), tests)
  assert len(g.feedback) == 2000  # hard cut, no ellipsis
  first = g.feedback.split("\n\n")
  assert first[1] == "Input\n" + "B" * 250 + "..."
  assert first[3] == "Expected\n" + "R" * 250 + "..."
  assert ("\nActual output: '" + "B" * 284 + "...\n") in g.feedback  # debug lines capped at 300 chars


def test_ground_truth_forms():
  assert grade_response(_fence(GOOD), json.dumps(TESTS)).reward == 1.0
  assert grade_response(_fence(GOOD), _t("R", True)).acc == 1.0  # a single dict is wrapped
  g = grade_response(_fence(GOOD), "not json")
  assert g.feedback == BAD_TESTS_MESSAGE and g.info["error_in_test_cases"] == 1 and g.reward == 0.0
  assert grade_response(_fence(GOOD), TESTS, max_test_cases=2).info["num_tests"] == 2
  assert grade_response(_fence(GOOD), TESTS, max_test_cases=2, split="test").info["num_tests"] == 6


def test_missing_flags_default_to_output_check_and_accept():
  # No check_output / expected_accepted: the robot must reach end with the tape equal to expected_output.
  g = grade_response(_fence(ACCEPT_ALL), [{"input": "RB", "expected_output": "RB"}, {"input": "R"}])
  assert g.acc == pytest.approx(0.5)
  assert "Expected output: ''" in g.feedback and "Expected\n" not in g.feedback


@pytest.mark.parametrize("response", [
    "", "x" * 1_000_000, "```" + "x" * 1_000_000 + "```", "```manufactoria\n" + "START start:\n" * 80_000 + "```",
    bytes(random.Random(0).randrange(256) for _ in range(100_000)).decode("latin-1"), "``````", "```" * 10_001,
    "```\n\x00\x01\u202e\n```", b"\xff\xfe```junk```",
])
def test_any_response_is_graded_without_raising(response):
  t0 = time.perf_counter()
  g = grade_response(response, TESTS)
  assert g.reward == 0.0 and 0.0 <= g.acc <= 1.0 and len(g.feedback) <= 2000 and g.feedback
  assert time.perf_counter() - t0 < 2.0


def test_error_record_wins_over_earlier_wrong_answers():
  # Accepts only the empty tape: test 1 ("" should reject) is a wrong answer, test 2 ("R") the first error.
  prog = "START start:\n    NEXT p\nPULLER_RB p:\n    [EMPTY] end\nEND end"
  g = grade_response(_fence(prog), TESTS)
  assert g.feedback.startswith("Runtime Error\nRouted to NONE\n\nLast Executed Input\nR\n")
  assert "Wrong Answer" not in g.feedback and "Last Executed Input" in g.feedback
  assert g.feedback.count("Runtime Error") == 1
