"""Every prompt the context engine sends, in one place. All wording is ours.

Templates use `<<slot>>` markers filled by `fill`, in a single pass, so model-written text that happens to
contain a marker is never expanded. Bump `PROMPTS_VERSION` whenever any text here changes: it is logged with
every run so results can be traced to the exact prompts.
"""
from __future__ import annotations

import re

PROMPTS_VERSION = "resd-jax-prompts-1"

_SLOT = re.compile(r"<<(\w+)>>")


def fill(template: str, **slots: str) -> str:
  """Replace each `<<name>>` with `slots[name]`; a missing slot is a programming error (KeyError)."""
  return _SLOT.sub(lambda m: slots[m.group(1)], template)


EMPTY_PLAYBOOK = "(the playbook is empty so far)"
NO_FEEDBACK = "(the environment returned no feedback)"

REFLECTOR_SYSTEM = (
  "You review failed attempts at tasks and explain precisely why they failed, so the next attempt succeeds. "
  "You answer with a single JSON object and nothing else."
)

REFLECTOR_USER = """A previous attempt at the task below did not succeed. Study it together with the feedback \
from the environment and the current playbook of lessons, then diagnose the failure.

### Task
<<prompt>>

### The attempt (final answer only)
<<attempt>>

### Feedback from the environment
<<feedback>>

### Current playbook
<<playbook>>

Answer with one JSON object with exactly these keys:
{
  "reasoning": "your step-by-step analysis of the attempt",
  "error_identification": "what exactly went wrong",
  "root_cause_analysis": "why it went wrong: which idea or assumption was mistaken",
  "correct_approach": "what should have been done instead",
  "key_insight": "one general lesson that would prevent this class of mistake",
  "bullet_tags": [{"id": "<playbook entry id>", "tag": "helpful" | "harmful" | "neutral"}]
}
Tag only playbook entries that actually appear above, by their id in square brackets: "helpful" if the entry \
pointed the right way, "harmful" if it misled the attempt, "neutral" if it did not matter. Use an empty list \
when the playbook is empty."""

# The placeholder texts of the answer schemas above and below (tests check that each occurs in its template).
# Small models often copy them back verbatim instead of answering; the parsers drop such echoes and count them.
TEMPLATE_PLACEHOLDERS = (
  "your step-by-step analysis of the attempt",
  "what exactly went wrong",
  "why it went wrong: which idea or assumption was mistaken",
  "what should have been done instead",
  "one general lesson that would prevent this class of mistake",
  "<playbook entry id>",
  "why these operations",
  "<one of the sections below>",
  "<the lesson>",
  "<improved lesson>",
  "<combined lesson>",
)

TAGGER_SYSTEM = (
  "You judge which lessons in a playbook contributed to a successful attempt. "
  "You answer with a single JSON object and nothing else."
)

TAGGER_USER = """The attempt below solved the task. Decide which playbook entries helped.

### Task
<<prompt>>

### The successful attempt (final answer only)
<<attempt>>

### Current playbook
<<playbook>>

Answer with one JSON object:
{"bullet_tags": [{"id": "<playbook entry id>", "tag": "helpful" | "harmful" | "neutral"}]}
Only use ids that appear in square brackets above."""

CURATOR_SYSTEM = (
  "You maintain a playbook of short, reusable lessons for solving a family of tasks. You add only lessons "
  "that are new, specific and actionable. You answer with a single JSON object and nothing else."
)

CURATOR_USER = """Update the playbook using the diagnosis of a failed attempt.

### Playbook statistics
<<stats>>

### Diagnosis of the failed attempt
<<reflection>>

### Current playbook
<<playbook>>

### The task that was attempted
<<prompt>>

Propose operations that capture what the diagnosis teaches and that the playbook does not already say. \
Each new entry is one self-contained sentence. Answer with one JSON object:
{
  "reasoning": "why these operations",
  "operations": [{"type": "ADD", "section": "<one of the sections below>", "content": "<the lesson>"}]
}
Sections: <<sections>>.<<extensions>>
Return an empty "operations" list when nothing new was learned."""

CURATOR_EXTENSIONS = """
You may also edit existing entries by id:
{"type": "UPDATE", "id": "<id>", "content": "<improved lesson>"} rewrites an entry;
{"type": "MERGE", "ids": ["<id>", "<id>", ...], "content": "<combined lesson>"} replaces overlapping entries \
with one;
{"type": "DELETE", "id": "<id>"} removes an entry that is wrong or redundant."""

# ----- teacher context --------------------------------------------------------------------------------------
# Section headings of the teacher's user message, per template. The task prompt always comes first, verbatim.
TEACHER_HEADINGS = {
  "resd": {
    "playbook": "### Lessons learned so far (playbook)",
    "attempt": "### Your previous attempt",
    "feedback": "### Feedback on that attempt",
    "reflection": "### Reflection on what went wrong",
    "solution": "### A solution that succeeded",
  },
  "sdpo": {
    "solution": "### A correct solution",
    "feedback": "### Feedback on your earlier attempt",
  },
}

TEACHER_CLOSING = {
  "resd": "Using what is above where it applies, solve the original task again from the beginning.",
  "sdpo": "Correctly solve the original task.",
}

REFLECTION_LABELS = (
  ("error_identification", "Error"),
  ("root_cause_analysis", "Root cause"),
  ("correct_approach", "Correct approach"),
  ("key_insight", "Key insight"),
)
