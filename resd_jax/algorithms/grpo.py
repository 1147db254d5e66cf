"""GRPO baseline in the same loop: G samples per prompt, group-normalised advantages of the sparse reward, one
clipped-surrogate step per inner update; no context update and no teacher.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from resd_jax.algorithms.base import Algorithm, BatchKit, register


class GRPO(Algorithm):
  name = "grpo"
  updates_context = False

  def samples_per_prompt(self, run: Any) -> int:
    return run.grpo.group_size

  def context_config(self, run: Any) -> Any:  # kept (and checkpointed) but never run
    return dataclasses.replace(run.context_config(), reflect=False, tag_successes=False, curate=False)

  def task_options(self, run: Any) -> dict[str, Any]:
    return {"partial_credit": True} if run.grpo.partial_credit else {}

  def make_step(self, graphdef: Any, step_cfg: Any, mesh: Any, rules: Any) -> Any:
    from resd_jax.train import step as step_lib
    return step_lib.make_grpo_step(graphdef, step_cfg, mesh, rules)

  def build_batch(self, exp: Any, result: Any, kit: BatchKit) -> Any:
    return exp.grpo_batch(kit)


register(GRPO())
