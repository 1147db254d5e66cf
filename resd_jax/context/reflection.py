"""Reflection on failed attempts and tagging of successful ones: prompts out, parsed diagnoses and tags in."""
from __future__ import annotations

import dataclasses

from resd_jax.context import prompts
from resd_jax.context.config import ContextConfig
from resd_jax.context.parsing import (as_text, extract_json_object, is_template_echo, parse_tag_list,
                                      recover_tags)
from resd_jax.context.text import clip_middle, strip_reasoning
from resd_jax.context.types import GradedSample, Metrics

REFLECTION_KEYS = ("reasoning", "error_identification", "root_cause_analysis", "correct_approach",
                   "key_insight", "bullet_tags")


@dataclasses.dataclass
class Reflection:
  """A parsed diagnosis. `fields` holds the text keys that parsed; `tags` the valid (id, tag) pairs."""
  fields: dict[str, str]
  tags: list[tuple[str, str]]

  def render(self, max_chars: int) -> str:
    """The diagnosis as the teacher and the curator read it (reasoning left out), "" when nothing parsed."""
    lines = [f"{label}: {self.fields[key]}" for key, label in prompts.REFLECTION_LABELS if self.fields.get(key)]
    return clip_middle("\n".join(lines), max_chars)


def _attempt_text(sample: GradedSample, cfg: ContextConfig) -> str:
  return clip_middle(strip_reasoning(sample.response_text).strip(), cfg.max_attempt_chars) or "(empty response)"


def _prompt_text(sample: GradedSample, cfg: ContextConfig) -> str:
  return clip_middle(sample.example.prompt_text, cfg.max_prompt_chars)


def reflection_messages(sample: GradedSample, playbook_text: str, cfg: ContextConfig) -> list[dict[str, str]]:
  feedback = clip_middle(sample.grade.feedback.strip(), cfg.max_feedback_chars) or prompts.NO_FEEDBACK
  user = prompts.fill(prompts.REFLECTOR_USER, prompt=_prompt_text(sample, cfg),
                      attempt=_attempt_text(sample, cfg), feedback=feedback,
                      playbook=playbook_text or prompts.EMPTY_PLAYBOOK)
  return [{"role": "system", "content": prompts.REFLECTOR_SYSTEM}, {"role": "user", "content": user}]


def tagging_messages(sample: GradedSample, playbook_text: str, cfg: ContextConfig) -> list[dict[str, str]]:
  user = prompts.fill(prompts.TAGGER_USER, prompt=_prompt_text(sample, cfg), attempt=_attempt_text(sample, cfg),
                      playbook=playbook_text or prompts.EMPTY_PLAYBOOK)
  return [{"role": "system", "content": prompts.TAGGER_SYSTEM}, {"role": "user", "content": user}]


def _tags(obj, raw: str, cfg: ContextConfig, metrics: Metrics, prefix: str) -> list[tuple[str, str]]:
  """Tag pairs from a parsed object, or from the regex fallback when the object or its list is unusable."""
  value = obj.get("bullet_tags") if obj is not None else None
  pairs, invalid = parse_tag_list(value, cfg.max_tags_per_call)
  if obj is None or not isinstance(value, (list, dict)):
    pairs, _ = parse_tag_list([{"id": i, "tag": t} for i, t in recover_tags(raw)], cfg.max_tags_per_call)
    metrics.add(f"{prefix}/tags_recovered_by_fallback", len(pairs) > 0)
  metrics.add(f"{prefix}/invalid_tag_items", invalid, len(pairs) + invalid)
  return pairs


def parse_reflection(text: str, cfg: ContextConfig, metrics: Metrics) -> Reflection | None:
  """A `Reflection` from model output, or None when no diagnosis could be read (counted, never raised).

  Tags recovered by the fallback still come back (in a Reflection with no fields) so counters update. Fields
  that copy the answer schema's placeholder text back are dropped (counted in `reflect/template_echo_fields`).
  """
  raw = strip_reasoning(text) if isinstance(text, str) else ""
  found = extract_json_object(raw, prefer_keys=REFLECTION_KEYS)
  metrics.add("reflect/parse_failed", found.obj is None)
  metrics.add("reflect/cleaned_chars", found.cleaned)  # lone surrogates, controls, bidi overrides, ... fixed
  fields: dict[str, str] = {}
  if found.obj is not None:
    for key in REFLECTION_KEYS[:-1]:
      if key not in found.obj:
        continue
      value = as_text(found.obj[key], cfg.max_reflection_chars)
      metrics.add("reflect/wrong_type_fields", value is None)
      echo = is_template_echo(value)
      metrics.add("reflect/template_echo_fields", echo)  # a copied schema placeholder is no diagnosis
      if value and not echo:
        fields[key] = value
  tags = _tags(found.obj, raw, cfg, metrics, "reflect")
  if not fields and not tags:
    return None
  return Reflection(fields, tags)


def parse_success_tags(text: str, cfg: ContextConfig, metrics: Metrics) -> list[tuple[str, str]]:
  raw = strip_reasoning(text) if isinstance(text, str) else ""
  found = extract_json_object(raw, prefer_keys=("bullet_tags",))
  metrics.add("success_tag/parse_failed", found.obj is None)
  metrics.add("success_tag/cleaned_chars", found.cleaned)
  return _tags(found.obj, raw, cfg, metrics, "success_tag")


def apply_tags(pb, pairs: list[tuple[str, str]], metrics: Metrics, prefix: str) -> None:
  """Update counters from (id, tag) pairs in order; ids not in the playbook are ignored and counted."""
  for entry_id, tag in pairs:
    known = pb.tag(entry_id, tag)
    metrics.add(f"{prefix}/unknown_ids", not known)
    if known:
      metrics.add(f"{prefix}/{tag}", 1, 0)
