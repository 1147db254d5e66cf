"""What a run needs before its first step, built from the typed run config (`resd_jax.run_config.RunConfig`):
the mesh, the model and tokenizer, the task, and the train / test example lists (fixed order, overlong prompts
dropped and counted).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import numpy as np
from flax import nnx

from resd_jax.models import tokenizer as tk
from resd_jax.parallel import mesh as mesh_lib
from resd_jax.parallel import placement
from resd_jax.parallel import sharding as shd
from resd_jax.tasks import base as task_base
from resd_jax.tasks.base import Example

log = logging.getLogger(__name__)


def _typed(run: Any) -> Any:
  from resd_jax.config_schema import as_run
  return as_run(run)


def make_mesh(run: Any) -> Any:
  """The device mesh of `run.mesh` over all devices (run: a RunConfig, or a ConfigDict read into one)."""
  return mesh_lib.make_mesh(_typed(run).mesh_config())


def load_tokenizer(run: Any) -> Any:
  m = _typed(run).model
  if m.tokenizer:
    return tk.load_tokenizer(m.tokenizer)
  if m.source == "hf":
    return tk.load_tokenizer(m.path)
  if m.source == "gguf":
    return tk.load_gguf_tokenizer(m.path)
  return tk.load_embedded_tokenizer()  # embedded, and presets (random weights over the embedded vocabulary)


def load_model(run: Any, mesh: Any, tokenizer: Any) -> nnx.Module:
  """The policy model on `mesh`, with LoRA adapters when `run.lora.enabled` (see `with_lora`)."""
  run = _typed(run)
  return with_lora(run, _load_base(run, mesh, tokenizer), mesh)


def with_lora(run: Any, model: nnx.Module, mesh: Any) -> nnx.Module:
  """The model with fresh LoRA adapters (seeded by run.seed) or those of lora.adapter_path, its frozen base
  cast to lora.base_dtype, on `mesh`; the model itself when LoRA is off."""
  from resd_jax.models import lora, lora_io
  lcfg = run.lora_config()
  if not lcfg.enabled:
    return model
  if lcfg.adapter_path:
    want = lora_io.read_peft_config(lcfg.adapter_path)
    if (want.rank, want.alpha, want.targets) != (lcfg.rank, lcfg.alpha, tuple(sorted(lcfg.targets))):
      raise ValueError(f"lora.adapter_path={lcfg.adapter_path}: adapter rank {want.rank}, alpha {want.alpha}, "
                       f"targets {list(want.targets)} differ from --config.lora.* (rank {lcfg.rank}, alpha "
                       f"{lcfg.alpha}, targets {list(lcfg.targets)}); set those to the adapter's")
    model = lora_io.load_peft(model, lcfg.adapter_path)
  else:
    model = lora.attach(model, lcfg, seed=run.seed)
  graphdef, state = nnx.split(model)
  state = lora.cast_base(state, lcfg.base_dtype)
  return nnx.merge(graphdef, jax.device_put(state, shd.state_shardings(state, mesh)))


def _load_base(run: Any, mesh: Any, tokenizer: Any) -> nnx.Module:
  """The model without adapters. Presets get random weights (seeded) sized to the tokenizer's vocabulary."""
  from resd_jax.models import hf_io
  m = run.model
  if m.source == "embedded":
    return hf_io.load_embedded(mesh=mesh, **run.numerics())[0]
  if m.source == "hf":
    return hf_io.load_hf(m.path, mesh=mesh, **run.numerics())[0]
  if m.source == "gguf":
    return hf_io.load_gguf(m.path, mesh=mesh, **run.numerics())[0]
  from resd_jax.models.config import ModelConfig
  from resd_jax.models.transformer import Transformer
  model_cfg = ModelConfig.preset(m.preset, vocab_size=len(tokenizer), **run.numerics())
  model = Transformer(model_cfg, rngs=nnx.Rngs(run.seed))
  graphdef, state = nnx.split(model)
  state = placement.put_tree(state, shd.state_shardings(state, mesh))  # the same seeded values on every process
  return nnx.merge(graphdef, state)


def make_task(run: Any, **options: Any) -> Any:
  """The registered task of `run.task.name`, built by its own `from_run` (options: the algorithm's)."""
  return task_base.task_class(run.task.name).from_run(run, **options)


@dataclasses.dataclass
class DataSplits:
  train: list[Example]
  test: list[Example]
  dropped_overlong: int


def load_examples(run: Any, task: Any, tokenizer: Any) -> DataSplits:
  """Train and test examples in a fixed order (a seeded permutation of train if `data.shuffle`), capped by
  `data.*_limit`; prompts longer than `rollout.max_prompt_len` tokens are dropped (the paper filters them)."""
  enable_thinking = run.model.enable_thinking
  max_len = run.rollout.max_prompt_len
  dropped = 0

  def fits(ex: Example) -> bool:
    nonlocal dropped
    ok = len(tk.chat_tokens(tokenizer, ex.messages, enable_thinking=enable_thinking)) <= max_len
    dropped += not ok
    return ok

  train = list(task.prompts("train"))
  test = list(task.prompts("test"))
  if run.data.shuffle:
    order = np.random.default_rng(run.seed).permutation(len(train))
    train = [train[i] for i in order]

  def take(xs: list[Example], n: int) -> list[Example]:  # the first n that fit (all if n == 0)
    out = []
    for ex in xs:
      if n and len(out) == n:
        break
      if fits(ex):
        out.append(ex)
    return out

  train = take(train, run.data.train_limit)
  test = take(test, run.data.test_limit)
  if not train:
    raise ValueError(f"no training examples left for task {run.task.name!r} (after dropping {dropped} prompts "
                     f"longer than rollout.max_prompt_len={max_len}); raise --config.rollout.max_prompt_len or "
                     f"check --config.data.train_path")
  if dropped:
    log.warning("dropped %d prompts longer than rollout.max_prompt_len=%d tokens", dropped, max_len)
  return DataSplits(train, test, dropped)
