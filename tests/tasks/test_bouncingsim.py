"""BouncingSim: assert parsing, distance check, grading through the sandbox, feedback layout, scene generator."""
import json
import math

import numpy as np
import pytest

from resd_jax.tasks import base, bouncingsim
from resd_jax.tasks.sandbox import SandboxLimits

# One ball at (100, 200) moving with velocity (300, 400): speed 500, so a frozen answer is off by 500 * t.
TIMES = (0.1, 0.2, 0.3, 0.5)
ASSERTS = [f"assert check_distance(predict_position({t:.2f}), [[{100 + 300 * t:.2f}, {200 + 400 * t:.2f}]]) <= 50.0"
           for t in TIMES]
FAST = SandboxLimits(timeout_s=0.5, memory_mb=256, nproc=8)


def fenced(code: str) -> str:
  return f"I will reason first.\n</think>\nHere is the code:\n```python\n{code}\n```\n"


def grade(response, asserts=ASSERTS, **kw):
  kw.setdefault("limits", FAST)
  return bouncingsim.grade_response(response, asserts, **kw)


def test_parse_assert_reads_literals():
  p = bouncingsim.parse_assert("assert check_distance(predict_position(0.30), [[1.5, -2.0], [3, 4]]) <= 25.5")
  assert p == bouncingsim.ParsedAssert(0.3, [[1.5, -2.0], [3, 4]], 25.5)
  assert bouncingsim.parse_assert("assert predict_position(1) == 3") is None
  # Code inside the literal is not evaluated: literal_eval refuses it.
  assert bouncingsim.parse_assert(
      "assert check_distance(predict_position(1), [__import__('os').getpid()]) <= 1") is None


def test_decode_tests_accepts_list_and_json_and_refuses_pickle():
  assert bouncingsim.decode_tests(ASSERTS) == ASSERTS
  assert bouncingsim.decode_tests(json.dumps(ASSERTS)) == ASSERTS
  assert bouncingsim.decode_tests(np.array(ASSERTS, dtype=object)) == ASSERTS
  for bad in ("eJxrYJ4qwMAA", "[]", [], [1, 2], "{}"):
    with pytest.raises(ValueError):
      bouncingsim.decode_tests(bad)


def test_check_distance_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 2)) * 100, rng.normal(size=(5, 2)) * 100
  want = round(float(np.mean(np.linalg.norm(a - b, axis=1))), 3)
  assert bouncingsim.check_distance(a.tolist(), b.tolist()) == want
  with pytest.raises(TypeError):
    bouncingsim.check_distance([], [[1, 2]])
  with pytest.raises(ValueError, match="same length: 1 vs 2"):
    bouncingsim.check_distance([[0, 0]], [[1, 2], [3, 4]])
  with pytest.raises(ValueError):
    bouncingsim.check_distance([[0, "x"]], [[1, 2]])


def test_correct_program_scores_one():
  g = grade(fenced("def predict_position(t):\n  return [[round(100 + 300 * t, 2), round(200 + 400 * t, 2)]]"))
  assert (g.reward, g.acc, g.feedback) == (1.0, 1.0, "")
  assert g.info["n_passed"] == 4


def test_wrong_program_feedback_layout():
  g = grade(fenced("def predict_position(t):\n  return [[100, 200]]"))
  # Off by 500 * t: 50 (passes, <= 50), 100, 150, 250.
  assert (g.reward, g.acc) == (0.0, 0.25)
  lines = g.feedback.split("\n")
  assert lines[0] == "Passed 1/4 test cases."
  assert lines[1] == "Tests pass for t <= 0.10, first failure at t = 0.20 (Test Case 2)."
  assert lines[2].startswith("Position error grows with time (avg_distance 100 at t=0.20 -> 250 at t=0.50)")
  assert lines[3] == ""
  assert [l for l in lines if l.endswith("Wrong Answer")] == [f"Test Case {k}: Wrong Answer" for k in (2, 3, 4)]
  assert "Ball 1: off by 150.0m (got [100, 200], expected [190.0, 320.0])" in lines
  assert "avg_distance=250.000, threshold=50.0" in lines
  assert "Hint:" not in g.feedback


