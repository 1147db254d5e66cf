"""Configuration of the context engine (playbook, reflection, curation, pruning), validated at construction."""
from __future__ import annotations

import dataclasses

from resd_jax.context.prune import METHODS

PRUNE_EVERY_COUNTS = ("started", "completed")


def require_positive(cfg: object, prefix: str, names: tuple[str, ...]) -> None:
  """Config validation: each named field must be > 0; the error names the field and its value."""
  for name in names:
    if getattr(cfg, name) <= 0:
      raise ValueError(f"{prefix}.{name} must be > 0, got {getattr(cfg, name)}")


@dataclasses.dataclass(frozen=True)
class ContextConfig:
  """Knobs of `ContextUpdater`. Defaults follow the paper; extensions are off.

  prune_method: staleness | prioritized | reset.
  prune_every: F, prune every F updates without a cap (0 disables the frequency trigger).
  prune_every_counts: which updates the F-trigger counts, at the start of an update: ``started`` (this one
    included: prunes at the start of updates F, 2F, ...) or ``completed`` (the reference code: updates F+1,
    2F+1, ..., i.e. after every F completed updates).
  prune_keep_recent_harmful: staleness pruning keeps harmful entries tagged within the last update (ours);
    False removes every harmful entry (the reference).
  max_entries: M_max, prune with this cap whenever the playbook grows beyond it (also after curation).
  max_playbook_tokens: budget of the rendered playbook; with ``budget_eviction`` the lowest-value
    (helpful - harmful) entries are evicted beyond it (our extension; the reference has no such rule and only
    the teacher prompt's length budget shrinks what the teacher sees).
  curation_extensions: accept UPDATE / MERGE / DELETE operations besides ADD.
  reflect / tag_successes / curate: switch whole phases off (ablations without reflection or playbook).
  max_*_chars: caps on every piece of text that enters a prompt or the playbook.
  """
  prune_method: str = "staleness"
  prune_every: int = 4
  prune_every_counts: str = "started"
  prune_keep_recent_harmful: bool = True
  max_entries: int = 200
  max_playbook_tokens: int = 4096
  budget_eviction: bool = True
  curation_extensions: bool = False
  reflect: bool = True
  tag_successes: bool = True
  curate: bool = True
  max_entry_chars: int = 400
  max_reflection_chars: int = 3000
  max_attempt_chars: int = 6000
  max_feedback_chars: int = 2000
  max_prompt_chars: int = 24000
  max_ops_per_call: int = 16
  max_tags_per_call: int = 256

  def __post_init__(self):
    if self.prune_method not in METHODS:
      raise ValueError(f"context.prune_method={self.prune_method!r} is not one of {METHODS}")
    if self.prune_every_counts not in PRUNE_EVERY_COUNTS:
      raise ValueError(f"context.prune_every_counts={self.prune_every_counts!r} is not one of {PRUNE_EVERY_COUNTS}")
    if self.prune_every < 0:
      raise ValueError(f"context.prune_every must be >= 0 (0 disables it), got {self.prune_every}")
    require_positive(self, "context", (
      "max_entries", "max_playbook_tokens", "max_entry_chars", "max_reflection_chars", "max_attempt_chars",
      "max_feedback_chars", "max_prompt_chars", "max_ops_per_call", "max_tags_per_call"))
