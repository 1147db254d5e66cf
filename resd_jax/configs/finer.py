"""FiNER (XBRL tagging; RESD paper settings). Variants: `:tiny` (CPU quick start on the embedded model).

Data: `data.train_path` / `data.test_path` must name the ACE FiNER JSONL (or verl parquet) files; FiNER has no
generator. The `:tiny` variant reads `/work/shared/data/finer/finer_val_batched_500_samples.jsonl` or the file
in `RESD_FINER_TINY` (first few rows for training, the next for validation).
"""
import os

from resd_jax.configs import base

TINY_DATA = "/work/shared/data/finer/finer_val_batched_500_samples.jsonl"


def get_config(variant: str = ""):
  c = base.paper_settings(base.get_base())  # the reference behaviour everywhere (docs/FIDELITY.md)
  c.task.name = "finer"
  c.model.source = "hf"
  c.model.path = ""               # a local download of Qwen/Qwen3-4B-Thinking-2507
  c.rollout.batch_prompts = 32
  c.rollout.samples_per_prompt = 1
  c.rollout.inner_updates = 4
  c.rollout.max_prompt_len = 49152
  c.rollout.max_response_len = 20480
  c.data.epochs = 1
  # Paper: 1e-6 for every task. The reference FiNER scripts use 1e-5; set it with --config.train.learning_rate=1e-5.
  c.train.learning_rate = 1e-6
  c.train.warmup_steps = 10
  c.distill.top_k = 100
  c.distill.eps_min = 0.2
  c.distill.alpha = 0.5
  c.distill.teacher_kind = "ema"  # the reference code keeps the initial weights: "frozen" reproduces it
  c.distill.teacher_rate = 1e-4
  c.distill.success_weights = True
  c.context.max_entries = 120
  c.context.prune_every = 4
  c.eval.num_samples = 4
  c.eval.temperature = 0.6
  c.eval.top_p = 0.95
  # GRPO baseline: the reference's reward is the fraction of tags right (compute_score_count); False = binary.
  c.grpo.partial_credit = True
  if variant == "tiny":
    base.tiny_overrides(c)
    path = os.environ.get("RESD_FINER_TINY", TINY_DATA)
    c.data.train_path = path
    c.data.test_path = path
  elif variant:
    raise ValueError(f"configs/finer.py has variants '' and 'tiny', got {variant!r}")
  return c
