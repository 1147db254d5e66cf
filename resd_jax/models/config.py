"""ModelConfig: the shape and numerics of a decoder-only LM, validated at construction.

One dataclass covers Qwen3 (q/k RMSNorm), Qwen2/2.5 (qkv bias), Llama 3 (rope scaling `llama3`), SmolLM2
(Llama architecture) and Qwen3-MoE (the `num_experts` fields). Presets are plain functions of no arguments
so `ModelConfig.preset("qwen3_4b")` is cheap and the list is data.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from resd_jax import backends

_DTYPES = ("float32", "bfloat16", "float16")
_REMAT = ("none", "full", "dots")
_ATTN_BUILTIN = ("auto", "blocked", "cudnn", "xla")
_SWITCH = ("auto", "on", "off")


def numerics_choices() -> dict[str, tuple[str, ...]]:
  """The allowed values of the numerics fields, checked here and by the run config (resd_jax/config_schema.py);
  attention: the built-in implementations and the registered optional backends (resd_jax/backends.py)."""
  attn = _ATTN_BUILTIN + tuple(b.name for b in backends.of_kind("attention"))
  return {"param_dtype": _DTYPES, "compute_dtype": _DTYPES, "remat": _REMAT, "attn_impl": attn,
          "attn_head_loop": _SWITCH}


def numerics_error(values: Any, head_dim: int | None = None) -> tuple[str, str] | None:
  """(field, reason) of the first numerics rule `values` breaks, else None. The one rule list of both
  `ModelConfig` and the run config (which checks before the model, so without its head_dim). values: an object
  with the numerics fields as attributes (a ModelConfig, or the run config's `model` section)."""
  for name, allowed in numerics_choices().items():
    if getattr(values, name) not in allowed:
      return name, f"{name}={getattr(values, name)!r}; expected one of {allowed}"
  if values.attn_impl == "cudnn" and values.compute_dtype == "float32":
    return "compute_dtype", "attn_impl='cudnn' needs compute_dtype bfloat16 or float16 (the fused kernel has no float32 path)"
  optional = backends.get("attention", values.attn_impl)
  error = optional.config_error(values.compute_dtype, head_dim) if optional is not None else None
  return ("attn_impl", error) if error else None
_ARCHS = ("qwen3", "qwen3_moe", "qwen2", "llama")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture + numerics of a decoder-only transformer.

  Attributes are named after their meaning, not after any one checkpoint format; `from_hf` maps a
  `transformers` config onto them.
  """
  architecture: str = "qwen3"
  vocab_size: int = 151936
  hidden_size: int = 1024
  num_layers: int = 28
  num_heads: int = 16
  num_kv_heads: int = 8
  head_dim: int = 128
  intermediate_size: int = 3072
  rope_theta: float = 1e6
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = True
  qk_norm: bool = False           # Qwen3: RMSNorm over head_dim on q and k before RoPE
  qkv_bias: bool = False          # Qwen2/2.5: bias on the q/k/v projections
  # Llama 3 rope scaling: {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
  rope_scaling: tuple[tuple[str, float], ...] | None = None
  max_position_embeddings: int = 32768
  # Mixture of experts (Qwen3-MoE). num_experts == 0 means a dense model.
  num_experts: int = 0
  num_experts_per_tok: int = 0
  moe_intermediate_size: int = 0
  norm_topk_prob: bool = True
  decoder_sparse_step: int = 1
  mlp_only_layers: tuple[int, ...] = ()
  moe_capacity_factor: float = 2.0  # expert buffer rows = cf * tokens * k / E per group (<= 0: dropless)
  moe_group_size: int = 4096        # routing group (positions of one sequence); capacity is per group
  # Numerics and memory.
  param_dtype: str = "float32"    # master weights
  compute_dtype: str = "float32"  # matmul inputs; accumulation is always float32
  attn_block: int = 256           # causal attention is computed in query blocks of this many rows
  attn_max_unrolled_blocks: int = 16  # more blocks than this (long contexts) run under a rematerialised scan
  # Full-sequence attention (resd_jax/models/attention.py): "blocked" (ours, above), "cpu_fused" (an optional
  # backend: our C++ kernel for the CPU, compiled on first use: resd_jax/kernels/cpu_attention.py; bf16
  # compute, head_dim 64-256 in steps of 64, one device),
  # "cudnn" (the fused flash kernel of NVIDIA GPUs, through jax.nn.dot_product_attention; bf16/fp16 compute),
  # "xla" (jax.nn's reference, [T, T] scores; for tests), "auto" = cudnn on an Ampere-or-newer NVIDIA GPU with
  # bf16/fp16 compute, cpu_fused on the CPU where it applies and compiles, else blocked. Decoding with a KV
  # cache is unaffected.
  attn_impl: str = "auto"
  # Blocked attention one (sequence, KV head) pair at a time (a lax.map), so each block's float32 scores stay in
  # the CPU's caches: "auto" = on when running on the CPU without a sharded mesh (on a mesh the map would
  # gather the sharded batch), "on", "off". Same values either way.
  attn_head_loop: str = "auto"
  remat: str = "none"             # per-layer rematerialisation: none | full | dots
  scan_layers: bool = True        # layers under jax.lax.scan; False = a Python loop (compile time ~ depth)
  # LoRA adapters (models/lora.py): rank 0 = none; targets among q, k, v, o, gate, up, down (MoE: the experts').
  lora_rank: int = 0
  lora_alpha: float = 32.0
  lora_targets: tuple[str, ...] = ()

  def __post_init__(self):
    def need(cond, msg):
      if not cond:
        raise ValueError(f"ModelConfig: {msg}")
    need(self.architecture in _ARCHS, f"architecture={self.architecture!r}; expected one of {_ARCHS}")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size", "attn_block", "attn_max_unrolled_blocks"):
      need(int(getattr(self, name)) > 0, f"{name} must be a positive integer, got {getattr(self, name)!r}")
    need(self.num_heads % self.num_kv_heads == 0,
         f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
    need(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
    error = numerics_error(self, self.head_dim)
    need(error is None, error and error[1])
    if self.lora_rank:
      from resd_jax.models.lora import TARGETS  # noqa: PLC0415
      need(self.lora_rank > 0 and self.lora_alpha > 0, "lora_rank and lora_alpha must be > 0")
      need(self.lora_targets and set(self.lora_targets) <= set(TARGETS),
           f"lora_targets={self.lora_targets!r}; give a non-empty subset of {TARGETS}")
    if self.rope_scaling is not None:
      keys = dict(self.rope_scaling)
      want = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
      need(set(keys) == want, f"rope_scaling needs exactly the keys {sorted(want)}, got {sorted(keys)}")
    if self.num_experts:
      need(0 < self.num_experts_per_tok <= self.num_experts,
           f"num_experts_per_tok must be in [1, num_experts={self.num_experts}], got {self.num_experts_per_tok}")
      need(self.moe_intermediate_size > 0, "moe_intermediate_size must be > 0 for a MoE model")
      need(self.decoder_sparse_step >= 1, "decoder_sparse_step must be >= 1")
      need(self.moe_group_size > 0, f"moe_group_size must be > 0, got {self.moe_group_size}")

  # ----------------------------------------------------------------------------------------------- helpers
  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def num_groups(self) -> int:
    """Query heads per KV head (GQA)."""
    return self.num_heads // self.num_kv_heads

  @property
  def lora_scale(self) -> float:
    """The LoRA update's factor alpha / r (0 without adapters)."""
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def is_moe_layer(self, i: int) -> bool:
    return bool(self.num_experts) and i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0

  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    attn = d * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim + self.num_heads * self.head_dim * d
    n = 0
    for i in range(self.num_layers):
      mlp = (self.num_experts * 3 * d * self.moe_intermediate_size + d * self.num_experts
             if self.is_moe_layer(i) else 3 * d * f)
      n += attn + mlp + 2 * d
    return n + v * d * (1 if self.tie_embeddings else 2) + d

  @staticmethod
  def preset(name: str, **overrides: Any) -> "ModelConfig":
    """A named preset (see `PRESETS`), optionally with fields overridden."""
    if name not in PRESETS:
      raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

  @staticmethod
  def from_hf(hf_config: Any, **overrides: Any) -> "ModelConfig":
    """Map a `transformers` config (object or dict) onto a ModelConfig."""
    c = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    model_type = c.get("model_type", "")
    arch = {"qwen3": "qwen3", "qwen3_moe": "qwen3_moe", "qwen2": "qwen2", "llama": "llama"}.get(model_type)
    if arch is None:
      raise ValueError(f"unsupported architecture model_type={model_type!r}; supported: qwen3, qwen3_moe, "
                       "qwen2, llama (Llama 3 / SmolLM2)")
    heads = c["num_attention_heads"]
    rope = c.get("rope_scaling") or (c.get("rope_parameters") or {})
    rope_theta = c.get("rope_theta") or rope.get("rope_theta") or 10000.0
    rope_type = rope.get("rope_type", rope.get("type")) if rope else None
    scaling = None
    if rope_type == "llama3":
      scaling = tuple(sorted((k, float(rope[k])) for k in (
          "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")))
    elif rope_type not in (None, "default"):
      raise ValueError(f"unsupported rope scaling type {rope_type!r}; supported: default, llama3")
    kw = dict(
        architecture=arch,
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        intermediate_size=c.get("intermediate_size") or 1,
        rope_theta=float(rope_theta),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        qk_norm=arch in ("qwen3", "qwen3_moe"),
        qkv_bias=arch == "qwen2" or bool(c.get("attention_bias", False)),
        rope_scaling=scaling,
        max_position_embeddings=c.get("max_position_embeddings", 32768),
    )
    if arch == "qwen3_moe":
      kw.update(num_experts=c.get("num_experts") or c["num_local_experts"],  # transformers 5 writes num_local_experts
                num_experts_per_tok=c["num_experts_per_tok"],
                moe_intermediate_size=c["moe_intermediate_size"], norm_topk_prob=c.get("norm_topk_prob", True),
                decoder_sparse_step=c.get("decoder_sparse_step", 1),
                mlp_only_layers=tuple(c.get("mlp_only_layers") or ()))
    kw.update(overrides)
    return ModelConfig(**kw)

  def to_hf_dict(self) -> dict[str, Any]:
    """A `config.json` body that `transformers` (and vLLM) load."""
    model_type = {"qwen3": "qwen3", "qwen3_moe": "qwen3_moe", "qwen2": "qwen2", "llama": "llama"}[self.architecture]
    arch_name = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "llama": "LlamaForCausalLM"}[self.architecture]
    d: dict[str, Any] = dict(
        architectures=[arch_name], model_type=model_type, vocab_size=self.vocab_size,
        hidden_size=self.hidden_size, num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, intermediate_size=self.intermediate_size,
        rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_embeddings,
        max_position_embeddings=self.max_position_embeddings, hidden_act="silu", torch_dtype=self.param_dtype,
        attention_bias=self.qkv_bias if self.architecture == "llama" else False,
    )
    if self.rope_scaling is not None:
      d["rope_scaling"] = dict(self.rope_scaling, rope_type="llama3")
    if self.architecture == "qwen3_moe":
      d.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
               moe_intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob,
               decoder_sparse_step=self.decoder_sparse_step, mlp_only_layers=list(self.mlp_only_layers))
    return d


