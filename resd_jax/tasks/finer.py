"""FiNER (XBRL tagging, from ACE): four numbered questions, answer = four US-GAAP tags in `<answer>...</answer>`.

Scoring (docs/TASKS.md §3.4): reasoning is stripped, the last `<answer>` block is the answer, tags are compared
position by position, case-insensitively, after fitting the prediction to the gold length (extra tags ignored,
missing ones count as wrong). The reference compares via `eval`; we compare strings only (no model text is ever
evaluated).

Reward and acc. Our `Grade` keeps one meaning across tasks: `reward` is the per-task success signal and `acc`
the fraction of test cases (here: tags) right. The reference names them the other way round for FiNER (its
`score` is the tag fraction, its `acc` is all-four-right), so the paper's per-task column is our `reward`
(with the default `partial_credit=False`) and its per-test-case column our `acc`. With `partial_credit=True`
(the paper's GRPO baseline) the reward is the tag fraction.
"""
from __future__ import annotations

from typing import Any, Iterator

from resd_jax.tasks.base import FEEDBACK_CAP, Example, Grade, RunTask, register
from resd_jax.tasks.text_utils import last_tagged, strip_reasoning

SPLITS = ("train", "test")

FORMAT_MESSAGE = ("Your answer was not in the expected format. Give the final answer as "
                  "<answer>your_answer</answer>.")
TRUNCATED_MESSAGE = "Your response was cut off because it reached the maximum length."
PARTIAL_MESSAGE = "Some of your tags are right and some are wrong. The correct tags are {gold}."
WRONG_MESSAGE = "None of your tags is right. The correct tags are {gold}."


def build_prompt(raw_context: str) -> str:
  """The user message for one ACE row. As in the reference, the context section is empty and the whole raw
  row text (tag list, instruction, questions) sits under the question heading."""
  return ("\nUse the context below, if any, to answer the question.\n\n"
          "### Context:\n\n\n"
          f"### Question:\n{raw_context}\n\n"
          "Think it through first, then give your final answer inside <answer></answer> tags, "
          "for example <answer>TagOne,TagTwo,TagThree,TagFour</answer>.")


def extract_answer(response: str) -> str | None:
  """The stripped text of the last `<answer>` block after reasoning is removed; None when there is none."""
  body = last_tagged(strip_reasoning(response), "<answer>", "</answer>")
  return body.strip() if body is not None else None


def split_tags(text: str) -> list[str]:
  return [t.strip().lower() for t in text.split(",")]


def tag_matches(pred: str, gold: str) -> list[bool]:
  """Per gold position: does the prediction's tag at that position equal the gold tag (case-insensitive)?"""
  gold_tags = split_tags(gold)
  pred_tags = split_tags(pred)[: len(gold_tags)]
  pred_tags += [""] * (len(gold_tags) - len(pred_tags))
  return [p == g for p, g in zip(pred_tags, gold_tags)]


def grade_response(response: Any, gold: str, *, truncated: bool = False, partial_credit: bool = False) -> Grade:
  """Grade one response against the gold tag string. Never raises on bad model output."""
  text = response if isinstance(response, str) else ""
  answer = extract_answer(text)
  matches = tag_matches(answer, gold) if answer is not None else []
  score = sum(matches) / len(matches) if matches else 0.0
  all_right = bool(matches) and all(matches)
  if answer is None and not truncated:
    feedback = FORMAT_MESSAGE
  elif truncated:  # wins even over a correct answer found in unfinished reasoning
    feedback = TRUNCATED_MESSAGE
  elif all_right:
    feedback = ""
  elif score > 0:
    feedback = PARTIAL_MESSAGE.format(gold=gold)
  else:
    feedback = WRONG_MESSAGE.format(gold=gold)
  reward = score if partial_credit else float(all_right)
  info = {"incorrect_format": int(answer is None), "truncated": int(truncated),
          "truncated_and_missing_answer": int(truncated and answer is None), "all_correct": int(all_right),
          "tag_score": score}
  return Grade(reward=reward, acc=score, feedback=feedback[:FEEDBACK_CAP], info=info)


def example_from_row(row: dict[str, Any], index: int, split: str) -> Example:
  """An `Example` from an ACE row (`context`, `target`) or a verl parquet row (`prompt`, `target` or
  `reward_model.ground_truth`, `extra_info.index`). The id is `finer-<split>-<index>`."""
  if "context" in row and "target" in row and "prompt" not in row:
    raw, gold = row["context"], row["target"]
    messages = ({"role": "user", "content": build_prompt(str(raw))},)
  elif "prompt" in row:
    gold = row.get("target") or (row.get("reward_model") or {}).get("ground_truth")
    messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in row["prompt"])
    index = (row.get("extra_info") or {}).get("index", index)
  else:
    raise ValueError(f"FiNER row {index} has neither 'context'+'target' (ACE schema) nor 'prompt' (verl schema); "
                     f"keys: {sorted(row)}")
  if not isinstance(gold, str) or not gold.strip():
    raise ValueError(f"FiNER row {index}: the gold tags must be a non-empty comma-separated string, got {gold!r}")
  return Example(f"finer-{split}-{index}", messages, {"gold": gold.strip(), "split": split, "index": int(index)})


@register("finer")
class FinerTask(RunTask):
  """FiNER. `train_path` / `test_path`: ACE JSONL (or parquet) files; `examples` overrides both.

  partial_credit: reward = fraction of tags right (the GRPO baseline); default reward = 1.0 iff all are right.
  """
  name = "finer"
  needs_data = True

  @classmethod
  def from_run(cls, run, *, partial_credit: bool = False, **options):
    """data.train_path / data.test_path (required). One file for both (the `:tiny` variant) validates on the
    rows after the first data.train_limit."""
    d = run.data
    skip = d.train_limit if d.train_path == d.test_path else 0
    return cls(train_path=d.train_path, test_path=d.test_path, partial_credit=partial_credit, skip_test_rows=skip)

  def __init__(self, train_path: str | None = None, test_path: str | None = None, *, partial_credit: bool = False,
               examples: dict[str, list[Example]] | None = None, skip_test_rows: int = 0):
    """skip_test_rows: leave out the first rows of the test split (when it is the training file)."""
    self.paths = {"train": train_path, "test": test_path}
    self.skip_test_rows = int(skip_test_rows)
    self.partial_credit = bool(partial_credit)
    self._examples = dict(examples) if examples is not None else {}

  def prompts(self, split: str) -> Iterator[Example]:
    if split not in SPLITS:
      raise ValueError(f"FiNER split must be one of {SPLITS}, got {split!r}")
    if split not in self._examples:
      from resd_jax.tasks import data
      self._examples[split] = list(data.load_finer(self.paths[split], split))
    yield from self._examples[split][self.skip_test_rows if split == "test" else 0:]

  def grade(self, example: Example, response_text: str, *, truncated: bool = False) -> Grade:
    return grade_response(response_text, example.meta["gold"], truncated=truncated,
                          partial_credit=self.partial_credit)
