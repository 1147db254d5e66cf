"""ALFWorld: multi-turn RESD on the real engine (`resd_jax/loop/multi_turn.py`).

Research default: the official games (`alfworld-download`, then ALFWORLD_DATA=<its folder>), a Qwen3-4B-class
instruct model, episodes of up to 50 steps, RESD settings of the paper adapted to episodes (one distillation
row per assistant turn). Variants:

  :tiny  generated games (1 per task type and split, written on first use), the embedded SmolLM2-135M, CPU,
         4-step episodes, 2 games x 2 inner updates x 2 outer batches.

Validation reports the success rate overall and per task type on valid_seen and valid_unseen
(`val/valid_seen/success`, `val/valid_unseen/success/pick_and_place_simple`, ...).
"""
from resd_jax.configs import base
from resd_jax.roles.config import ROLES


def get_config(variant: str = ""):
  c = base.get_base()
  c.task.name = "alfworld"        # only what differs from base.py is listed (validation: all 140 valid_seen and
                                  # 134 valid_unseen games; G = 8 episodes per game for GRPO)
  c.env.data = "official"         # $ALFWORLD_DATA (json_2.1.1/ + logic/); "generated" needs no download
  c.env.history_turns = 12        # past exchanges kept in the prompt (fewer when they do not fit)
  c.model.source = "hf"           # with --config.model.path=<a local download of e.g. Qwen/Qwen3-4B-Instruct-2507>
  c.model.enable_thinking = False  # short replies per turn; 50 turns of long reasoning do not fit a context
  c.data.shuffle = True           # the official train list is sorted by task type: stream it mixed
  c.rollout.batch_prompts = 8     # games per batch (x 50 turns = 400 distillation rows per step)
  c.rollout.max_prompt_len = 6144  # per turn: head + windowed history
  c.rollout.max_response_len = 512  # per turn
  c.rollout.max_teacher_prompt_len = 6144 + 4096
  c.rollout.sample_batch = 64
  c.train.micro_batches = 25      # 16 rows per micro-batch
  c.context.teacher_context_tokens = 4096
  for role in ROLES:                       # deviation: not the per-turn rollout budget (512), as a
    c.roles[role].max_new_tokens = 1024    # reflection reads a whole episode
  c.eval.num_samples = 1          # one episode per validation game
  c.eval.every_outer = 8
  c.checkpoint.every = 16
  if variant == "tiny":
    base.tiny_overrides(c)
    c.model.enable_thinking = None
    c.env.data = "generated"
    c.env.n_per_type = 1
    c.env.max_steps = 4
    c.env.history_turns = 2
    c.data.train_limit = 4
    c.data.test_limit = 2         # per validation split
    c.rollout.batch_prompts = 2   # x 4 turns = 8 rows
    c.rollout.max_prompt_len = 768
    c.rollout.max_response_len = 32
    c.rollout.max_teacher_prompt_len = 1792
    c.train.micro_batches = 1
    c.context.teacher_context_tokens = 1024
    for role in ROLES:
      c.roles[role].max_new_tokens = 64
    c.eval.num_samples = 1
    c.eval.max_response_len = 32
    c.eval.every_outer = 1
  elif variant:
    raise ValueError(f"configs/alfworld.py has variants '' and 'tiny', got {variant!r}")
  return c
