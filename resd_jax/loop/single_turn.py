"""Single-turn interaction: each prompt gets `per_prompt` sampled responses, each graded once by the task.

`SingleTurn.collect` gives the `Responses` of one inner update; an algorithm turns them into its batch with
`Responses.distill_batch` (self-distillation rows: student prompt, teacher prompt with the context, response)
or `Responses.grpo_batch` (consecutive groups of G with group-normalised advantages). `validate` runs the
config's `eval.*` on the test split.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resd_jax import evaluation
from resd_jax.context import GradedSample, distillation_batch
from resd_jax.distill import losses
from resd_jax.loop import host_sync
from resd_jax.metrics import Metrics
from resd_jax.models.tokenizer import chat_tokens, pad_token_id
from resd_jax.rl.grpo import host_group_advantages
from resd_jax.sampling import SamplingParams
from resd_jax.train.batch import BatchShape, GRPOBatch, assemble_batch

# generate(conversations, sampling params, key) -> rollouts (sampling.text.Rollout), one per conversation
Generate = Callable[[list, SamplingParams, jax.Array], list]


def success_weights(run: Any, success: Sequence[float]) -> list[float] | None:
  """distill.success_weights: (1 - s)^a for successes, s^b for failures (s = the batch's success rate)."""
  d = run.distill
  if not d.success_weights or not len(success):
    return None
  return np.asarray(losses.success_rate_weights(jnp.asarray(success, jnp.float32), d.success_a,
                                                d.success_b)).tolist()


def grpo_batch(samples: Sequence[GradedSample], group_size: int, normalize_std: bool, ddof: int, shape: BatchShape,
               tokenizer: Any, enable_thinking: bool | None, metrics: Metrics) -> GRPOBatch:
  """Samples laid out as consecutive groups of G (each prompt is sampled G times in a row) -> the batch.
  Padding rows (a short final batch) get advantage 0 and weight 0."""
  adv = host_group_advantages([s.grade.reward for s in samples], group_size, normalize_std, ddof, metrics)
  prompts = [chat_tokens(tokenizer, s.example.messages, enable_thinking=enable_thinking) for s in samples]
  b = assemble_batch(prompts, prompts, [s.response_tokens for s in samples], [s.rollout_logprobs for s in samples],
                     [1.0] * len(samples), [0] * len(samples), shape, pad_id=pad_token_id(tokenizer),
                     metrics=metrics)
  return GRPOBatch.from_batch(b, adv)


@dataclasses.dataclass
class Responses:
  """One inner update's graded responses (in prompt-major order: prompt i's samples are consecutive)."""
  samples: list[GradedSample]
  n_tokens: int
  throughput: dict[str, float] = dataclasses.field(default_factory=dict)

  def distill_batch(self, result: Any, kit: Any) -> Any:
    weights = success_weights(kit.run, [float(s.grade.success) for s in self.samples])
    batch, _ = distillation_batch(self.samples, result, kit.playbook, kit.teacher_context, kit.tokenizer, kit.shape,
                                  sample_weights=weights, enable_thinking=kit.run.model.enable_thinking,
                                  metrics=kit.metrics)
    return batch

  def grpo_batch(self, kit: Any) -> GRPOBatch:
    g = kit.run.grpo_config()
    return grpo_batch(self.samples, g.group_size, g.normalize_std, g.std_ddof, kit.shape, kit.tokenizer,
                      kit.run.model.enable_thinking, kit.metrics)


class SingleTurn:
  """Responses to prompts, graded by the task."""

  def __init__(self, run: Any, task: Any, data: Any, tokenizer: Any, generate: Generate):
    self.run, self.task, self.data, self.generate = run, task, data, generate

  def collect(self, examples: Sequence[Any], per_prompt: int, params: SamplingParams, key: jax.Array,
              m: Metrics, times: dict[str, float]) -> Responses:
    t0 = time.perf_counter()
    rolls = self.generate([list(ex.messages) for ex in examples for _ in range(per_prompt)], params, key)
    times["rollout"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    exs = [ex for ex in examples for _ in range(per_prompt)]
    grades = host_sync.sync_grades([self.task.grade(ex, ro.text, truncated=ro.truncated)
                                    for ex, ro in zip(exs, rolls)])
    samples = []
    for ex, ro, grade in zip(exs, rolls, grades):
      samples.append(GradedSample(ex, ro.text, list(ro.response_tokens), list(ro.logprobs), grade, ro.truncated))
      m.add("rollout/reward", grade.reward)
      m.add("rollout/acc", grade.acc)
      m.add("rollout/success", float(grade.success))
      m.add("rollout/truncated", float(ro.truncated))
      m.add("rollout/response_tokens", len(ro.response_tokens))
      for k, v in grade.info.items():
        if isinstance(v, (bool, int, float)):
          m.add(f"grade/{k}", float(v))
    times["grade"] = time.perf_counter() - t0
    return Responses(samples, sum(len(ro.response_tokens) for ro in rolls))

  def validate(self, key: jax.Array) -> tuple[dict[str, float], dict[str, Any]]:
    """(the metrics kept in the validation history, the extra lines to log) on the test split."""
    if not self.data.test:
      return {}, {}
    run, e = self.run, self.run.eval
    params = run.eval_sampling()

    def generate_n(examples, n):
      rolls = self.generate([list(ex.messages) for ex in examples for _ in range(n)], params, key)
      return [[(ro.text, ro.truncated) for ro in rolls[i * n:(i + 1) * n]] for i in range(len(examples))]

    res = evaluation.evaluate(self.task, self.data.test, generate_n, e.num_samples, ks=tuple(e.best_k),
                              bootstrap=e.bootstrap, seed=run.seed, best_of=e.best_of)
    if jax.process_count() > 1:  # grading may depend on wall time; the checkpoint policy reads these
      metrics, info_sums = host_sync.broadcast_json([dict(res.metrics), dict(res.info_sums)])
      res = dataclasses.replace(res, metrics=metrics, info_sums={k: tuple(v) for k, v in info_sums.items()})
    return dict(res.metrics), {f"val/grade/{k}": v for k, v in res.info_sums.items()}

  def close(self) -> None:
    pass