def test_dense_reward_and_test_split_is_sparse():
  code = fenced("def predict_position(t):\n  return [[100, 200]]")
  assert grade(code, sparse=False).reward == 0.25
  assert grade(code, sparse=False, split="test").reward == 0.0


def test_wall_hint_when_one_ball_is_far_off_and_another_exact():
  asserts = ["assert check_distance(predict_position(1.00), [[0.0, 0.0], [500.0, 0.0]]) <= 50.0"]
  g = grade(fenced("def predict_position(t):\n  return [[0.0, 0.0], [300.0, 0.0]]"), asserts)
  assert "Ball 2: off by 200.0m" in g.feedback and "Hint:" in g.feedback


def test_errors_show_only_the_first_error_record():
  g = grade(fenced("def predict_position(t):\n  if t > 0.15:\n    raise KeyError('boom')\n"
                   "  return [[round(100 + 300 * t, 2), round(200 + 400 * t, 2)]]"))
  assert g.acc == 0.25 and g.info["error_in_test_cases"] == 1
  body = g.feedback.split("\n")
  assert body[0] == "Passed 1/4 test cases." and body.count("Runtime Error") == 1
  assert "KeyError: 'boom'" in g.feedback and "t = 0.2" in g.feedback and "Test Case" in body[1]


def test_definition_error_and_wrong_shape():
  g = grade(fenced("x = 1 / 0\ndef predict_position(t):\n  return [[0, 0]]"))
  assert "DefinitionError: ZeroDivisionError" in g.feedback and g.acc == 0.0
  g = grade(fenced("def predict_position(t):\n  return [[0, 0], [1, 1]]"))
  assert "Lists must have same length: 2 vs 1" in g.feedback


def test_infinite_loop_times_out():
  g = grade(fenced("def predict_position(t):\n  while True:\n    pass"), ASSERTS[:2])
  assert g.acc == 0.0 and g.info["timed_out"] == 1
  assert g.feedback.split("\n")[2] == "Time Limit Exceeded"
  assert "killed after 0.5s" in g.feedback


def test_program_cannot_forge_the_check():
  forged = "check_distance = lambda a, b: 0.0\ndef predict_position(t):\n  return [[0.0, 0.0]]"
  assert grade(fenced(forged)).acc == 0.0


def test_prechecks_blocklist_and_syntax():
  g = grade(fenced("# we never import os here\ndef predict_position(t):\n  return [[0, 0]]"))
  assert "blocked by safety filter" in g.feedback and g.acc == 0.0
  g = grade(fenced("def predict_position(t:\n  return"))
  assert "Syntax Error" in g.feedback and "Compilation failed." in g.feedback


def test_format_and_truncation_messages():
  g = grade("no code at all")
  assert g.feedback == "Passed 0/1 test cases.\n\nIncorrect Format: Put your code inside a ```python ... ``` block."
  assert g.info["incorrect_format"] == 1 and g.reward == 0.0
  g = grade("```python\n   \n```", truncated=True)
  assert g.feedback.endswith("Truncated Attempt: Your previous response was too long and truncated.")
  assert g.info["truncated_and_missing_answer"] == 1


def test_bad_ground_truth_and_hostile_inputs_never_raise():
  assert grade("```python\nx=1\n```", asserts="not json").feedback.startswith("Failed to parse ground truth")
  huge = "x" * (1 << 20)
  for response in (None, "", huge, f"```python\n{huge}\n```", "```" * 1000, f"```python\n{'(' * 5000}\n```"):
    g = grade(response)
    assert g.reward == 0.0 and len(g.feedback) <= base.FEEDBACK_CAP


def test_example_from_row_schemas_agree():
  msgs = [{"role": "user", "content": "predict"}]
  hf = bouncingsim.example_from_row({"messages": msgs, "ground_truth": ASSERTS, "id": "G_1_0", "difficulty": 1},
                                    "train")
  verl = bouncingsim.example_from_row({"prompt": msgs, "reward_model": {"ground_truth": json.dumps(ASSERTS)},
                                       "extra_info": {"index": "G_1_0", "difficulty": 1}}, "train")
  assert hf == verl and hf.meta["tests"] == ASSERTS
  with pytest.raises(ValueError, match="no id"):
    bouncingsim.example_from_row({"messages": msgs, "ground_truth": ASSERTS}, "train")


