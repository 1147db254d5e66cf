"""BouncingSim (RESD paper settings). Variants: `:easy`, `:medium`, `:tiny` (= easy on the embedded model),
`:medium_tiny`. `--config=configs/bouncingsim.py` alone means `:easy`.

Data: `data.train_path` / `data.test_path` name the released parquet / JSONL rows; left empty, scenes are
generated locally (needs the `physics` extra: pymunk).
"""
from resd_jax.configs import base

VARIANTS = ("", "easy", "medium", "tiny", "medium_tiny")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/bouncingsim.py has variants {VARIANTS[1:]}, got {variant!r}")
  level = "medium" if variant.startswith("medium") else "easy"
  c = base.paper_settings(base.get_base())  # the reference behaviour everywhere (docs/FIDELITY.md)
  c.task.name = "bouncingsim"
  c.task.level = level
  c.model.source = "hf"
  # Qwen/Qwen3-4B-Thinking-2507 (easy) or Qwen/Qwen3-30B-A3B-Thinking-2507 (medium): a local download.
  c.model.path = ""
  c.rollout.batch_prompts = 32
  c.rollout.samples_per_prompt = 1
  c.rollout.inner_updates = 4
  c.rollout.max_prompt_len = 58368
  c.rollout.max_response_len = 25600
  c.data.epochs = 1
  c.train.learning_rate = 1e-6
  c.train.warmup_steps = 10
  c.distill.top_k = 100
  c.distill.eps_min = 0.2
  c.distill.teacher_kind = "ema"  # the reference code keeps the initial weights: "frozen" reproduces it
  c.context.prune_every = 4
  c.eval.num_samples = 4
  c.eval.temperature = 0.6
  c.eval.top_p = 0.95
  if level == "easy":
    c.distill.alpha = 0.5
    c.distill.teacher_rate = 1e-4
    c.distill.success_weights = True
    c.context.max_entries = 120
  else:
    c.distill.alpha = 1.0
    c.distill.teacher_rate = 1e-2   # paper: the faster EMA for the MoE model
    c.distill.success_weights = False
    c.context.max_entries = 150
    c.context.prune_method = "prioritized"  # paper and reference script (easy keeps staleness)
    # The reference's Medium scripts (RESD, SDPO, GRPO) train on the first 320 rows only (NUM_DATA=320, no
    # shuffle): 10 outer batches. 0 = the whole train split.
    c.data.train_limit = 320
    c.mesh.expert = 1               # raise on accelerators with enough devices for expert parallelism
  if variant.endswith("tiny"):
    base.tiny_overrides(c)
  return c
