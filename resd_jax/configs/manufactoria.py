"""Manufactoria-Has (RESD paper settings). Variants: `:tiny` (CPU quick start on the embedded model).

Data: `data.train_path` / `data.test_path` name the HF / verl parquet or JSONL files (or one folder); left
empty, the problems are generated locally (seeded, the same 742 / 132 split as the paper's Has family).
"""
from resd_jax.configs import base


def get_config(variant: str = ""):
  c = base.paper_settings(base.get_base())  # the reference behaviour everywhere (docs/FIDELITY.md)
  c.task.name = "manufactoria"
  c.model.source = "hf"
  c.model.path = ""               # set to a local download of Qwen/Qwen3-4B-Thinking-2507
  c.rollout.batch_prompts = 32    # B
  c.rollout.samples_per_prompt = 1  # N
  c.rollout.inner_updates = 4     # K
  c.rollout.max_prompt_len = 49152
  c.rollout.max_response_len = 20480
  c.data.epochs = 1
  c.train.learning_rate = 1e-6
  c.train.warmup_steps = 10
  c.distill.top_k = 100
  c.distill.eps_min = 0.2
  c.distill.alpha = 1.0
  # Paper: eps_max = 5. The reference script leaves it off (teacher_prob_max_ratio=null): set None for the code.
  c.distill.eps_max = 5.0
  # Paper: EMA teacher with rate 1e-4. The reference code keeps the initial weights (set "frozen" to match it).
  c.distill.teacher_kind = "ema"
  c.distill.teacher_rate = 1e-4
  # Paper: no success-rate weights. The reference script turns them on (success_rate_weighting=True): True.
  c.distill.success_weights = False
  c.context.max_entries = 200     # M_max
  c.context.prune_every = 4       # F
  c.eval.num_samples = 4
  c.eval.temperature = 0.6
  c.eval.top_p = 0.95
  if variant == "tiny":
    base.tiny_overrides(c)
    c.model.path = ""
  elif variant:
    raise ValueError(f"configs/manufactoria.py has variants '' and 'tiny', got {variant!r}")
  return c
