"""Configuration of the context engine (playbook, reflection, curation, pruning), validated at construction."""
from __future__ import annotations

import dataclasses

from resd_jax.context.prune import METHODS


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
  max_entries: M_max, prune with this cap whenever the playbook grows beyond it (also after curation).
  max_playbook_tokens: budget of the rendered playbook; lowest-value entries are evicted beyond it.
  curation_extensions: accept UPDATE / MERGE / DELETE operations besides ADD.
  reflect / tag_successes / curate: switch whole phases off (ablations without reflection or playbook).
  max_*_chars: caps on every piece of text that enters a prompt or the playbook.
  """
  prune_method: str = "staleness"
  prune_every: int = 0
  max_entries: int = 100
  max_playbook_tokens: int = 4096
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
    if self.prune_every < 0:
      raise ValueError(f"context.prune_every must be >= 0 (0 disables it), got {self.prune_every}")
    require_positive(self, "context", (
      "max_entries", "max_playbook_tokens", "max_entry_chars", "max_reflection_chars", "max_attempt_chars",
      "max_feedback_chars", "max_prompt_chars", "max_ops_per_call", "max_tags_per_call"))
