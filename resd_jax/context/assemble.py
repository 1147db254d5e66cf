"""From a graded batch and its context update to the `Batch` the train step takes (docs/DESIGN.md §1, step 4).

Per sample: build the teacher context (measured with the real chat template, so playbook shrinking is exact),
chat-tokenise the student and teacher messages, then pack everything with `assemble_batch`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from resd_jax.train.batch import Batch, BatchShape, assemble_batch
from resd_jax.context.playbook import Playbook
from resd_jax.context.teacher_context import (TeacherContext, TeacherContextConfig, build_teacher_context,
                                              solution_for, token_counter)
from resd_jax.context.types import GradedSample, Metrics
from resd_jax.context.updater import UpdateResult
from resd_jax.models.tokenizer import chat_tokens, pad_token_id


def distillation_batch(samples: Sequence[GradedSample], result: UpdateResult, playbook: Playbook,
                       cfg: TeacherContextConfig, tokenizer: Any, shape: BatchShape, *,
                       sample_weights: Sequence[float] | None = None, enable_thinking: bool | None = None,
                       metrics: Metrics | None = None) -> tuple[Batch, list[TeacherContext]]:
  """The fixed-shape batch for `samples` plus each sample's teacher context (for logging / inspection).

  `cfg.max_prompt_tokens` larger than `shape.max_teacher_prompt_len` is clamped to it.
  """
  if len(result.reflections) != len(samples) or len(result.solutions_before) != len(samples):
    raise ValueError(f"update result covers {len(result.reflections)} samples, batch has {len(samples)}; pass the "
                     "UpdateResult of these same samples")
  metrics = metrics if metrics is not None else Metrics()
  if cfg.max_prompt_tokens > shape.max_teacher_prompt_len:
    cfg = dataclasses.replace(cfg, max_prompt_tokens=shape.max_teacher_prompt_len)
  count = token_counter(tokenizer, enable_thinking)
  contexts = [build_teacher_context(s, playbook, result.reflections[i],
                                    solution_for(samples, i, result.solutions_before[i], cfg), cfg, count, metrics)
              for i, s in enumerate(samples)]
  student = [chat_tokens(tokenizer, s.example.messages, enable_thinking=enable_thinking) for s in samples]
  teacher = [st if c.sd_mask == 0 else chat_tokens(tokenizer, c.messages, enable_thinking=enable_thinking)
             for st, c in zip(student, contexts)]
  weights = [1.0] * len(samples) if sample_weights is None else list(sample_weights)
  batch = assemble_batch(student, teacher, [s.response_tokens for s in samples],
                         [s.rollout_logprobs for s in samples], weights, [c.sd_mask for c in contexts], shape,
                         pad_id=pad_token_id(tokenizer), metrics=metrics)
  return batch, contexts
