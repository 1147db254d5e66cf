"""Loaders: parquet / JSONL rows into ordered `DataSource`s with stable ids; missing data gives a useful error."""
import json

import pytest

from resd_jax.tasks import data
from resd_jax.tasks.base import Example

ASSERTS = ["assert check_distance(predict_position(0.10), [[1.0, 2.0]]) <= 50.0"]


def bsim_row(k: int) -> dict:
  return {"messages": [{"role": "user", "content": f"scene {k}"}], "ground_truth": ASSERTS, "id": f"G_1_{k}",
          "difficulty": 1, "dataset": "ballsim"}


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_missing_path_names_dataset_source_and_key(tmp_path):
  with pytest.raises(data.DataNotFoundError) as e:
    data.load_finer(tmp_path / "nope.jsonl", "train")
  msg = str(e.value)
  assert "\n" not in msg and "finer train" in msg and "ace-agent/ace" in msg and "data.train_path" in msg
  with pytest.raises(data.DataNotFoundError, match="manufactoria/has_test.*data.test_path"):
    data.load_manufactoria(None, "test")
  with pytest.raises(data.DataNotFoundError, match="bouncingsim-MULTIOBJ"):
    data.load_bouncingsim(tmp_path, "train")  # an empty folder


def test_jsonl_order_index_access_and_cursor(tmp_path):
  src = data.load_bouncingsim(write_jsonl(tmp_path / "rows.jsonl", [bsim_row(k) for k in range(5)]), "train")
  assert len(src) == 5 and [ex.id for ex in src] == [f"G_1_{k}" for k in range(5)]
  assert src[3].prompt_text == "scene 3" and src.index_of("G_1_2") == 2
  assert [ex.id for ex in src.from_cursor(4)] == ["G_1_4"]
  assert len(data.load_bouncingsim(tmp_path / "rows.jsonl", "train", limit=2)) == 2
  with pytest.raises(ValueError, match="cursor"):
    src.from_cursor(6)


def test_parquet_rows_match_jsonl_rows(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  rows = [bsim_row(k) for k in range(3)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
  pq.write_table(pa.Table.from_pylist([bsim_row(9)]), tmp_path / "test-00000-of-00001.parquet")
  from_parquet = data.load_bouncingsim(tmp_path, "train")  # a folder: the split's file is picked
  from_jsonl = data.load_bouncingsim(write_jsonl(tmp_path / "x.jsonl", rows), "train")
  assert list(from_parquet) == list(from_jsonl)
  assert [ex.id for ex in data.load_bouncingsim(tmp_path, "test")] == ["G_1_9"]


def test_duplicate_ids_and_bad_json_are_errors(tmp_path):
  with pytest.raises(ValueError, match="duplicate example id 'G_1_0'"):
    data.load_bouncingsim(write_jsonl(tmp_path / "d.jsonl", [bsim_row(0), bsim_row(0)]), "train")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": 1}\n{oops\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    data.read_rows(bad)


def test_finer_rows_get_row_number_ids(tmp_path):
  rows = [{"context": f"q{k}", "target": "A,B,C,D"} for k in range(3)]
  src = data.load_finer(write_jsonl(tmp_path / "f.jsonl", rows), "test")
  assert [ex.id for ex in src] == ["finer-test-0", "finer-test-1", "finer-test-2"]


def test_manufactoria_rows_load_through_its_row_builder(tmp_path):
  pytest.importorskip("resd_jax.tasks.manufactoria")
  tests = [{"input": "RB", "expected_output": "", "expected_accepted": True, "check_output": False}]
  row = {"messages": [{"role": "user", "content": "build"}], "ground_truth": tests, "id": "uuid-1",
         "dataset": "manufactoria", "difficulty": "easy", "problem_family": "contains_substring", "name": "n"}
  src = data.load_manufactoria(write_jsonl(tmp_path / "has_train.jsonl", [row]), "train")
  assert [ex.id for ex in src] == ["uuid-1"] and src[0].meta["tests"][0]["input"] == "RB"


def test_save_and_load_examples_round_trip(tmp_path):
  exs = [Example(f"e{k}", ({"role": "user", "content": f"p{k}"},), {"tests": [k], "split": "train"})
         for k in range(3)]
  data.save_examples(exs, tmp_path / "gen.jsonl")
  assert list(data.load_examples(tmp_path / "gen.jsonl")) == exs
  with pytest.raises(data.DataNotFoundError, match="save_examples"):
    data.load_examples(tmp_path / "missing.jsonl")
