"""What a run needs before its first step, built from the validated config: the mesh, the model and
tokenizer, the task, and the train / test example lists (fixed order, overlong prompts dropped and counted).
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


def make_mesh(cfg: Any) -> Any:
  """The device mesh of `cfg.mesh` over all devices."""
  return mesh_lib.make_mesh(mesh_lib.MeshConfig(data=int(cfg.mesh.data), fsdp=int(cfg.mesh.fsdp),
                                                tensor=int(cfg.mesh.tensor), expert=int(cfg.mesh.expert)))


def _numerics(cfg: Any) -> dict[str, Any]:
  return dict(param_dtype=str(cfg.model.param_dtype), compute_dtype=str(cfg.model.compute_dtype),
              remat=str(cfg.model.remat), scan_layers=bool(cfg.model.scan_layers),
              attn_impl=str(cfg.model.attn_impl), attn_head_loop=str(cfg.model.attn_head_loop))


def load_tokenizer(cfg: Any) -> Any:
  m = cfg.model
  if m.tokenizer:
    return tk.load_tokenizer(m.tokenizer)
  if m.source == "hf":
    return tk.load_tokenizer(m.path)
  if m.source == "gguf":
    return tk.load_gguf_tokenizer(m.path)
  return tk.load_embedded_tokenizer()  # embedded, and presets (random weights over the embedded vocabulary)


def load_model(cfg: Any, mesh: Any, tokenizer: Any) -> nnx.Module:
  """The policy model on `mesh`, with LoRA adapters when `cfg.lora.enabled` (see `with_lora`)."""
  return with_lora(cfg, _load_base(cfg, mesh, tokenizer), mesh)


def with_lora(cfg: Any, model: nnx.Module, mesh: Any) -> nnx.Module:
  """The model with fresh LoRA adapters (seeded by cfg.seed) or those of cfg.lora.adapter_path, its frozen base
  cast to cfg.lora.base_dtype, on `mesh`; the model itself when LoRA is off."""
  from resd_jax.config_schema import lora_config
  from resd_jax.models import lora, lora_io
  lcfg = lora_config(cfg)
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
    model = lora.attach(model, lcfg, seed=int(cfg.seed))
  graphdef, state = nnx.split(model)
  state = lora.cast_base(state, lcfg.base_dtype)
  return nnx.merge(graphdef, jax.device_put(state, shd.state_shardings(state, mesh)))


def _load_base(cfg: Any, mesh: Any, tokenizer: Any) -> nnx.Module:
  """The model without adapters. Presets get random weights (seeded) sized to the tokenizer's vocabulary."""
  from resd_jax.models import hf_io
  m = cfg.model
  if m.source == "embedded":
    return hf_io.load_embedded(mesh=mesh, **_numerics(cfg))[0]
  if m.source == "hf":
    return hf_io.load_hf(m.path, mesh=mesh, **_numerics(cfg))[0]
  if m.source == "gguf":
    return hf_io.load_gguf(m.path, mesh=mesh, **_numerics(cfg))[0]
  from resd_jax.models.config import ModelConfig
  from resd_jax.models.transformer import Transformer
  model_cfg = ModelConfig.preset(str(m.preset), vocab_size=len(tokenizer), **_numerics(cfg))
  model = Transformer(model_cfg, rngs=nnx.Rngs(int(cfg.seed)))
  graphdef, state = nnx.split(model)
  state = placement.put_tree(state, shd.state_shardings(state, mesh))  # the same seeded values on every process
  return nnx.merge(graphdef, state)


def make_task(cfg: Any, *, partial_credit: bool = False) -> Any:
  """The registered task of `cfg.task.name` reading `cfg.data` paths (generated data where they are empty)."""
  name, d = cfg.task.name, cfg.data
  kw: dict[str, Any] = {}
  if name == "manufactoria":
    if d.train_path or d.test_path:
      kw["data_path"] = {k: v for k, v in (("train", d.train_path), ("test", d.test_path)) if v}
    kw["split_seed"] = 42
  elif name == "bouncingsim":
    kw.update(train_path=d.train_path or None, test_path=d.test_path or None, level=cfg.task.level or "easy",
              seed=int(cfg.seed))
  elif name == "finer":
    kw.update(train_path=d.train_path, test_path=d.test_path, partial_credit=partial_credit)
  elif name == "alfworld":  # multi-turn (algorithms/resd_multiturn.py); generated games keyed by size and seed
    e = cfg.env
    root = f"{str(e.generated_root).rstrip('/')}/n{int(e.n_per_type)}_s{int(cfg.seed)}"
    kw.update(data=str(e.data), generated_root=root, n_per_type=int(e.n_per_type), seed=int(cfg.seed),
              task_types=tuple(int(t) for t in e.task_types), max_steps=int(e.max_steps))
  return task_base.make(name, **kw)


@dataclasses.dataclass
class DataSplits:
  train: list[Example]
  test: list[Example]
  dropped_overlong: int


def load_examples(cfg: Any, task: Any, tokenizer: Any) -> DataSplits:
  """Train and test examples in a fixed order (a seeded permutation of train if `data.shuffle`), capped by
  `data.*_limit`; prompts longer than `rollout.max_prompt_len` tokens are dropped (the paper filters them)."""
  enable_thinking = cfg.model.enable_thinking
  max_len = int(cfg.rollout.max_prompt_len)
  dropped = 0

  def fits(ex: Example) -> bool:
    nonlocal dropped
    ok = len(tk.chat_tokens(tokenizer, ex.messages, enable_thinking=enable_thinking)) <= max_len
    dropped += not ok
    return ok

  train = list(task.prompts("train"))
  test = list(task.prompts("test"))
  if cfg.task.name == "finer" and cfg.data.train_path == cfg.data.test_path and cfg.data.train_limit:
    test = test[int(cfg.data.train_limit):]  # the :tiny variant reads one file: validate on the rows after train
  if cfg.data.shuffle:
    order = np.random.default_rng(int(cfg.seed)).permutation(len(train))
    train = [train[i] for i in order]
  def take(xs: list[Example], n: int) -> list[Example]:  # the first n that fit (all if n == 0)
    out = []
    for ex in xs:
      if n and len(out) == n:
        break
      if fits(ex):
        out.append(ex)
    return out

  train = take(train, int(cfg.data.train_limit))
  test = take(test, int(cfg.data.test_limit))
  if not train:
    raise ValueError(f"no training examples left for task {cfg.task.name!r} (after dropping {dropped} prompts "
                     f"longer than rollout.max_prompt_len={max_len}); raise --config.rollout.max_prompt_len or "
                     f"check --config.data.train_path")
  if dropped:
    log.warning("dropped %d prompts longer than rollout.max_prompt_len=%d tokens", dropped, max_len)
  return DataSplits(train, test, dropped)
