"""RESD: the policy reflects on its failed samples, a playbook of lessons is tagged and curated across steps, and
the student is distilled towards the same model shown the enriched context (playbook, its own attempt, the
reflection, the feedback, a known solution). The context switches (`context.*`) are the paper's ablations.
"""
from __future__ import annotations

from typing import Any

from resd_jax.algorithms.base import Algorithm, register


class RESD(Algorithm):
  name = "resd"

  def used_roles(self, run: Any) -> tuple[str, ...]:
    x = run.context
    return (("reflector",) if x.reflection else ()) + (("tagger", "curator") if x.playbook else ())


register(RESD())
