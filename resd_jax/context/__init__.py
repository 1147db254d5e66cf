"""The context engine: playbook, reflection, success tagging, curation, pruning, solution buffer, teacher
context and batch assembly (docs/DESIGN.md §1, steps 3-4)."""
from resd_jax.context.assemble import distillation_batch
from resd_jax.train.batch import Batch, BatchShape, assemble_batch
from resd_jax.context.config import ContextConfig
from resd_jax.context.playbook import SECTION_KEYS, Entry, Playbook
from resd_jax.context.prompts import PROMPTS_VERSION
from resd_jax.context.solution_buffer import SolutionBuffer
from resd_jax.context.teacher_context import (TeacherContext, TeacherContextConfig, build_teacher_context,
                                              solution_for)
from resd_jax.context.types import GradedSample, Metrics
from resd_jax.context.updater import ContextUpdater, UpdateResult

__all__ = ["distillation_batch", "Batch", "BatchShape", "assemble_batch", "ContextConfig", "SECTION_KEYS", "Entry", "Playbook",
           "PROMPTS_VERSION", "SolutionBuffer", "TeacherContext", "TeacherContextConfig", "build_teacher_context",
           "solution_for", "GradedSample", "Metrics", "ContextUpdater", "UpdateResult"]
