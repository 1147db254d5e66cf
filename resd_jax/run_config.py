"""The typed run config: the one reader of the ml_collections ConfigDict a run is launched with.

`RunConfig.from_dict(cfg)` reads every key of `cfg` exactly once, converting it to the type its field declares
below, and fails in one line on an unknown or missing key or a value of the wrong type. Nothing after it reads
the ConfigDict: the trainer, the algorithms, the tasks' `from_run`, the roles and the engine all take the typed
sections. `config_schema.validate` runs the cross-field rules on the result, once.

Defaults live in one place, `resd_jax/configs/base.py` (the documented ConfigDict every run starts from); the
sections here declare names and types only, so a key cannot have two defaults. The library's own dataclasses
(`DistillConfig`, `ContextConfig`, ...) keep defaults for direct library use; `LIBRARY_FIELDS` maps them to the
run keys, and `tests/test_run_config.py` checks that each such default equals base.py's.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from typing import Any, Mapping, Optional


class ConfigError(ValueError):
  """A bad config value; the message is a single line with the fix."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


# ----- sections (names and types only; the values and their documentation are in configs/base.py) ---------------
@dataclasses.dataclass(frozen=True)
class Model:
  source: str
  preset: str
  path: str
  tokenizer: str
  param_dtype: str
  compute_dtype: str
  remat: str
  scan_layers: bool
  attn_impl: str
  attn_head_loop: str
  enable_thinking: Optional[bool]

  def describe(self) -> str:
    """`source:path` (or preset) naming the policy in the run's records."""
    return f"{self.source}:{self.path or self.preset}" if (self.path or self.preset) else self.source


@dataclasses.dataclass(frozen=True)
class Mesh:
  data: int
  fsdp: int
  tensor: int
  expert: int


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  level: str


@dataclasses.dataclass(frozen=True)
class Data:
  train_path: str
  test_path: str
  train_limit: int
  test_limit: int
  shuffle: bool
  epochs: int
  drop_last: bool


@dataclasses.dataclass(frozen=True)
class Env:
  data: str
  generated_root: str
  n_per_type: int
  task_types: tuple[int, ...]
  max_steps: int
  history_turns: int
  show_admissible: bool


@dataclasses.dataclass(frozen=True)
class Train:
  learning_rate: float
  warmup_steps: int
  schedule: str
  min_lr_ratio: float
  weight_decay: float
  b1: float
  b2: float
  clip_norm: float
  micro_batches: int
  fused_loss: bool
  remat_loss: bool
  max_steps: int


@dataclasses.dataclass(frozen=True)
class Distill:
  mode: str
  top_k: int
  eps_min: float
  eps_max: Optional[float]
  alpha: float
  temperature: float
  aggregation: str
  row_mean_over: str
  jsd_scale: bool
  renormalize: bool
  is_level: str
  is_clip: float
  chunk: int
  teacher_kind: str
  teacher_rate: float
  success_weights: bool
  success_a: float
  success_b: float


@dataclasses.dataclass(frozen=True)
class Rollout:
  batch_prompts: int
  samples_per_prompt: int
  inner_updates: int
  max_prompt_len: int
  max_response_len: int
  max_teacher_prompt_len: int
  temperature: float
  top_p: float
  top_k: int
  sample_batch: int


@dataclasses.dataclass(frozen=True)
class Context:
  reflection: bool
  playbook: bool
  solution_buffer: bool
  feedback: bool
  attempt: bool
  prune_method: str
  max_entries: int
  prune_every: int
  prune_every_counts: str
  prune_keep_recent_harmful: bool
  budget_eviction: bool
  max_playbook_tokens: int
  sdpo_solution_buffer: bool
  teacher_context_tokens: int
  curation_extensions: bool


@dataclasses.dataclass(frozen=True)
class Eval:
  num_samples: int
  temperature: float
  top_p: float
  max_response_len: int
  every_outer: int
  before_training: bool
  best_k: tuple[int, ...]
  bootstrap: bool
  best_of: str


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  every: int
  keep: int
  best_metric: str
  best_rule: str


@dataclasses.dataclass(frozen=True)
class GRPO:
  group_size: int
  clip_low: float
  clip_high: float
  dual_clip: Optional[float]
  kl_coef: float
  normalize_std: bool
  std: str
  aggregation: str
  partial_credit: bool


@dataclasses.dataclass(frozen=True)
class Engine:
  page_size: int
  num_pages: int
  memory_fraction: float
  slots: int
  prefill_chunk: int
  decode_steps: int
  share_prefixes: bool
  decode_kernel: str


