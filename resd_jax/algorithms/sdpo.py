"""SDPO baseline in the RESD loop: the teacher sees only the environment feedback and a known successful
solution (no playbook, attempt or reflection; no reflection / curation calls). `+ss` (`self_success=True`,
`algorithm="sdpo_ss"`) lets a sample's own success be its solution, i.e. distils its own successes.
"""
from __future__ import annotations

import pathlib
from typing import Any


def train(cfg: Any, workdir: str | pathlib.Path, *, self_success: bool = False):
  """SDPO (or SDPO+ss) with N = `rollout.samples_per_prompt` samples per prompt."""
  from resd_jax.algorithms.resd import train as run
  cfg.algorithm = "sdpo_ss" if self_success else "sdpo"
  return run(cfg, workdir)
