"""An algorithm as the training loop sees it, and the registry that finds one by `cfg.algorithm`.

The loop (`resd_jax/loop/trainer.py`) does the same thing every inner update: collect experience (responses or
episodes: the task decides), optionally update the context engine, build one batch, run one jitted step. An
algorithm is the small object that fills in the differences:

  samples_per_prompt(run)   how many samples each prompt gets (N; GRPO: the group size G)
  context_config(run)       which context phases run (reflection, tagging, curation, pruning, solution buffer)
  updates_context           whether the context engine runs at all
  teacher_context(run)      what the teacher's prompt holds (playbook, attempt, reflection, feedback, solution)
  used_roles(run)           which context roles it calls (reflector, tagger, curator)
  task_options(run)         extra keyword arguments for the task's `from_run` (e.g. GRPO's partial credit)
  make_step(...)            the jitted optimizer step (self-distillation or clipped surrogate)
  build_batch(exp, ...)     the step's batch from the collected experience

A new algorithm is one file with a subclass and a `register(...)` call, plus its module name in `BUILTIN` (or
imported before the run starts, as `tests/algorithms/test_toy_algorithm.py` does).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

BUILTIN = ("resd_jax.algorithms.resd", "resd_jax.algorithms.sdpo", "resd_jax.algorithms.grpo")
_REGISTRY: dict[str, "Algorithm"] = {}


@dataclasses.dataclass
class BatchKit:
  """What a batch builder needs besides the experience: the run, tokenizer, batch shape, the teacher context
  settings, the current playbook, and the step's metrics accumulator."""
  run: Any                # run_config.RunConfig
  tokenizer: Any
  shape: Any              # train.batch.BatchShape
  teacher_context: Any    # context.TeacherContextConfig
  playbook: Any           # context.playbook.Playbook
  metrics: Any            # metrics.Metrics


class Algorithm:
  """Defaults: on-policy self-distillation with the context engine fully on. Subclasses override what differs."""
  name: str = ""
  updates_context: bool = True

  def samples_per_prompt(self, run: Any) -> int:
    return run.rollout.samples_per_prompt

  def context_config(self, run: Any) -> Any:
    return run.context_config()

  def teacher_context(self, run: Any) -> Any:
    from resd_jax.context import TeacherContextConfig
    x = run.context
    return TeacherContextConfig(use_playbook=x.playbook, use_attempt=x.attempt, use_reflection=x.reflection,
                                use_feedback=x.feedback, use_solution=x.solution_buffer,
                                max_prompt_tokens=run.teacher_context_budget())

  def used_roles(self, run: Any) -> tuple[str, ...]:
    return ()

  def task_options(self, run: Any) -> dict[str, Any]:
    return {}

  def make_step(self, graphdef: Any, step_cfg: Any, mesh: Any, rules: Any) -> Any:
    from resd_jax.train import step as step_lib
    return step_lib.make_sd_step(graphdef, step_cfg, mesh, rules)

  def build_batch(self, exp: Any, result: Any, kit: BatchKit) -> Any:
    """exp: the interaction's experience (`loop.single_turn.Responses` or `loop.multi_turn.Episodes`); result:
    the context update's `UpdateResult` (None when `updates_context` is False)."""
    return exp.distill_batch(result, kit)


def register(algorithm: Algorithm) -> Algorithm:
  """Make `algorithm` selectable as `--config.algorithm=<its name>`."""
  name = algorithm.name
  if not name:
    raise ValueError(f"{type(algorithm).__name__} has no name")
  if name in _REGISTRY and type(_REGISTRY[name]) is not type(algorithm):
    raise ValueError(f"algorithm {name!r} is registered twice")
  _REGISTRY[name] = algorithm
  return algorithm


def _import_builtin() -> None:
  for module in BUILTIN:
    importlib.import_module(module)


def get(name: str) -> Algorithm:
  _import_builtin()
  if name not in _REGISTRY:
    raise ValueError(f"algorithm={name!r} is not one of {names()}; pass e.g. --config.algorithm=resd")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  _import_builtin()
  return tuple(sorted(_REGISTRY))
