"""SDPO: the teacher sees only the environment feedback and a known successful solution (no playbook, attempt or
reflection, so no reflection, tagging or curation calls). SDPO+ss (`algorithm="sdpo_ss"`) lets a sample's own
success be its solution, i.e. it distils its own successes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from resd_jax.algorithms.base import Algorithm, register


class SDPO(Algorithm):
  name = "sdpo"
  self_success = False

  def context_config(self, run: Any) -> Any:  # the solution buffer only
    return dataclasses.replace(run.context_config(), reflect=False, tag_successes=False, curate=False)

  def teacher_context(self, run: Any) -> Any:
    from resd_jax.context import TeacherContextConfig
    x = run.context
    return TeacherContextConfig.sdpo(self_success=self.self_success, use_buffer=x.sdpo_solution_buffer,
                                     use_feedback=x.feedback, use_solution=x.solution_buffer,
                                     max_prompt_tokens=run.teacher_context_budget())


class SDPOSelfSuccess(SDPO):
  name = "sdpo_ss"
  self_success = True


register(SDPO())
register(SDPOSelfSuccess())
