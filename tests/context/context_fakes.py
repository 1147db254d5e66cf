"""Shared test doubles: examples, graded samples, a scripted generate_text."""
from __future__ import annotations

import json

from resd_jax.context import prompts
from resd_jax.context.types import GradedSample
from resd_jax.tasks.base import Example, Grade


def example(eid: str, prompt: str = "", system: str | None = None) -> Example:
  msgs = ([{"role": "system", "content": system}] if system else []) + [
    {"role": "user", "content": prompt or f"Solve task {eid}."}]
  return Example(eid, tuple(msgs), {})


def sample(eid: str, ok: bool, response: str = "", feedback: str = "", **kw) -> GradedSample:
  response = response or f"<think>thinking about {eid}</think>answer for {eid}"
  return GradedSample(example(eid, **kw), response, [1, 2, 3], None,
                      Grade(1.0 if ok else 0.0, 1.0 if ok else 0.0, feedback), False)


def role_of(conv: list[dict]) -> str:
  system = conv[0]["content"]
  return {prompts.REFLECTOR_SYSTEM: "reflect", prompts.TAGGER_SYSTEM: "tag",
          prompts.CURATOR_SYSTEM: "curate"}[system]


class ScriptedGenerate:
  """generate_text double: answers by role with `script[role](conv)`, records every call."""

  def __init__(self, **script):
    self.script = script
    self.calls: list[list[list[dict]]] = []

  def __call__(self, convs):
    self.calls.append(convs)
    return [self.script[role_of(c)](c) for c in convs]


def reflection_json(error: str, tags=()) -> str:
  return json.dumps({"reasoning": "because", "error_identification": error, "root_cause_analysis": "rc",
                     "correct_approach": "ca", "key_insight": "ki",
                     "bullet_tags": [{"id": i, "tag": t} for i, t in tags]})


def ops_json(*contents, section="common_mistakes_to_avoid") -> str:
  return "```json\n" + json.dumps({"reasoning": "r", "operations": [
    {"type": "ADD", "section": section, "content": c} for c in contents]}) + "\n```"


class ByteChatTokenizer:
  """A stand-in chat tokenizer: `<role>: content` lines as UTF-8 bytes (+3 so 0..2 stay special)."""
  pad_token_id = 0
  eos_token_id = 1

  def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True, **kw):
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    text += "assistant: " if add_generation_prompt else ""
    return [b + 3 for b in text.encode("utf-8")] if tokenize else text
