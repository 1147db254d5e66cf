"""ManufactoriaTask: registry, prompts, grading through the task, and the dataset-row adapter."""
import json

import numpy as np
import pytest

from resd_jax.tasks import base
from resd_jax.tasks.manufactoria import ManufactoriaTask, example_from_row, generator
from resd_jax.tasks.manufactoria.dsl import parse
from resd_jax.tasks.manufactoria.prompt import build_prompt
from resd_jax.tasks.manufactoria.reference import reference_program
from resd_jax.tasks.manufactoria.simulator import run

TESTS = [{"input": "", "expected_output": "", "expected_accepted": False, "check_output": False, "description": ""},
         {"input": "GR", "expected_output": "", "expected_accepted": True, "check_output": False, "description": ""}]


@pytest.fixture(scope="module")
def task():
  return base.make("manufactoria")


def test_registered_and_protocol(task):
  assert "manufactoria" in base.registered()
  assert isinstance(task, ManufactoriaTask) and isinstance(task, base.Task)


def test_prompts_per_split(task):
  train, test = list(task.prompts("train")), list(task.prompts("test"))
  assert (len(train), len(test)) == (742, 132)
  assert [e.id for e in task.prompts("test")] == [e.id for e in test]  # deterministic order
  ex = test[0]
  assert ex.meta["split"] == "test" and ex.meta["family"] in generator.FAMILIES and ex.meta["name"]
  assert len(ex.messages) == 1 and ex.messages[0]["role"] == "user"
  assert ex.prompt_text.rstrip().endswith(generator.make_problem(ex.meta["family"], _params(ex)).criteria)
  with pytest.raises(ValueError, match="split must be one of"):
    list(task.prompts("validation"))


def _params(ex):
  p = ex.id.split("-", 2)[2]
  if ex.meta["family"] == "contains_count":
    return tuple((part[0], int(part[1:])) for part in p.split("-"))
  return p


def test_grade_reference_and_wrong_answers_through_task(task):
  ex = next(iter(task.prompts("test")))
  problem = generator.make_problem(ex.meta["family"], _params(ex))
  g = task.grade(ex, f"<think>easy</think>\n```manufactoria\n{reference_program(problem)}\n```")
  assert g.reward == 1.0 and g.acc == 1.0 and g.feedback == ""
  g = task.grade(ex, "```\nSTART start:\n    NEXT end\nEND end\n```")
  assert g.reward == 0.0 and 0 < g.acc < 1 and "Wrong Answer" in g.feedback
  g = task.grade(ex, "no code", truncated=True)
  assert g.info["truncated_and_missing_answer"] == 1 and g.feedback.startswith("Truncated Attempt")


def test_dense_option_applies_on_train_only():
  dense = ManufactoriaTask(sparse=False, examples={"train": [], "test": []})
  wrong = "```\nSTART start:\n    NEXT end\nEND end\n```"
  row = {"messages": [{"role": "user", "content": "q"}], "ground_truth": TESTS, "id": "abc"}
  assert dense.grade(example_from_row(row, "train"), wrong).reward == pytest.approx(0.5)
  assert dense.grade(example_from_row(row, "test"), wrong).reward == 0.0


def test_hf_row_schema():
  row = {"messages": np.array([{"content": "prompt text", "role": "user"}], dtype=object),
         "ground_truth": np.array([dict(t, expected_accepted=np.bool_(t["expected_accepted"])) for t in TESTS]),
         "dataset": "manufactoria", "difficulty": "easy", "id": "0c5e-uuid", "problem_family": "contains_count",
         "name": "At least 1 R"}
  ex = example_from_row(row, "train")
  assert ex.id == "0c5e-uuid" and ex.messages == ({"role": "user", "content": "prompt text"},)
  assert ex.meta == {"tests": TESTS, "split": "train", "family": "contains_count", "name": "At least 1 R",
                     "difficulty": "easy"}
  assert type(ex.meta["tests"][1]["expected_accepted"]) is bool


def test_verl_row_schema():
  row = {"data_source": "manufactoria-has", "prompt": [{"role": "user", "content": "p"}], "ability": "manufactoria",
         "reward_model": {"style": "manufactoria", "ground_truth": json.dumps(TESTS)},
         "extra_info": {"split": "test", "index": "uuid-1", "difficulty": "easy",
                        "problem_family": "contains_ordered", "name": "Contains R"}}
  ex = example_from_row(row, "test")
  assert ex.id == "uuid-1" and ex.meta["tests"] == TESTS and ex.meta["family"] == "contains_ordered"
  assert ex.meta["split"] == "test" and ex.meta["name"] == "Contains R"


def test_missing_flags_take_grader_defaults():
  row = {"messages": [{"role": "user", "content": "p"}], "ground_truth": [{"input": "RB"}], "id": "x"}
  assert example_from_row(row, "train").meta["tests"] == [
      {"input": "RB", "expected_output": "", "expected_accepted": True, "check_output": True, "description": ""}]


@pytest.mark.parametrize("row, message", [
    ({"foo": 1}, "neither 'messages'"),
    ({"messages": [], "id": "x"}, "no test cases"),
    ({"messages": [], "ground_truth": []}, "no id"),
    ({"prompt": [], "reward_model": {"ground_truth": "{bad"}, "extra_info": {"index": "i"}}, "not valid JSON"),
    ({"messages": [], "ground_truth": ["RB"], "id": "x"}, "must be an object"),
])
def test_bad_rows_raise_one_line_errors(row, message):
  with pytest.raises(ValueError, match=message):
    example_from_row(row, "train")


def test_bad_config():
  with pytest.raises(ValueError, match="max_test_cases"):
    ManufactoriaTask(max_test_cases=0)


def test_prompt_example_factory_does_what_it_says():
  text = build_prompt("Accept everything.")
  example = text.split("## Example", 1)[1].split("```manufactoria", 1)[1].split("```", 1)[0]
  prog = parse(example)
  for tape in ["", "R", "RB", "B", "BR", "Y", "GR", "RYG"]:
    assert run(prog, tape).finished == tape.startswith("R"), tape
  assert "## Objective" in text and text.rstrip().endswith("# Task\n\nBuild a factory that does the following.\n\n"
                                                           "Accept everything.")
  assert "meets the task's requirements" in build_prompt("x", check_output=True)


def _write_rows(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_data_path_folder_and_dict(tmp_path):
  def row(rid):
    return {"messages": [{"role": "user", "content": f"prompt {rid}"}], "ground_truth": TESTS, "dataset": "manufactoria",
            "difficulty": "easy", "id": rid, "problem_family": "contains_count", "name": "At least 1 R"}
  _write_rows(tmp_path / "has_train.jsonl", [row("a"), row("b")])
  _write_rows(tmp_path / "has_test.jsonl", [row("c")])
  task = ManufactoriaTask(data_path=str(tmp_path))
  assert [e.id for e in task.prompts("train")] == ["a", "b"] and [e.id for e in task.prompts("test")] == ["c"]
  ex = next(iter(task.prompts("test")))
  assert ex.meta["split"] == "test" and task.grade(ex, "```\nSTART start:\n    NEXT end\nEND end\n```").acc == 0.5
  task = ManufactoriaTask(data_path={"train": str(tmp_path / "has_test.jsonl"), "test": str(tmp_path / "has_train.jsonl")})
  assert [e.id for e in task.prompts("train")] == ["c"]


def test_missing_data_path_names_the_dataset(tmp_path):
  with pytest.raises(FileNotFoundError, match="manufactoria/has_train"):
    list(ManufactoriaTask(data_path=str(tmp_path / "nope")).prompts("train"))