# ---- scene generation (needs the `physics` extra) ----

def test_generator_is_seeded_and_reproducible():
  scenes = pytest.importorskip("resd_jax.tasks.bouncingsim_scenes")
  pytest.importorskip("pymunk")
  a, b = scenes.generate_rows(2, "easy", seed=7), scenes.generate_rows(2, "easy", seed=7)
  assert a == b
  assert scenes.generate_rows(1, "easy", seed=8)[0]["ground_truth"] != a[0]["ground_truth"]
  medium = scenes.generate_rows(2, "medium", seed=7)
  assert all(4 <= len(r["scene"]["balls"]) <= 5 for r in medium)
  assert all(len(r["scene"]["balls"]) == 3 and len(r["ground_truth"]) == 15 for r in a)
  with pytest.raises(ValueError, match="level"):
    scenes.generate_rows(1, "hard")


def test_generated_ground_truth_is_physical():
  scenes = pytest.importorskip("resd_jax.tasks.bouncingsim_scenes")
  pytest.importorskip("pymunk")
  for row in scenes.generate_rows(4, "medium", seed=3):
    scene = row["scene"]
    c = scene["container"]
    parsed = [bouncingsim.parse_assert(a) for a in row["ground_truth"]]
    assert [p.t for p in parsed] == [round(0.1 * k, 2) for k in range(1, 16)]
    for p in parsed:  # every centre stays within the circumradius of the container
      assert all(math.dist(q, c["center"]) < c["radius"] for q in p.expected)
    # Before any contact is possible, motion is a straight line at constant velocity.
    apothem = c["radius"] * math.cos(math.pi / c["sides"])
    for i, ball in enumerate(scene["balls"]):
      reach = math.hypot(*ball["velocity"]) * 0.1 + ball["radius"]
      clear_wall = math.dist(ball["position"], c["center"]) + reach < apothem
      clear_balls = all(math.dist(ball["position"], o["position"]) > reach + math.hypot(*o["velocity"]) * 0.1
                        + o["radius"] for j, o in enumerate(scene["balls"]) if j != i)
      if clear_wall and clear_balls:
        want = [ball["position"][0] + 0.1 * ball["velocity"][0], ball["position"][1] + 0.1 * ball["velocity"][1]]
        assert math.dist(parsed[0].expected[i], want) < 0.5


def test_lookup_table_solution_passes_every_generated_assert():
  scenes = pytest.importorskip("resd_jax.tasks.bouncingsim_scenes")
  pytest.importorskip("pymunk")
  row = scenes.generate_rows(1, "easy", seed=1)[0]
  table = {p.t: p.expected for p in map(bouncingsim.parse_assert, row["ground_truth"])}
  code = f"def predict_position(t):\n  table = {table!r}\n  return table[round(t, 2)]"
  task = base.make("bouncingsim", examples={"train": [bouncingsim.example_from_row(row, "train")]}, limits=FAST,
                   workers=2)
  example = next(task.prompts("train"))
  assert "predict_position(t)" in example.prompt_text and "Ball 3" in example.prompt_text
  g = task.grade(example, fenced(code))
  assert (g.reward, g.acc) == (1.0, 1.0)


def test_task_hides_its_data_files_from_programs(tmp_path):
  path = tmp_path / "train.jsonl"
  row = {"messages": [{"role": "user", "content": "s"}], "ground_truth": ASSERTS, "id": "G_1_0"}
  path.write_text(json.dumps(row) + "\n")
  task = bouncingsim.BouncingSimTask(train_path=str(path), test_path=str(path), limits=FAST)
  assert task.limits.hide_paths == (str(path), str(path)) and task.limits.timeout_s == FAST.timeout_s
  assert [ex.id for ex in task.prompts("train")] == ["G_1_0"]