def _llama3_scaling(factor: float) -> tuple[tuple[str, float], ...]:
  return (("factor", factor), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
          ("original_max_position_embeddings", 8192.0))


def _qwen3(hidden, layers, heads, inter, tied, **kw) -> ModelConfig:
  return ModelConfig(architecture="qwen3", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=8,
                     head_dim=128, intermediate_size=inter, tie_embeddings=tied, qk_norm=True,
                     max_position_embeddings=40960, **kw)


def _qwen2p5(vocab, hidden, layers, heads, kv, inter, tied) -> ModelConfig:
  return ModelConfig(architecture="qwen2", vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv, head_dim=hidden // heads, intermediate_size=inter, tie_embeddings=tied,
                     qkv_bias=True, max_position_embeddings=32768)


def _llama3(hidden, layers, inter, head_dim, tied, factor) -> ModelConfig:
  return ModelConfig(architecture="llama", vocab_size=128256, hidden_size=hidden, num_layers=layers, num_heads=32,
                     num_kv_heads=8, head_dim=head_dim, intermediate_size=inter, rope_theta=500000.0,
                     rms_norm_eps=1e-5, tie_embeddings=tied, rope_scaling=_llama3_scaling(factor),
                     max_position_embeddings=131072)


PRESETS: dict[str, ModelConfig] = {
    "qwen3_0p6b": _qwen3(1024, 28, 16, 3072, True),
    "qwen3_1p7b": _qwen3(2048, 28, 16, 6144, True),
    "qwen3_4b": _qwen3(2560, 36, 32, 9728, True),
    "qwen3_8b": _qwen3(4096, 36, 32, 12288, False),
    "qwen3_30b_a3b": ModelConfig(
        architecture="qwen3_moe", hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128,
        intermediate_size=6144, tie_embeddings=False, qk_norm=True, max_position_embeddings=262144,
        num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True),
    "qwen2p5_0p5b": _qwen2p5(151936, 896, 24, 14, 2, 4864, True),
    "qwen2p5_1p5b": _qwen2p5(151936, 1536, 28, 12, 2, 8960, True),
    "qwen2p5_7b": _qwen2p5(152064, 3584, 28, 28, 4, 18944, False),
    "llama3p2_1b": _llama3(2048, 16, 8192, 64, True, 32.0),
    "llama3p1_8b": _llama3(4096, 32, 14336, 128, False, 8.0),
    "smollm2_135m": ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
        head_dim=64, intermediate_size=1536, rope_theta=100000.0, rms_norm_eps=1e-5, tie_embeddings=True,
        max_position_embeddings=8192),
    # Unit tests: a few KB of weights, every feature of Qwen3 switched on.
    "tiny": ModelConfig(
        architecture="qwen3", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, intermediate_size=128, rope_theta=10000.0, tie_embeddings=False, qk_norm=True,
        max_position_embeddings=4096),
    "tiny_moe": ModelConfig(
        architecture="qwen3_moe", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, intermediate_size=128, rope_theta=10000.0, tie_embeddings=False, qk_norm=True,
        max_position_embeddings=4096, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32),
    # The benchmark preset.
    "small": ModelConfig(
        architecture="qwen3", vocab_size=32768, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
        head_dim=64, intermediate_size=1536, rope_theta=1e6, tie_embeddings=False, qk_norm=True,
        max_position_embeddings=32768),
}
