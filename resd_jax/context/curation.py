"""Curation: turn a diagnosis into playbook operations and apply them.

ADD is the paper's behaviour. UPDATE (rewrite content), MERGE (several ids -> one new entry, counters summed)
and DELETE are extensions accepted only when `ContextConfig.curation_extensions` is on; otherwise they are
skipped and counted. Every malformed operation is skipped and counted, never raised.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from resd_jax.context import prompts
from resd_jax.context.config import ContextConfig
from resd_jax.context.parsing import as_text, extract_json_object, is_template_echo
from resd_jax.context.playbook import SECTION_KEYS, Entry, Playbook, normalize_section
from resd_jax.context.text import clip_middle, one_line, strip_reasoning
from resd_jax.context.types import GradedSample, Metrics

OP_TYPES = ("ADD", "UPDATE", "MERGE", "DELETE")


@dataclasses.dataclass
class Operation:
  type: str
  section: str = "others"
  content: str = ""
  ids: tuple[str, ...] = ()


def stats_text(pb: Playbook) -> str:
  st = pb.stats()
  lines = [f"total entries: {st['total']}; high-performing: {st['high_performing']}; "
           f"problematic: {st['problematic']}; unused: {st['unused']}"]
  for key, s in st["sections"].items():
    lines.append(f"{key}: {s['count']} entries (helpful {s['helpful']}, harmful {s['harmful']})")
  return "\n".join(lines)


def curation_messages(sample: GradedSample, reflection_text: str, playbook_text: str, stats: str,
                      cfg: ContextConfig) -> list[dict[str, str]]:
  user = prompts.fill(
    prompts.CURATOR_USER, stats=stats, reflection=reflection_text,
    playbook=playbook_text or prompts.EMPTY_PLAYBOOK,
    prompt=clip_middle(sample.example.prompt_text, cfg.max_prompt_chars), sections=", ".join(SECTION_KEYS),
    extensions=prompts.CURATOR_EXTENSIONS if cfg.curation_extensions else "")
  return [{"role": "system", "content": prompts.CURATOR_SYSTEM}, {"role": "user", "content": user}]


def _ids(item: dict[str, Any]) -> tuple[str, ...]:
  raw = item.get("ids", item.get("id"))
  if isinstance(raw, (str, int)) and not isinstance(raw, bool):
    raw = [raw]
  if not isinstance(raw, list):
    return ()
  return tuple(str(i).strip()[:64] for i in raw if isinstance(i, (str, int)) and not isinstance(i, bool))


def parse_operations(text: str, cfg: ContextConfig, metrics: Metrics) -> list[Operation]:
  """Operations from curator output; malformed items are skipped and counted."""
  raw = strip_reasoning(text) if isinstance(text, str) else ""
  found = extract_json_object(raw, prefer_keys=("operations",))
  metrics.add("curate/cleaned_chars", found.cleaned)  # lone surrogates, controls, bidi overrides, ... fixed
  ops_value = found.obj.get("operations") if found.obj is not None else None
  metrics.add("curate/parse_failed", not isinstance(ops_value, list))
  if not isinstance(ops_value, list):
    return []
  ops: list[Operation] = []
  skipped = max(0, len(ops_value) - cfg.max_ops_per_call)
  for item in ops_value[: cfg.max_ops_per_call]:
    op_type = item.get("type") if isinstance(item, dict) else None
    op_type = op_type.strip().upper() if isinstance(op_type, str) else None
    if op_type not in OP_TYPES:
      skipped += 1
      continue
    content = as_text(item.get("content", ""), cfg.max_entry_chars * 4)
    echo = is_template_echo(content)
    metrics.add("curate/template_echo_ops", echo)  # the schema's "<the lesson>" copied back is no lesson
    if echo:
      skipped += 1
      continue
    op = Operation(op_type, normalize_section(item.get("section")), one_line(content or "", cfg.max_entry_chars),
                   _ids(item))
    needs_content = op_type in ("ADD", "UPDATE")
    needs_ids = {"ADD": 0, "UPDATE": 1, "MERGE": 2, "DELETE": 1}[op_type]
    if (needs_content and not op.content) or len(op.ids) < needs_ids:
      skipped += 1
      continue
    ops.append(op)
  metrics.add("curate/invalid_ops", skipped, len(ops) + skipped)
  return ops


def apply_operations(pb: Playbook, ops: list[Operation], step: int, cfg: ContextConfig,
                     metrics: Metrics) -> None:
  """Apply `ops` in order to `pb` (in place). Unknown ids and disabled extensions are counted and skipped."""
  for op in ops:
    if op.type != "ADD" and not cfg.curation_extensions:
      metrics.add("curate/disabled_ops", 1)
      continue
    if op.type == "ADD":
      added = pb.add(op.section, op.content, step, cfg.max_entry_chars)
      metrics.add("curate/added", added is not None)
      continue
    known = [pb.get(i) for i in op.ids]
    found: list[Entry] = [e for e in known if e is not None]
    metrics.add("curate/unknown_ids", len(known) - len(found), len(known))
    if op.type == "UPDATE" and found:
      found[0].content = op.content
      metrics.add("curate/updated", 1)
    elif op.type == "DELETE" and found:
      metrics.add("curate/deleted", pb.remove([e.id for e in found]))
    elif op.type == "MERGE" and len({e.id for e in found}) >= 2:
      _merge(pb, list({e.id: e for e in found}.values()), op, step, cfg)
      metrics.add("curate/merged", 1)
    else:
      metrics.add("curate/no_effect_ops", 1)


def _merge(pb: Playbook, parts: list[Entry], op: Operation, step: int, cfg: ContextConfig) -> None:
  """Replace `parts` by one new entry (fresh id, in the first part's section, at the first part's place)."""
  content = op.content or parts[0].content
  first_index = pb.entries.index(parts[0])
  merged = pb.add(parts[0].section, content, step, cfg.max_entry_chars)
  assert merged is not None  # content is non-empty: the first part had content
  pb.entries.pop()  # re-insert at the first part's position
  merged.helpful = sum(e.helpful for e in parts)
  merged.harmful = sum(e.harmful for e in parts)
  merged.last_tagged = max(e.last_tagged for e in parts)
  pb.entries.insert(first_index, merged)
  pb.remove([e.id for e in parts])
