"""LoRA weights in and out: merged Hugging Face safetensors, and the adapters alone in PEFT's layout.

- `save_merged`: W + scale * A @ B per adapted weight, written by `hf_io.save_hf` (transformers / vLLM load it
  like any exported model); `hf_io.save_hf` of a model with adapters does the same.
- `save_peft`: `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads
  onto the base model. Keys are the base weight's HF key with `.weight` -> `.lora_A.weight` / `.lora_B.weight`
  under `base_model.model.`; lora_A is [r, in], lora_B [out, r] (torch Linear layout), PEFT's scale is
  lora_alpha / r as ours.
- `load_peft`: such an adapter onto a model (attaching adapters when it has none), to continue training.

MoE expert adapters have no PEFT form here: transformers 5 fuses a layer's experts into one parameter, which
PEFT targets differently; their merged export works.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from resd_jax.models import hf_io, lora

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def save_merged(model: nnx.Module, directory: str | os.PathLike, **save_hf_kwargs: Any) -> pathlib.Path:
  """Write the adapted model with its adapters merged into the base weights (hf_io.save_hf's arguments)."""
  return hf_io.save_hf(lora.merged_model(model), directory, **save_hf_kwargs)


def _peft_key(name: str, which: str) -> str:
  template = hf_io.LAYER_KEYS[name][0]
  return _PREFIX + template[: -len(".weight")] + f".lora_{which}.weight"


def _check_dense(cfg: Any) -> None:
  if cfg.num_experts:
    raise ValueError("PEFT export/import covers dense models only (transformers 5 fuses MoE experts); use "
                     "lora_io.save_merged for a MoE model")


def save_peft(model: nnx.Module, directory: str | os.PathLike, base_model_name_or_path: str = "",
              overwrite: bool = False) -> pathlib.Path:
  """Write the model's adapters as a PEFT LoRA adapter directory."""
  from safetensors.numpy import save_file  # noqa: PLC0415
  cfg = model.config
  if not cfg.lora_rank:
    raise ValueError("save_peft: the model has no LoRA adapters (ModelConfig.lora_rank is 0)")
  _check_dense(cfg)
  directory = pathlib.Path(directory).expanduser()
  if directory.exists() and any(directory.iterdir()) and not overwrite:
    raise hf_io.WeightsError(f"{directory}: exists and is not empty; choose a new directory or pass overwrite=True")
  directory.mkdir(parents=True, exist_ok=True)
  layers = model.layers
  r = cfg.lora_rank
  tensors: dict[str, np.ndarray] = {}
  for name in lora.weight_names(cfg):
    a = np.asarray(jax.device_get(getattr(layers, name + lora.SUFFIX_A)[...]), np.float32)   # [L, *in, r]
    b = np.asarray(jax.device_get(getattr(layers, name + lora.SUFFIX_B)[...]), np.float32)   # [L, r, *out]
    for i in range(cfg.num_layers):
      tensors[_peft_key(name, "A").format(i=i)] = np.ascontiguousarray(a[i].reshape(-1, r).T)   # [r, in]
      tensors[_peft_key(name, "B").format(i=i)] = np.ascontiguousarray(b[i].reshape(r, -1).T)   # [out, r]
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path or None,
      "r": r, "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
      "target_modules": sorted(f"{t}_proj" for t in cfg.lora_targets), "use_rslora": False, "use_dora": False,
      "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
  }
  (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
  save_file(tensors, str(directory / PEFT_WEIGHTS), metadata={"format": "pt"})
  return directory


def read_peft_config(directory: str | os.PathLike) -> lora.LoRAConfig:
  """The LoRAConfig of a PEFT adapter directory (validated; unsupported PEFT options raise)."""
  directory = pathlib.Path(directory).expanduser()
  path = directory / PEFT_CONFIG
  if not path.is_file():
    raise hf_io.WeightsError(f"{path}: missing; a PEFT adapter directory holds {PEFT_CONFIG} + {PEFT_WEIGHTS}")
  try:
    c = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise hf_io.WeightsError(f"{path}: not valid JSON ({e})") from None
  if c.get("peft_type") != "LORA":
    raise hf_io.WeightsError(f"{path}: peft_type={c.get('peft_type')!r}; only LORA adapters are supported")
  for key, ok in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False), ("bias", "none")):
    if c.get(key, ok) != ok:
      raise hf_io.WeightsError(f"{path}: {key}={c.get(key)!r} is not supported (need {ok!r})")
  targets = c.get("target_modules") or []
  if isinstance(targets, str):
    raise hf_io.WeightsError(f"{path}: target_modules is a regular expression ({targets!r}); list module names")
  names = [t[: -len("_proj")] if t.endswith("_proj") else t for t in targets]
  try:
    return lora.LoRAConfig(enabled=True, rank=int(c["r"]), alpha=float(c["lora_alpha"]), targets=tuple(sorted(names)),
                           dropout=0.0)
  except (KeyError, ValueError) as e:
    raise hf_io.WeightsError(f"{path}: {e}") from None


def load_peft(model: nnx.Module, directory: str | os.PathLike) -> nnx.Module:
  """`model` with the adapters of a PEFT directory: attached when it has none, else replaced (rank, alpha and
  targets must then match). Arrays keep the model's shardings."""
  from safetensors import safe_open  # noqa: PLC0415
  directory = pathlib.Path(directory).expanduser()
  want = read_peft_config(directory)
  cfg = model.config
  _check_dense(cfg)
  if not cfg.lora_rank:
    model = lora.attach(model, want)
    cfg = model.config
  have = (cfg.lora_rank, cfg.lora_alpha, tuple(sorted(cfg.lora_targets)))
  if have != (want.rank, want.alpha, want.targets):
    raise hf_io.WeightsError(f"{directory}: adapter has rank {want.rank}, alpha {want.alpha}, targets "
                             f"{list(want.targets)}; the model's are {have[0]}, {have[1]}, {list(have[2])}")
  path = directory / PEFT_WEIGHTS
  if not path.is_file():
    raise hf_io.WeightsError(f"{path}: missing; a PEFT adapter directory holds {PEFT_CONFIG} + {PEFT_WEIGHTS}")
  r = cfg.lora_rank
  with safe_open(path, framework="numpy") as f:
    keys = set(f.keys())
    for name in lora.weight_names(cfg):
      for which, suffix in (("A", lora.SUFFIX_A), ("B", lora.SUFFIX_B)):
        var = getattr(model.layers, name + suffix)
        shape = tuple(var[...].shape)
        parts = []
        for i in range(cfg.num_layers):
          key = _peft_key(name, which).format(i=i)
          if key not in keys:
            raise hf_io.WeightsError(f"{path}: missing key {key}")
          t = f.get_tensor(key)
          expect = (r, int(np.prod(shape[1:-1]))) if which == "A" else (int(np.prod(shape[2:])), r)
          if tuple(t.shape) != expect:
            raise hf_io.WeightsError(f"{path}: key {key} has shape {tuple(t.shape)}, expected {expect}")
          parts.append(t.T.reshape(shape[1:]))        # A [in, r] -> [*in, r]; B [r, out] -> [r, *out]
        arr = np.stack(parts).astype(var[...].dtype)
        sharding = getattr(var[...], "sharding", None)
        var.set_value(jax.device_put(arr, sharding) if sharding is not None else arr)
  return model