@dataclasses.dataclass(frozen=True)
class Metrics:
  tensorboard: bool
  wandb_project: str
  progress: bool
  console: bool


@dataclasses.dataclass(frozen=True)
class LoRA:
  enabled: bool
  rank: int
  alpha: float
  targets: tuple[str, ...]
  dropout: float
  base_dtype: str
  adapter_path: str


@dataclasses.dataclass(frozen=True)
class Role:
  backend: str
  model_source: str
  model_path: str
  base_url: str
  model: str
  api_key_env: str
  timeout_s: float
  max_retries: int
  max_concurrency: int
  temperature: float
  top_p: float
  max_new_tokens: int
  enable_thinking: Optional[bool]


@dataclasses.dataclass(frozen=True)
class Roles:
  reflector: Role
  tagger: Role
  curator: Role


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole run's settings, typed. Build with `from_dict`; change with `dataclasses.replace` / `with_`."""
  algorithm: str
  seed: int
  workdir: str
  init_from: str
  init_playbook: bool
  model: Model
  mesh: Mesh
  task: Task
  data: Data
  env: Env
  train: Train
  distill: Distill
  rollout: Rollout
  context: Context
  roles: Roles
  eval: Eval
  checkpoint: Checkpoint
  grpo: GRPO
  engine: Engine
  metrics: Metrics
  lora: LoRA
  source_json: str = dataclasses.field(default="", compare=False, repr=False)  # the ConfigDict it was read from

  @classmethod
  def from_dict(cls, cfg: Any) -> "RunConfig":
    """Read a ConfigDict (or a plain nested mapping) into typed sections; one-line ConfigError on an unknown
    key (with the closest known one), a missing key, or a value of the wrong type."""
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    _check_keys(raw)
    run = _read(cls, raw, "")
    source = cfg.to_json() if hasattr(cfg, "to_json") else json.dumps(raw)
    return dataclasses.replace(run, source_json=source)

  def source(self) -> dict[str, Any]:
    """The ConfigDict this run was read from, as a plain dict (saved with checkpoints; wandb's config)."""
    return json.loads(self.source_json) if self.source_json else {}

  def with_(self, **changes: Any) -> "RunConfig":
    """A copy with `section=dict(field=value)` or top-level `field=value` changes (typed, unchecked)."""
    out = {}
    for name, value in changes.items():
      current = getattr(self, name)
      out[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
    return dataclasses.replace(self, **out)

  # ----- the library's typed configs, translated in one place --------------------------------------------------
  def optim_config(self):
    from resd_jax.train.optim import OptimConfig
    t = self.train
    return OptimConfig(learning_rate=t.learning_rate, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
                       clip_norm=t.clip_norm, warmup_steps=t.warmup_steps, schedule=t.schedule,
                       total_steps=t.max_steps, min_lr_ratio=t.min_lr_ratio)

  def distill_config(self):
    from resd_jax.distill.losses import DistillConfig
    d = self.distill
    return DistillConfig(mode=d.mode, top_k=d.top_k, alpha=d.alpha, temperature=d.temperature, eps_min=d.eps_min,
                         eps_max=d.eps_max, aggregation=d.aggregation, chunk_size=d.chunk, jsd_scale=d.jsd_scale,
                         renormalize=d.renormalize, rollout_is=d.is_level == "token", is_clip=d.is_clip,
                         row_mean_over=d.row_mean_over)

  def teacher_config(self):
    from resd_jax.distill.teacher import TeacherConfig
    return TeacherConfig(kind=self.distill.teacher_kind, rate=self.distill.teacher_rate)

  def grpo_config(self):
    from resd_jax.rl.grpo import GRPOConfig
    g, r = self.grpo, self.rollout
    return GRPOConfig(group_size=g.group_size, normalize_std=g.normalize_std, clip_low=g.clip_low,
                      clip_high=g.clip_high, dual_clip=g.dual_clip, kl_coef=g.kl_coef,
                      temperature=r.temperature if r.temperature > 0 else 1.0, chunk_size=self.distill.chunk,
                      std_ddof=1 if g.std == "sample" else 0, aggregation=g.aggregation)

  def eval_sampling(self):
    """sampling.SamplingParams of validation (`eval.*`; max_response_len 0 = the rollout's)."""
    from resd_jax.sampling import SamplingParams
    e = self.eval
    return SamplingParams(temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_response_len or self.rollout.max_response_len)

  def step_config(self):
    from resd_jax.train.step import StepConfig
    t = self.train
    return StepConfig(distill=self.distill_config(), teacher=self.teacher_config(), optim=self.optim_config(),
                      grpo=self.grpo_config(), micro_batches=t.micro_batches, fused_loss=t.fused_loss,
                      remat_loss=t.remat_loss)

  def context_config(self):
    """The context engine with every phase the switches allow (an algorithm may switch phases off)."""
    from resd_jax.context import ContextConfig
    x = self.context
    return ContextConfig(prune_method=x.prune_method, prune_every=x.prune_every, max_entries=x.max_entries,
                         max_playbook_tokens=x.max_playbook_tokens, budget_eviction=x.budget_eviction,
                         prune_every_counts=x.prune_every_counts,
                         prune_keep_recent_harmful=x.prune_keep_recent_harmful,
                         curation_extensions=x.curation_extensions, reflect=x.reflection,
                         tag_successes=x.playbook, curate=x.playbook)

  def teacher_context_budget(self) -> int:
    """Tokens of a teacher prompt: the student's prompt budget plus the context budget."""
    return self.rollout.max_prompt_len + self.context.teacher_context_tokens

  def batch_shape(self, rows: int):
    from resd_jax.train.batch import BatchShape
    r = self.rollout
    return BatchShape(batch_size=rows, max_prompt_len=r.max_prompt_len,
                      max_teacher_prompt_len=r.max_teacher_prompt_len or self.teacher_context_budget(),
                      max_response_len=r.max_response_len)

  def engine_config(self):
    from resd_jax.sampling.engine import EngineConfig
    e = self.engine
    return EngineConfig(page_size=e.page_size, num_pages=e.num_pages, memory_fraction=e.memory_fraction,
                        slots=e.slots or self.rollout.sample_batch, prefill_chunk=e.prefill_chunk,
                        decode_steps=e.decode_steps, share_prefixes=e.share_prefixes,
                        decode_kernel=e.decode_kernel)

  def lora_config(self):
    from resd_jax.models.lora import LoRAConfig
    c = self.lora
    return LoRAConfig(enabled=c.enabled, rank=c.rank, alpha=c.alpha, targets=c.targets, dropout=c.dropout,
                      base_dtype=c.base_dtype, adapter_path=c.adapter_path)

  def mesh_config(self):
    from resd_jax.parallel.mesh import MeshConfig
    m = self.mesh
    return MeshConfig(data=m.data, fsdp=m.fsdp, tensor=m.tensor, expert=m.expert)

  def role_configs(self) -> dict[str, Any]:
    """roles.RoleConfig per role (validated at construction)."""
    from resd_jax.roles.config import ROLES, RoleConfig
    return {name: RoleConfig(name=name, **dataclasses.asdict(getattr(self.roles, name))) for name in ROLES}

  def numerics(self) -> dict[str, Any]:
    """The model loaders' numerics keyword arguments."""
    m = self.model
    return dict(param_dtype=m.param_dtype, compute_dtype=m.compute_dtype, remat=m.remat, scan_layers=m.scan_layers,
                attn_impl=m.attn_impl, attn_head_loop=m.attn_head_loop)


# Library dataclass field -> run key, for the fields whose library default must equal base.py's.
LIBRARY_FIELDS: dict[str, dict[str, str]] = {
  "resd_jax.distill.losses.DistillConfig": {
    "mode": "distill.mode", "top_k": "distill.top_k", "alpha": "distill.alpha", "temperature": "distill.temperature",
    "eps_min": "distill.eps_min", "eps_max": "distill.eps_max", "aggregation": "distill.aggregation",
    "chunk_size": "distill.chunk", "jsd_scale": "distill.jsd_scale", "renormalize": "distill.renormalize",
    "is_clip": "distill.is_clip", "row_mean_over": "distill.row_mean_over"},
  "resd_jax.distill.teacher.TeacherConfig": {"kind": "distill.teacher_kind", "rate": "distill.teacher_rate"},
  "resd_jax.rl.grpo.GRPOConfig": {
    "group_size": "grpo.group_size", "normalize_std": "grpo.normalize_std", "clip_low": "grpo.clip_low",
    "clip_high": "grpo.clip_high", "dual_clip": "grpo.dual_clip", "kl_coef": "grpo.kl_coef",
    "aggregation": "grpo.aggregation", "chunk_size": "distill.chunk"},
  "resd_jax.train.optim.OptimConfig": {
    "learning_rate": "train.learning_rate", "b1": "train.b1", "b2": "train.b2", "weight_decay": "train.weight_decay",
    "clip_norm": "train.clip_norm", "warmup_steps": "train.warmup_steps", "schedule": "train.schedule",
    "min_lr_ratio": "train.min_lr_ratio"},
  "resd_jax.train.step.StepConfig": {"micro_batches": "train.micro_batches", "fused_loss": "train.fused_loss",
                                     "remat_loss": "train.remat_loss"},
  "resd_jax.context.config.ContextConfig": {
    "prune_method": "context.prune_method", "prune_every": "context.prune_every",
    "prune_every_counts": "context.prune_every_counts",
    "prune_keep_recent_harmful": "context.prune_keep_recent_harmful", "max_entries": "context.max_entries",
    "max_playbook_tokens": "context.max_playbook_tokens", "budget_eviction": "context.budget_eviction",
    "curation_extensions": "context.curation_extensions", "reflect": "context.reflection",
    "tag_successes": "context.playbook", "curate": "context.playbook"},
  "resd_jax.sampling.engine.EngineConfig": {
    "page_size": "engine.page_size", "num_pages": "engine.num_pages", "memory_fraction": "engine.memory_fraction",
    "prefill_chunk": "engine.prefill_chunk", "decode_steps": "engine.decode_steps",
    "share_prefixes": "engine.share_prefixes", "decode_kernel": "engine.decode_kernel"},
  "resd_jax.models.lora.LoRAConfig": {
    "enabled": "lora.enabled", "rank": "lora.rank", "alpha": "lora.alpha", "targets": "lora.targets",
    "dropout": "lora.dropout", "base_dtype": "lora.base_dtype", "adapter_path": "lora.adapter_path"},
  "resd_jax.parallel.mesh.MeshConfig": {"data": "mesh.data", "fsdp": "mesh.fsdp", "tensor": "mesh.tensor",
                                        "expert": "mesh.expert"},
}


# ----- reading ---------------------------------------------------------------------------------------------------
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out: dict[str, Any] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if hasattr(v, "items") and not isinstance(v, (str, bytes)):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def known_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
  """Every dotted key the run config has."""
  hints = typing.get_type_hints(cls)
  out = []
  for f in dataclasses.fields(cls):
    if f.name == "source_json":
      continue
    t = hints[f.name]
    if dataclasses.is_dataclass(t):
      out.extend(known_keys(t, f"{prefix}{f.name}."))
    else:
      out.append(f"{prefix}{f.name}")
  return out


def closest_key_hint(key: str) -> str:
  """"did you mean '<the closest known key>'?" (or where the known keys are listed)."""
  close = difflib.get_close_matches(key, known_keys(), n=1)
  return f"did you mean '{close[0]}'?" if close else "see resd_jax/configs/base.py for the known keys"


def unknown_key_error(key: str) -> ConfigError:
  return ConfigError(f"unknown config key '{key}'; {closest_key_hint(key)}")


def _check_keys(raw: Mapping[str, Any]) -> None:
  known = set(known_keys())
  flat = flatten(raw)
  for key in flat:
    if key not in known:
      raise unknown_key_error(key)
  for key in known_keys():
    if key not in flat:
      raise ConfigError(f"config key '{key}' is missing; start the config from resd_jax.configs.base.get_base() "
                        f"(task configs do) instead of building it from scratch")


def _read(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
  hints = typing.get_type_hints(cls)
  kw = {}
  for f in dataclasses.fields(cls):
    if f.name == "source_json":
      continue
    t = hints[f.name]
    if dataclasses.is_dataclass(t):
      kw[f.name] = _read(t, raw[f.name], f"{prefix}{f.name}.")
    else:
      kw[f.name] = _convert(raw[f.name], t, f"{prefix}{f.name}")
  return cls(**kw)


def _convert(value: Any, t: Any, key: str) -> Any:
  origin, args = typing.get_origin(t), typing.get_args(t)
  if origin is typing.Union:  # Optional[X]
    if value is None:
      return None
    return _convert(value, next(a for a in args if a is not type(None)), key)
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
      raise ConfigError(f"{key}={value!r} must be a tuple; pass e.g. --config.{key}='(1, 2)'")
    return tuple(_convert(v, args[0], key) for v in value)
  ok = {bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str)}[t]
  if not ok(value):
    raise ConfigError(f"{key}={value!r} is not a {t.__name__}; fix --config.{key} (see resd_jax/configs/base.py)")
  return t(value)
