"""GRPO baseline in the RESD loop: G samples per prompt, group-normalised advantages of the sparse reward,
one clipped-surrogate step per inner update (K per batch), no context update and no teacher.

`train(cfg, workdir)` runs it; `grpo_batch` turns graded samples into the step's `GRPOBatch`.
"""
from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from resd_jax.context.types import GradedSample
from resd_jax.metrics import Metrics
from resd_jax.models.tokenizer import chat_tokens, pad_token_id
from resd_jax.rl.grpo import group_advantages
from resd_jax.train.batch import BatchShape, GRPOBatch, assemble_batch


def grpo_batch(samples: Sequence[GradedSample], cfg: Any, shape: BatchShape, tokenizer: Any,
               metrics: Metrics) -> GRPOBatch:
  """Samples laid out as consecutive groups of G (the loop samples each prompt G times in a row) -> the batch.
  Padding rows (a short final batch) get advantage 0 and weight 0."""
  g = int(cfg.grpo.group_size)
  rewards = jnp.asarray([s.grade.reward for s in samples], jnp.float32)
  adv = np.asarray(group_advantages(rewards, g, bool(cfg.grpo.normalize_std),
                                    ddof=1 if str(cfg.grpo.get("std", "population")) == "sample" else 0), np.float32)
  prompts = [chat_tokens(tokenizer, s.example.messages, enable_thinking=cfg.model.enable_thinking) for s in samples]
  b = assemble_batch(prompts, prompts, [s.response_tokens for s in samples], [s.rollout_logprobs for s in samples],
                     [1.0] * len(samples), [0] * len(samples), shape, pad_id=pad_token_id(tokenizer),
                     metrics=metrics)
  advantages = np.zeros((shape.batch_size,), np.float32)
  advantages[:len(samples)] = adv
  groups = np.asarray(rewards).reshape(-1, g)
  metrics.add("grpo/groups_with_signal", float(np.sum(groups.std(axis=1) > 0)), groups.shape[0])
  return GRPOBatch(student_tokens=b.student_tokens, student_mask=b.student_mask, response_tokens=b.response_tokens,
                   response_mask=b.response_mask, rollout_logprobs=b.rollout_logprobs, advantages=advantages,
                   sample_weight=b.sample_weight)


def train(cfg: Any, workdir: str | pathlib.Path):
  """GRPO with the config's `grpo.*` settings (sets `algorithm="grpo"`)."""
  from resd_jax.algorithms.resd import train as run
  cfg.algorithm = "grpo"
  return run(cfg, workdir)
