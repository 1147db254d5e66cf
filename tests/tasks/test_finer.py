"""FiNER grading: extraction after reasoning stripping, position-wise tag compare, reward modes, feedback order."""
import json
import random

import pytest

from resd_jax.tasks import base, finer
from resd_jax.tasks.text_utils import strip_reasoning

GOLD = "DebtInstrumentFaceAmount,EffectiveIncomeTaxRate,Revenues,Goodwill"


def answer(tags: str, reasoning: str = "let me think") -> str:
  return f"{reasoning}\n</think>\n\n<answer>{tags}</answer>"


def test_strip_reasoning_cases():
  assert strip_reasoning("a <think>x</think>  b") == "a b"
  assert strip_reasoning("reason </think>\n answer") == "answer"
  assert strip_reasoning("x</think> y </think> z") == "y </think> z"
  assert strip_reasoning("no close tag <answer>A</answer>") == "no close tag <answer>A</answer>"


def test_extraction_takes_last_answer_after_reasoning():
  text = "I might say <answer>Wrong</answer>\n</think>\n<answer>first</answer> then <answer> last </answer>"
  assert finer.extract_answer(text) == "last"
  # Answers inside stripped reasoning do not count.
  assert finer.extract_answer("<answer>A</answer></think> nothing") is None
  assert finer.extract_answer("no tags") is None


def test_position_wise_compare_truncate_pad_case():
  assert finer.tag_matches("debtinstrumentfaceamount , X,Revenues", GOLD) == [True, False, True, False]
  assert finer.tag_matches(GOLD + ",Extra,More", GOLD) == [True] * 4
  assert finer.tag_matches("", GOLD) == [False] * 4


def test_reward_modes_and_feedback_cases():
  g = finer.grade_response(answer(GOLD.upper()), GOLD)
  assert (g.reward, g.acc, g.feedback, g.info["all_correct"]) == (1.0, 1.0, "", 1)
  half = "DebtInstrumentFaceAmount,Nope,Revenues,Nope"
  g = finer.grade_response(answer(half), GOLD)
  assert (g.reward, g.acc) == (0.0, 0.5)
  assert g.feedback.endswith(f"The correct tags are {GOLD}.") and g.feedback.startswith("Some of your tags")
  assert finer.grade_response(answer(half), GOLD, partial_credit=True).reward == 0.5
  g = finer.grade_response(answer("A,B,C,D"), GOLD)
  assert (g.reward, g.acc) == (0.0, 0.0) and g.feedback.startswith("None of your tags")
  g = finer.grade_response("I forgot the tags", GOLD)
  assert g.feedback == finer.FORMAT_MESSAGE and g.info["incorrect_format"] == 1
  # Truncation wins, even over a correct answer; the score is unchanged.
  g = finer.grade_response(answer(GOLD), GOLD, truncated=True)
  assert (g.reward, g.feedback) == (1.0, finer.TRUNCATED_MESSAGE)
  g = finer.grade_response("thinking forever", GOLD, truncated=True)
  assert g.feedback == finer.TRUNCATED_MESSAGE and g.info["truncated_and_missing_answer"] == 1


def test_hostile_responses_never_raise():
  for response in (None, "", "<answer>" * 100000, "x" * (1 << 20), answer("__import__('os').system('x')," * 5)):
    g = finer.grade_response(response, GOLD)
    assert 0.0 <= g.reward <= 1.0 and len(g.feedback) <= base.FEEDBACK_CAP


def test_example_from_rows():
  ex = finer.example_from_row({"context": "CTX 1. What is best tag", "target": GOLD}, 3, "test")
  assert ex.id == "finer-test-3" and ex.meta["gold"] == GOLD
  assert "### Question:\nCTX 1. What is best tag" in ex.prompt_text and "<answer>" in ex.prompt_text
  with pytest.raises(ValueError, match="gold tags"):
    finer.example_from_row({"context": "c", "target": ""}, 0, "test")
  with pytest.raises(ValueError, match="neither"):
    finer.example_from_row({"question": "c"}, 0, "test")


@pytest.fixture(scope="module")
def val_rows(shared_dir):
  path = shared_dir / "data" / "finer" / "finer_val_batched_500_samples.jsonl"
  if not path.exists():
    pytest.skip(f"FiNER val file not present at {path}")
  return path, [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_real_rows_gold_scores_one_and_shuffles_score_positionwise(val_rows):
  path, rows = val_rows
  task = base.make("finer", test_path=str(path))
  examples = list(task.prompts("test"))
  assert len(examples) == len(rows) == 500
  rng = random.Random(0)
  for ex, row in zip(examples[:100], rows):
    assert ex.meta["gold"] == row["target"]
    assert task.grade(ex, answer(row["target"])).reward == 1.0
    gold = row["target"].split(",")
    shuffled = gold[:]
    rng.shuffle(shuffled)
    expected = sum(a.lower() == b.lower() for a, b in zip(shuffled, gold)) / len(gold)
    g = task.grade(ex, answer(",".join(shuffled)))
    assert g.acc == pytest.approx(expected)
    assert g.reward == (1.0 if expected == 1.0 else 0.0)
    dropped = ",".join(shuffled[:2])  # missing tags count as wrong
    expected_dropped = sum(a.lower() == b.lower() for a, b in zip(shuffled[:2], gold)) / len(gold)
    assert task.grade(ex, answer(dropped)).acc == pytest.approx(expected_dropped)


def test_linear_scanners_match_the_reference_regexes():
  """strip_reasoning / last_python_block are str.find scans; they must agree with the reference regexes."""
  import re
  from resd_jax.tasks.text_utils import last_python_block
  think_block = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
  think_prefix = re.compile(r"^.*?</think>\s*", re.DOTALL)
  fence = re.compile(r"```(?:python)?(.*?)```", re.DOTALL)
  tokens = ["<think>", "</think>", " ", "\n", "a", "```", "python", "```python", "\u2003", "<answer>", "</answer>"]
  rng = random.Random(1)
  for _ in range(5000):
    t = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 12)))
    assert strip_reasoning(t) == think_prefix.sub("", think_block.sub("", t), count=1), repr(t)
    blocks = fence.findall(t)
    assert last_python_block(t) == ((blocks[-1].strip() or None) if blocks else None), repr(t)
    answers = re.findall(r"<answer>(.*?)</answer>", strip_reasoning(t), re.DOTALL)
    assert finer.extract_answer(t) == (answers[-1].strip() if answers else None), repr(t)


def test_pathological_inputs_are_fast():
  import time
  t0 = time.perf_counter()
  for text in ("<answer>" * 100000, "<think>" * 100000, "```" + "x" * (1 << 20)):
    finer.grade_response(text, GOLD)
  assert time.perf_counter() - t0 < 2.0
