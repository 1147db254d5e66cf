"""What the jitted train steps read: the self-distillation `Batch` (and its assembly) and the `GRPOBatch`.

Layout of one row (student shown; the teacher row is the same with its own prompt length Pt):

    position:  0 ........ Ps-1 | Ps ............................ Ps+R-1
    tokens:    pad..pad prompt | r_0 r_1 ... r_{n-1} pad ... pad
    mask:      0 .. 0   1 .. 1 | 1   1   ... 1       0   ...  0

- Ls = Ps + R and Lt = Pt + R. The prompt is right-aligned inside the first P positions (left-padded), the response
  starts at position P in both sequences, so the R response slots are the LAST R positions of both, and the
  logits that predict response token j sit at position P - 1 + j in both (teacher and student align by index).
- `response_tokens [B, R]` / `response_mask [B, R]` are those last R positions; responses shorter than R are
  right-padded with `pad_id` and mask 0.
- Rows past the number of samples (a short final batch) are all padding: masks, sample_weight and sd_mask 0.
  Their attention rows are fully masked, like the left-padding positions of every row; the model handles that.
- Over-long input: a student prompt longer than Ps or a response longer than R raises ValueError (the task
  prompt is never cut; the rollout must respect its own limits). A teacher prompt longer than Pt (which the
  teacher context avoids by shrinking the playbook) drops the sample from distillation: sd_mask 0 and the
  student prompt is used for the teacher row; counted as `batch/teacher_overlong`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from resd_jax.metrics import Metrics


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Batch:
  student_tokens: np.ndarray    # [B, Ls] int32
  student_mask: np.ndarray      # [B, Ls] bool
  teacher_tokens: np.ndarray    # [B, Lt] int32
  teacher_mask: np.ndarray      # [B, Lt] bool
  response_tokens: np.ndarray   # [B, R] int32
  response_mask: np.ndarray     # [B, R] float32 (1 on real response tokens)
  sample_weight: np.ndarray     # [B] float32
  sd_mask: np.ndarray           # [B] float32 (1: distil this sample)
  rollout_logprobs: np.ndarray  # [B, R] float32 (0 where unknown or padded)


@dataclasses.dataclass(frozen=True)
class BatchShape:
  """Static sizes from config: batch size B, student prompt Ps, teacher prompt Pt, response R."""
  batch_size: int
  max_prompt_len: int
  max_teacher_prompt_len: int
  max_response_len: int

  def __post_init__(self):
    for name in ("batch_size", "max_prompt_len", "max_teacher_prompt_len", "max_response_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"batch_shape.{name} must be > 0, got {getattr(self, name)}")
    if self.max_teacher_prompt_len < self.max_prompt_len:
      raise ValueError(f"batch_shape.max_teacher_prompt_len ({self.max_teacher_prompt_len}) must be >= "
                       f"max_prompt_len ({self.max_prompt_len}): the teacher prompt extends the student prompt")


def _fill_row(tokens: np.ndarray, mask: np.ndarray, row: int, prompt: Sequence[int], response: Sequence[int],
              prompt_len: int) -> None:
  tokens[row, prompt_len - len(prompt):prompt_len] = prompt
  mask[row, prompt_len - len(prompt):prompt_len] = True
  tokens[row, prompt_len:prompt_len + len(response)] = response
  mask[row, prompt_len:prompt_len + len(response)] = True


def assemble_batch(student_prompts: Sequence[Sequence[int]], teacher_prompts: Sequence[Sequence[int]],
                   responses: Sequence[Sequence[int]], rollout_logprobs: Sequence[Sequence[float] | None],
                   sample_weights: Sequence[float], sd_masks: Sequence[int], shape: BatchShape, pad_id: int,
                   metrics: Metrics | None = None) -> Batch:
  """Pack up to B samples into a `Batch` with the layout of the module docstring."""
  metrics = metrics if metrics is not None else Metrics()
  n = len(student_prompts)
  lengths = {len(teacher_prompts), len(responses), len(rollout_logprobs), len(sample_weights), len(sd_masks)}
  if lengths != {n}:
    raise ValueError(f"assemble_batch got per-sample lists of different lengths: student {n}, teacher "
                     f"{len(teacher_prompts)}, responses {len(responses)}, logprobs {len(rollout_logprobs)}, "
                     f"weights {len(sample_weights)}, sd_masks {len(sd_masks)}")
  B, Ps, Pt, R = shape.batch_size, shape.max_prompt_len, shape.max_teacher_prompt_len, shape.max_response_len
  if n > B:
    raise ValueError(f"{n} samples do not fit batch_size={B}; split them or raise the batch size")
  st = np.full((B, Ps + R), pad_id, np.int32)
  sm = np.zeros((B, Ps + R), bool)
  tt = np.full((B, Pt + R), pad_id, np.int32)
  tm = np.zeros((B, Pt + R), bool)
  lp = np.zeros((B, R), np.float32)
  weight = np.zeros((B,), np.float32)
  sd = np.zeros((B,), np.float32)
  for i in range(n):
    sp, tp, resp = list(student_prompts[i]), list(teacher_prompts[i]), list(responses[i])
    if len(sp) > Ps:
      raise ValueError(f"sample {i}: student prompt has {len(sp)} tokens > max_prompt_len={Ps}; the task prompt "
                       "is never cut, so filter over-long prompts or raise max_prompt_len")
    if len(resp) > R:
      raise ValueError(f"sample {i}: response has {len(resp)} tokens > max_response_len={R}; sample with "
                       "max_tokens <= max_response_len")
    sd_i = float(sd_masks[i])
    if len(tp) > Pt:
      metrics.add("batch/teacher_overlong", 1)
      tp, sd_i = sp, 0.0  # fits: Pt >= Ps
    else:
      metrics.add("batch/teacher_overlong", 0)
    _fill_row(st, sm, i, sp, resp, Ps)
    _fill_row(tt, tm, i, tp, resp, Pt)
    lps = rollout_logprobs[i]
    if lps is not None:
      if len(lps) != len(resp):
        raise ValueError(f"sample {i}: {len(lps)} rollout logprobs for {len(resp)} response tokens")
      lp[i, :len(resp)] = lps
    weight[i] = sample_weights[i]
    sd[i] = sd_i
  return Batch(student_tokens=st, student_mask=sm, teacher_tokens=tt, teacher_mask=tm,
               response_tokens=st[:, Ps:].copy(), response_mask=sm[:, Ps:].astype(np.float32),
               sample_weight=weight, sd_mask=sd, rollout_logprobs=lp)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GRPOBatch:
  """What the GRPO step reads: student_tokens/mask [B, L], response_tokens/mask [B, R], rollout_logprobs
  [B, R] (behaviour policy), advantages [B] (from `grpo.group_advantages`), sample_weight [B]."""
  student_tokens: Any
  student_mask: Any
  response_tokens: Any
  response_mask: Any
  rollout_logprobs: Any
  advantages: Any
  sample_weight: Any

  @classmethod
  def from_batch(cls, b: Batch, row_advantages: Any) -> "GRPOBatch":
    """The student side of an assembled `Batch` with one advantage per filled row; padding rows get 0."""
    advantages = np.zeros((b.student_tokens.shape[0],), np.float32)  # [B]
    advantages[:len(row_advantages)] = row_advantages
    return cls(student_tokens=b.student_tokens, student_mask=b.student_mask, response_tokens=b.response_tokens,
               response_mask=b.response_mask, rollout_logprobs=b.rollout_logprobs, advantages=advantages,
               sample_weight=b.sample_weight)
