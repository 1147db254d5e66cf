"""Dataset loaders: local parquet / JSONL rows -> `Example`s in a fixed order with index access.

Sources: the public Hugging Face rows of `manufactoria/has_*` and `bouncingsim/bouncingsim-MULTIOBJ-*`, ACE's
FiNER JSONL, and our own generated sets (same row schemas, or `save_examples` JSONL). A `DataSource` keeps file
order (no shuffling here), so `source[cursor]` lets a trainer resume exactly where it stopped. Ids are the rows'
own ids (Manufactoria uuid, BouncingSim id) or `finer-<split>-<row number>`; duplicates are an error.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Iterable, Iterator, Sequence

from resd_jax.tasks.base import Example

SPLITS = ("train", "test")
# Where each public dataset is published, per split (shown when a path is missing).
PUBLISHED = {
    "manufactoria": {"train": "Hugging Face dataset manufactoria/has_train (split 'train')",
                     "test": "Hugging Face dataset manufactoria/has_test (split 'train')"},
    "bouncingsim": {"train": "Hugging Face dataset bouncingsim/bouncingsim-MULTIOBJ-easy or -medium (split 'train')",
                    "test": "Hugging Face dataset bouncingsim/bouncingsim-MULTIOBJ-easy or -medium (split 'test')"},
    "finer": {"train": "ACE repository ace-agent/ace, finance/data/finer_train_batched_1000_samples.jsonl",
              "test": "ACE repository ace-agent/ace, finance/data/finer_val_batched_500_samples.jsonl"},
}
_SUFFIXES = (".parquet", ".jsonl", ".json")


class DataNotFoundError(FileNotFoundError):
  """A dataset file is missing; the message says what to download and which config key to set."""


class DataSource(Sequence[Example]):
  """An immutable, ordered list of examples: `len`, `source[i]`, iteration, and `index_of(id)`."""

  def __init__(self, examples: Iterable[Example], name: str = ""):
    self.name = name
    self._examples = tuple(examples)
    self._index: dict[str, int] = {}
    for i, ex in enumerate(self._examples):
      if ex.id in self._index:
        raise ValueError(f"{name or 'dataset'}: duplicate example id {ex.id!r} (rows {self._index[ex.id]} and {i})")
      self._index[ex.id] = i

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, i):  # int -> Example; slice -> tuple of Examples
    return self._examples[i]

  def __iter__(self) -> Iterator[Example]:
    return iter(self._examples)

  def index_of(self, example_id: str) -> int:
    return self._index[example_id]

  def from_cursor(self, cursor: int) -> Iterator[Example]:
    """Examples from position `cursor` on (for resuming a streaming pass)."""
    if not 0 <= cursor <= len(self):
      raise ValueError(f"{self.name}: cursor {cursor} is outside [0, {len(self)}]")
    return iter(self._examples[cursor:])


def row_fields(row: dict[str, Any], dataset: str) -> tuple[Any, Any, str]:
  """(messages, ground truth, id) of a public HF row (`messages`, `ground_truth`, `id`) or a verl parquet row
  (`prompt`, `reward_model.ground_truth`, `extra_info.index`). Raises ValueError naming what is missing."""
  if "messages" in row:
    messages, truth, rid = row["messages"], row.get("ground_truth"), row.get("id")
  elif "prompt" in row:
    messages, truth = row["prompt"], (row.get("reward_model") or {}).get("ground_truth")
    rid = (row.get("extra_info") or {}).get("index")
  else:
    raise ValueError(f"{dataset} row has neither 'messages' (HF schema) nor 'prompt' (verl schema); "
                     f"keys: {sorted(row)}")
  if not rid:
    raise ValueError(f"{dataset} row has no id: expected 'id' (HF schema) or 'extra_info.index' (verl schema)")
  if isinstance(messages, str):
    messages = json.loads(messages)
  return messages, truth, str(rid)


def _missing(dataset: str, split: str, path: Any) -> DataNotFoundError:
  where = PUBLISHED[dataset][split]
  key = f"data.{split}_path"
  found = "no path given" if path is None else f"{str(path)!r} does not exist"
  return DataNotFoundError(f"{dataset} {split} data: {found}; download it from {where} (parquet or JSONL) and set "
                           f"config key {key} to the file or folder.")


def _files(dataset: str, split: str, path: Any) -> list[pathlib.Path]:
  """The data files at `path`: the file itself, or in a folder the parquet/JSONL files (sorted), preferring
  those whose name mentions the split."""
  if path is None or not pathlib.Path(path).exists():
    raise _missing(dataset, split, path)
  p = pathlib.Path(path)
  if p.is_file():
    return [p]
  files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_SUFFIXES))
  for_split = [f for f in files if split in f.name]
  if not (for_split or files):
    raise _missing(dataset, split, f"{path}/*.parquet|*.jsonl")
  return for_split or files


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  """Rows of one parquet (needs pyarrow), JSONL or JSON-list file, in file order."""
  name = path.name
  if name.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ModuleNotFoundError:
      raise ModuleNotFoundError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to JSONL)") from None
    return pq.read_table(path).to_pylist()
  text = path.read_text(encoding="utf-8")
  if name.endswith(".json") and text.lstrip().startswith("["):
    return json.loads(text)
  rows = []
  for n, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
  return rows


def _load(dataset: str, path: Any, split: str, build: Callable[[dict[str, Any], int], Example],
          limit: int | None) -> DataSource:
  if split not in SPLITS:
    raise ValueError(f"{dataset} split must be one of {SPLITS}, got {split!r}")
  if limit is not None and limit < 1:
    raise ValueError(f"{dataset}: limit must be a positive integer or None, got {limit}")
  rows = [row for f in _files(dataset, split, path) for row in read_rows(f)]
  rows = rows[:limit] if limit is not None else rows
  return DataSource((build(row, i) for i, row in enumerate(rows)), name=f"{dataset}/{split}")


def load_manufactoria(path: Any, split: str, limit: int | None = None) -> DataSource:
  """`manufactoria/has_train` / `has_test` rows (HF or verl schema)."""
  from resd_jax.tasks.manufactoria import example_from_row
  return _load("manufactoria", path, split, lambda row, i: example_from_row(row, split), limit)


def load_bouncingsim(path: Any, split: str, limit: int | None = None) -> DataSource:
  """`bouncingsim-MULTIOBJ-*` rows or our generated JSONL. The paper trains medium on the first 320 rows:
  `limit=320`."""
  from resd_jax.tasks.bouncingsim import example_from_row
  return _load("bouncingsim", path, split, lambda row, i: example_from_row(row, split), limit)


def load_finer(path: Any, split: str, limit: int | None = None) -> DataSource:
  """ACE FiNER JSONL (`context`, `target`) or verl parquet rows. The public train file is not readable in either
  public copy (docs/TASKS.md §3.1); the 500-row val file is the paper's test set."""
  from resd_jax.tasks.finer import example_from_row
  return _load("finer", path, split, lambda row, i: example_from_row(row, i, split), limit)


def save_examples(examples: Iterable[Example], path: Any) -> None:
  """Write examples as JSONL (one `{"id", "messages", "meta"}` per line) — our generated sets."""
  with open(path, "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps(dataclasses.asdict(ex)) + "\n")


def load_examples(path: Any, name: str = "examples") -> DataSource:
  """Read what `save_examples` wrote."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise DataNotFoundError(f"{name}: {str(path)!r} does not exist; write it with resd_jax.tasks.data.save_examples")
  return DataSource((Example(str(r["id"]), tuple(r["messages"]), dict(r.get("meta") or {})) for r in read_rows(p)),
                    name=name)
