"""`ContextUpdater`: one context update per inner step (docs/DESIGN.md §1, step 3).

Order within `update`:
1. bump the playbook's update count; prune if a trigger fires (every `prune_every` updates without a cap,
   counting this update or only the completed ones per `prune_every_counts`, or above `max_entries` with
   the cap);
2. one generation call for all reflections (each failed sample) and success tags (first success per example
   id); tags are applied in sample order, reflections first;
3. one generation call for curation (first failed sample per example id that has a diagnosis); every curator
   sees the same snapshot of the playbook; operations are applied in sample order;
4. prune with the cap if curation pushed the playbook over `max_entries`; then, with `budget_eviction`,
   evict lowest-value entries while the rendered playbook exceeds `max_playbook_tokens`;
5. the solution buffer stores every successful response (the latest wins).

Generation is injected: `generate_text(conversations) -> texts`, one text per conversation, either one
callable for every phase (reflections and tags then share one call) or a `resd_jax.roles.RoleGenerators`
with one generator per role (reflector, tagger, curator: reflections and tags in separate calls). A
generator's own counters (`take_metrics`) join the metrics. Bad model output never raises; it is counted in
the returned metrics (name -> (sum, count), under `context/`). Output whose reasoning block never closes
(`<think>` without `</think>`: cut inside its reasoning) is no answer: counted and read as "".
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

from resd_jax.context import prompts
from resd_jax.context.config import ContextConfig
from resd_jax.context.curation import apply_operations, curation_messages, parse_operations, stats_text
from resd_jax.context.playbook import Playbook
from resd_jax.context.prune import prune
from resd_jax.context.reflection import (apply_tags, parse_reflection, parse_success_tags, reflection_messages,
                                         tagging_messages)
from resd_jax.context.rng import SeededRng
from resd_jax.context.solution_buffer import SolutionBuffer
from resd_jax.context.text import approx_token_count
from resd_jax.context.types import GradedSample, Metrics
from resd_jax.roles.generators import take_metrics

GenerateText = Callable[[list[list[dict[str, str]]]], list[str]]
# One callable for every phase, or anything indexable by role name ("reflector", "tagger", "curator").
Generators = Any


@dataclasses.dataclass
class UpdateResult:
  reflections: list[str]                # per sample: rendered diagnosis for the teacher, "" when none
  solutions_before: list[str | None]    # per sample: the buffered solution known before this update
  metrics: Metrics


class ContextUpdater:
  """Owns the playbook, the solution buffer and the seeded RNG; `state_dict` captures all three."""

  def __init__(self, config: ContextConfig, seed: int, count_tokens: Callable[[str], int] = approx_token_count):
    if not isinstance(config, ContextConfig):
      raise TypeError(f"ContextUpdater needs a ContextConfig, got {type(config).__name__}")
    self.config = config
    self.count_tokens = count_tokens
    self.playbook = Playbook()
    self.buffer = SolutionBuffer()
    self.rng = SeededRng(int(seed), 0)

  # ----- one update ---------------------------------------------------------------------------------------
  def update(self, samples: Sequence[GradedSample], generate_text: Generators, step: int) -> UpdateResult:
    """One context update; all or nothing: if `generate_text` raises, the state is left as it was."""
    saved = self.state_dict()
    try:
      return self._update(samples, generate_text, step)
    except BaseException:
      self.load_state_dict(saved)
      raise

  def _update(self, samples: Sequence[GradedSample], generate_text: Generators, step: int) -> UpdateResult:
    cfg, pb, m = self.config, self.playbook, Metrics()
    pb.update_count += 1
    before = [self.buffer.get(s.example.id) for s in samples]

    counted = pb.update_count if cfg.prune_every_counts == "started" else pb.update_count - 1
    freq = cfg.prune_every > 0 and counted > 0 and counted % cfg.prune_every == 0
    over = len(pb) > cfg.max_entries
    if freq or over:
      self._prune(m, cfg.max_entries if over else None, "pre")

    reflections = [""] * len(samples)
    failed = [i for i, s in enumerate(samples) if not s.grade.success] if cfg.reflect else []
    succeeded = (_first_per_id(samples, lambda i: samples[i].grade.success)
                 if cfg.tag_successes and len(pb) else [])
    snapshot = pb.render()
    convs = [reflection_messages(samples[i], snapshot, cfg) for i in failed]
    tag_convs = [tagging_messages(samples[i], snapshot, cfg) for i in succeeded]
    if callable(generate_text):  # one generator for every phase: one call
      outs = self._generate(generate_text, convs + tag_convs, m)
    else:
      outs = (self._generate(generate_text["reflector"], convs, m)
              + self._generate(generate_text["tagger"], tag_convs, m))
    for i, text in zip(failed, outs[: len(failed)]):
      refl = parse_reflection(text, cfg, m)
      if refl is not None:
        apply_tags(pb, refl.tags, m, "reflect")
        reflections[i] = refl.render(cfg.max_reflection_chars)
    for text in outs[len(failed):]:
      apply_tags(pb, parse_success_tags(text, cfg, m), m, "success_tag")

    if cfg.curate:
      failed_ids = {samples[i].example.id for i in failed}
      curate = _first_per_id(samples, lambda i: bool(reflections[i]))
      m.add("curate/skipped_no_reflection", len(failed_ids) - len(curate), len(failed_ids))
      snapshot, stats = pb.render(), stats_text(pb)
      curator = generate_text if callable(generate_text) else generate_text["curator"]
      outs = self._generate(curator, [curation_messages(samples[i], reflections[i], snapshot, stats, cfg)
                                      for i in curate], m)
      for text in outs:
        apply_operations(pb, parse_operations(text, cfg, m), step, cfg, m)

    if len(pb) > cfg.max_entries:
      self._prune(m, cfg.max_entries, "post")
    self._fit_budget(m)

    for s in samples:
      if s.grade.success:
        self.buffer.put(s.example.id, s.response_text, step)
    m.add("playbook/size", len(pb))
    m.add("playbook/tokens", self.count_tokens(pb.render()))
    m.add("solution_buffer/size", len(self.buffer))
    out = Metrics()
    out.merge(m, prefix="context/")
    return UpdateResult(reflections, before, out)

  # ----- helpers ------------------------------------------------------------------------------------------
  def _generate(self, generate_text: GenerateText, convs: list, m: Metrics) -> list[str]:
    if not convs:
      return []
    outs = list(generate_text(convs))
    m.merge(take_metrics(generate_text))
    if len(outs) != len(convs):
      raise ValueError(f"generate_text returned {len(outs)} texts for {len(convs)} conversations; it must return "
                       "exactly one text per conversation")
    m.add("generate/non_text_outputs", sum(not isinstance(o, str) for o in outs), len(outs))
    outs = [o if isinstance(o, str) else "" for o in outs]
    unclosed = [o.rfind("<think>") > o.rfind("</think>") for o in outs]  # cut inside the reasoning: no answer
    m.add("generate/unclosed_reasoning", sum(unclosed), len(outs))
    return ["" if u else o for o, u in zip(outs, unclosed)]

  def _prune(self, m: Metrics, cap: int | None, phase: str) -> None:
    res = prune(self.playbook, self.config.prune_method, cap, self.rng.draw("prune"),
                keep_recent_harmful=self.config.prune_keep_recent_harmful)
    m.add(f"prune/{phase}_triggered", 1)
    m.add("prune/removed", len(res.removed))
    for cat, n in res.by_category.items():
      m.add(f"prune/removed_{cat}", n)

  def _fit_budget(self, m: Metrics) -> None:
    """Evict lowest-value entries until the rendered playbook fits `max_playbook_tokens` (if `budget_eviction`)."""
    pb, evicted = self.playbook, 0
    while self.config.budget_eviction and len(pb) and self.count_tokens(pb.render()) > self.config.max_playbook_tokens:
      pb.remove([pb.lowest_value_order()[0].id])
      evicted += 1
    m.add("playbook/budget_evicted", evicted)

  # ----- state --------------------------------------------------------------------------------------------
  def state_dict(self) -> dict[str, Any]:
    return {"playbook": self.playbook.to_dict(), "solution_buffer": self.buffer.to_dict(),
            "rng": self.rng.to_dict(), "prompts_version": prompts.PROMPTS_VERSION}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    missing = {"playbook", "solution_buffer", "rng"} - set(state)
    if missing:
      raise ValueError(f"context state is missing {sorted(missing)}; pass what ContextUpdater.state_dict wrote")
    self.playbook = Playbook.from_dict(state["playbook"])
    self.buffer = SolutionBuffer.from_dict(state["solution_buffer"])
    self.rng = SeededRng.from_dict(state["rng"])

  def to_json(self) -> str:
    return json.dumps(self.state_dict(), ensure_ascii=False, sort_keys=True)

  def load_json(self, text: str) -> None:
    self.load_state_dict(json.loads(text))


def _first_per_id(samples: Sequence[GradedSample], keep: Callable[[int], bool]) -> list[int]:
  """Indices of the first sample of each example id whose index satisfies `keep`, in sample order."""
  seen, out = set(), []
  for i, s in enumerate(samples):
    if keep(i) and s.example.id not in seen:
      seen.add(s.example.id)
      out.append(i)
  return out
