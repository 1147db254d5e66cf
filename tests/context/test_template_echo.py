"""Copies of the answer schema's placeholder text are not diagnoses or lessons: dropped and counted.

The first case is what the embedded SmolLM2-135M-Instruct actually wrote for a reflection prompt (context
temperature 0.6, 256-token budget): it repeats the schema instead of filling it in.
"""
import json

import pytest

from resd_jax.context import prompts
from resd_jax.context.config import ContextConfig
from resd_jax.context.curation import parse_operations
from resd_jax.context.parsing import is_template_echo
from resd_jax.context.reflection import parse_reflection
from resd_jax.context.types import Metrics

CFG = ContextConfig()

SMOLLM2_SCHEMA_COPY = (
  '```\n\nYour answer should be a JSON object with the following keys:\n\n```json\n{\n'
  '  "reasoning": "your step-by-step analysis of the attempt",\n'
  '  "error_identification": "what exactly went wrong",\n'
  '  "root_cause_analysis": "why it went wrong: which idea or assumption was mistaken",\n'
  '  "correct_approach": "one general lesson that would prevent this class of mistake",\n'
  '  "bullet_tags": [\n    {\n      "id": "helpful" | "harmful" | "neutral",\n'
  '      "tag": "helpful" | "harmful" | "neutral",\n    },\n   ')


def test_every_placeholder_occurs_in_a_template():
  templates = prompts.REFLECTOR_USER + prompts.CURATOR_USER + prompts.CURATOR_EXTENSIONS + prompts.TAGGER_USER
  for placeholder in prompts.TEMPLATE_PLACEHOLDERS:
    assert placeholder in templates, placeholder


@pytest.mark.parametrize("value, echo", [
  ("what exactly went wrong", True),
  ("  What exactly   went wrong.", True),                 # case, spacing, trailing punctuation
  ('"<the lesson>"', True),
  ("the lesson", True),                                     # brackets dropped
  ("why it went wrong: which idea", True),                  # cut off after >= 8 characters
  ("your st", False),                                       # too short a prefix to call it a copy
  ("what", False),
  ("The factory never reads the second colour of the tape.", False),
  ("what exactly went wrong is that the END node is never reached", False),  # starts like one, says more
  ("", False), (None, False), (12, False), ("x" * 5000, False),
])
def test_is_template_echo(value, echo):
  assert is_template_echo(value) is echo


def test_smollm2_schema_copy_is_no_reflection():
  m = Metrics()
  assert parse_reflection(SMOLLM2_SCHEMA_COPY, CFG, m) is None
  assert m["reflect/parse_failed"] == (0.0, 1)           # the JSON itself was recovered ...
  assert m["reflect/template_echo_fields"] == (4.0, 4)   # ... but all four fields were copied placeholders


def test_real_fields_survive_next_to_echoed_ones():
  text = json.dumps({"reasoning": "your step-by-step analysis of the attempt",
                     "error_identification": "The program never reads the tape.",
                     "root_cause_analysis": "what should have been done instead",
                     "key_insight": "Start with a PULLER node.", "bullet_tags": []})
  m = Metrics()
  refl = parse_reflection(text, CFG, m)
  assert refl.fields == {"error_identification": "The program never reads the tape.",
                         "key_insight": "Start with a PULLER node."}
  assert refl.render(1000) == "Error: The program never reads the tape.\nKey insight: Start with a PULLER node."
  assert m["reflect/template_echo_fields"] == (2.0, 4)


def test_curator_placeholder_lessons_are_skipped_and_counted():
  text = json.dumps({"reasoning": "why these operations", "operations": [
    {"type": "ADD", "section": "<one of the sections below>", "content": "<the lesson>"},
    {"type": "ADD", "section": "common_mistakes_to_avoid", "content": "Fence the program as manufactoria."},
    {"type": "ADD", "section": "common_mistakes_to_avoid", "content": "<improved lesson>"}]})
  m = Metrics()
  ops = parse_operations(text, CFG, m)
  assert [op.content for op in ops] == ["Fence the program as manufactoria."]
  assert m["curate/template_echo_ops"] == (2.0, 3)
  assert m["curate/invalid_ops"] == (2.0, 3)
