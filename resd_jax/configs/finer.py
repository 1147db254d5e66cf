"""FiNER (XBRL tagging; RESD paper settings). Variants: `:tiny` (CPU quick start on the embedded model).

Only what differs from `base.py` (the paper's shared settings) and `paper_settings` (the reference behaviour) is
listed.

Data: `data.train_path` / `data.test_path` must name the ACE FiNER JSONL (or verl parquet) files; FiNER has no
generator. The `:tiny` variant reads `/work/shared/data/finer/finer_val_batched_500_samples.jsonl` or the file
in `RESD_FINER_TINY` (first few rows for training, the next for validation).
"""
import os

from resd_jax.configs import base

TINY_DATA = "/work/shared/data/finer/finer_val_batched_500_samples.jsonl"


def get_config(variant: str = ""):
  c = base.paper_settings(base.get_base())
  c.task.name = "finer"
  c.model.source = "hf"           # with --config.model.path=<a local download of Qwen/Qwen3-4B-Thinking-2507>
  # Paper: lr 1e-6 for every task (the base value). The reference FiNER scripts use 1e-5:
  # --config.train.learning_rate=1e-5. The reference code's teacher keeps the initial weights (the paper's is
  # the base EMA): --config.distill.teacher_kind=frozen.
  c.distill.alpha = 0.5
  c.distill.success_weights = True
  c.context.max_entries = 120     # M_max
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
