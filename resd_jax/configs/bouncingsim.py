"""BouncingSim (RESD paper settings). Variants: `:easy`, `:medium`, `:tiny` (= easy on the embedded model),
`:medium_tiny`. `--config=configs/bouncingsim.py` alone means `:easy`.

Only what differs from `base.py` (the paper's shared settings) and `paper_settings` (the reference behaviour) is
listed.

Data: `data.train_path` / `data.test_path` name the released parquet / JSONL rows; left empty, scenes are
generated locally (needs the `physics` extra: pymunk).
"""
from resd_jax.configs import base

VARIANTS = ("", "easy", "medium", "tiny", "medium_tiny")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/bouncingsim.py has variants {VARIANTS[1:]}, got {variant!r}")
  level = "medium" if variant.startswith("medium") else "easy"
  c = base.paper_settings(base.get_base())
  c.task.name = "bouncingsim"
  c.task.level = level
  # Qwen/Qwen3-4B-Thinking-2507 (easy) or Qwen/Qwen3-30B-A3B-Thinking-2507 (medium): --config.model.path=<download>
  c.model.source = "hf"
  c.rollout.max_prompt_len = 58368
  c.rollout.max_response_len = 25600
  # The reference code's teacher keeps the initial weights (the paper's is the base EMA): teacher_kind=frozen.
  if level == "easy":
    c.distill.alpha = 0.5
    c.distill.success_weights = True
    c.context.max_entries = 120
  else:
    c.distill.teacher_rate = 1e-2   # paper: the faster EMA for the MoE model
    c.context.max_entries = 150
    c.context.prune_method = "prioritized"  # paper and reference script (easy keeps staleness)
    # The reference's Medium scripts (RESD, SDPO, GRPO) train on the first 320 rows only (NUM_DATA=320, no
    # shuffle): 10 outer batches. 0 = the whole train split.
    c.data.train_limit = 320
  if variant.endswith("tiny"):
    base.tiny_overrides(c)
  return c
