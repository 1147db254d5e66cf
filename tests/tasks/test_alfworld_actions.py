"""Action parsing from untrusted model replies (no ALFWorld install needed)."""
import pytest

from resd_jax.tasks.alfworld.actions import MAX_ACTION_CHARS, parse_action, strip_reasoning
from resd_jax.tasks.alfworld.prompts import episode_feedback, render_commands

ADMISSIBLE = ["go to fridge 1", "open fridge 1", "take apple 1 from countertop 1", "look"]


@pytest.mark.parametrize("reply, command", [
  ("go to fridge 1", "go to fridge 1"),
  ("I should open it.\nAction: open fridge 1", "open fridge 1"),
  ("Action: look\nThen maybe\nAction: Open Fridge 1.", "open fridge 1"),
  ("**Action:** `take apple 1 from countertop 1`", "take apple 1 from countertop 1"),
  ("<think>go to fridge 1 is wrong</think>\n> look", "look"),
  ("Plan:\n```\ngo to fridge 1\n```\ntrailing words", "go to fridge 1"),
  ("```text\nAction: open fridge 1\n```", "open fridge 1"),
  ("  \"GO   TO  FRIDGE 1\"  ", "go to fridge 1"),
])
def test_parse_picks_the_intended_command(reply, command):
  got = parse_action(reply, ADMISSIBLE)
  assert got.command == command
  assert got.well_formed and got.admissible


@pytest.mark.parametrize("reply", ["", "   \n\n", "<think>still thinking about the fridge", "Action:", None, 42])
def test_unusable_replies_are_format_failures(reply):
  got = parse_action(reply, ADMISSIBLE)
  assert got.command == "" and not got.well_formed and got.admissible is False


def test_inadmissible_command_is_kept_for_the_engine_and_bounded():
  got = parse_action("Action: fly to the moon", ADMISSIBLE)
  assert (got.command, got.well_formed, got.admissible) == ("fly to the moon", True, False)
  huge = parse_action("Action: " + "x" * 100_000)
  assert len(huge.command) == MAX_ACTION_CHARS and huge.admissible is None
  long_reply = "noise " * 50_000 + "\nAction: look"  # only the tail of a long reply is read
  assert parse_action(long_reply, ADMISSIBLE).command == "look"


def test_strip_reasoning():
  assert strip_reasoning("a</think>b</think> c") == " c"
  assert strip_reasoning("<think>open") is None
  assert strip_reasoning("plain") == "plain"


def test_prompt_helpers_bound_their_output():
  assert render_commands(["a", "b", "c"], limit=2) == "a, b, ... (1 more)"
  transcript = [(f"go to drawer {i}", "You arrive at drawer. " * 20) for i in range(200)]
  text = episode_feedback("put a mug in fridge", transcript, won=False, steps=50, max_steps=50, cap=1500)
  assert len(text) <= 1500 and "ran out of steps" in text and "go to drawer 199" in text
  assert "drawer 0\n" not in text
  assert episode_feedback("t", [], won=True, steps=7, max_steps=50) == "Task: t\nOutcome: success in 7 steps."
