"""LoRA adapters: low-rank updates W + (alpha / r) * A @ B on the decoder's projections, base weights frozen.

Adapters are extra `nnx.Param` leaves of `DecoderLayers`, stacked on the `layers` axis like every other layer
weight and named `<weight>_lora_a` / `<weight>_lora_b` (e.g. `q_lora_a` [L, D, r], `q_lora_b` [L, r, H, Dh]).
Their logical axes are those of the weight they adapt (the rank axis replicated), so they shard by the same
rules. Each projection goes through `project`: x @ W + scale * (x @ A) @ B, never merging W (so the sampler
and every forward see the adapted model as is, and the teacher's frozen base is the same W).

Layouts follow the projection's einsum (`EQS`): a weight's letters split into *input* letters (contracted with
x), *batch* letters (in x, W and the output: the expert axis of MoE weights) and *output* letters. A holds
[*input, r] (batch letters in front), B holds [*batch, r, *output]; B starts at zero, so a fresh adapter leaves
the model unchanged, and A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's default).

A model whose parameters hold adapters trains only them (train/step.py): the gradient is taken with respect
to the adapter leaves alone, the optimizer state and the teacher's kept weights cover only those leaves.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resd_jax.models.matmul import mixed_einsum

# Targets by their user-facing name (PEFT's module names without `_proj`) -> our weight names.
DENSE_TARGETS = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "gate", "up": "up", "down": "down"}
MOE_TARGETS = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "expert_gate", "up": "expert_up",
               "down": "expert_down"}
TARGETS = tuple(DENSE_TARGETS)
# The einsum of every projection that can carry an adapter (one layer, x first, the weight second).
EQS = {
    "q": "btd,dhk->bthk", "k": "btd,dhk->bthk", "v": "btd,dhk->bthk", "o": "bthk,hkd->btd",
    "gate": "btd,df->btf", "up": "btd,df->btf", "down": "btf,fd->btd",
    "expert_gate": "becd,edf->becf", "expert_up": "becd,edf->becf", "expert_down": "becf,efd->becd",
}
SUFFIX_A, SUFFIX_B = "_lora_a", "_lora_b"
_R = "r"  # the rank letter; no projection equation uses it
BASE_DTYPES = ("", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which projections get adapters, their rank and scale, and how the frozen base is held.

  dropout: PEFT's lora_dropout on the adapter's input; only 0.0 is implemented (the forward takes no RNG).
  base_dtype: "" keeps the model's param_dtype for the frozen base; "bfloat16" halves its memory (adapters
  stay in param_dtype). adapter_path: a PEFT adapter directory to start from (rank/alpha/targets must match).
  """
  enabled: bool = False
  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
  dropout: float = 0.0
  base_dtype: str = ""
  adapter_path: str = ""

  def __post_init__(self):
    def need(cond, msg):
      if not cond:
        raise ValueError(f"LoRAConfig: {msg}")
    need(int(self.rank) > 0, f"rank must be a positive integer, got {self.rank!r}")
    need(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}")
    targets = tuple(self.targets)
    need(targets and all(t in TARGETS for t in targets) and len(set(targets)) == len(targets),
         f"targets={targets!r}: give a non-empty list without repeats from {TARGETS}")
    need(self.dropout == 0.0, f"dropout={self.dropout}: only 0.0 is implemented (the forward takes no RNG)")
    need(self.base_dtype in BASE_DTYPES, f"base_dtype={self.base_dtype!r}; expected one of {BASE_DTYPES}")

  def model_overrides(self) -> dict[str, Any]:
    """The ModelConfig fields that give a model these adapters (none when disabled)."""
    if not self.enabled:
      return {}
    return dict(lora_rank=int(self.rank), lora_alpha=float(self.alpha), lora_targets=tuple(self.targets))


# ------------------------------------------------------------------------------------------------ layouts
def _letters(eq: str) -> tuple[str, str, str, str, str]:
  """(x, w, out, contracted letters of w (in x, not in out), batch letters of w (in x and out)) of an einsum."""
  ins, out = eq.split("->")
  x, w = ins.split(",")
  return x, w, out, "".join(c for c in w if c in x and c not in out), "".join(c for c in w if c in x and c in out)


def equations(name: str) -> tuple[str, str, str]:
  """The einsums of adapter `name`: x @ A, (x A) @ B, and A @ B (the merged update, shaped like W)."""
  x, w, out, contracted, batch = _letters(EQS[name])
  a = "".join(c for c in w if c in x) + _R                   # [*batch/input letters in W's order, r]
  b = batch + _R + "".join(c for c in w if c not in x)       # [*batch, r, *output]
  xa = "".join(c for c in x if c not in contracted) + _R     # [..., r]
  return f"{x},{a}->{xa}", f"{xa},{b}->{out}", f"{a},{b}->{w}"


def shapes(name: str, w_shape: tuple[int, ...], w_axes: tuple, rank: int) -> tuple[tuple, tuple, tuple, tuple]:
  """(A shape, A axes, B shape, B axes) for a stacked weight of shape [L, *W] with logical axes w_axes."""
  w = _letters(EQS[name])[1]
  a_eq, b_eq, _ = equations(name)
  dims = dict(zip(w, w_shape[1:]))
  axes = dict(zip(w, w_axes[1:]))
  a_sub, b_sub = a_eq.split(",")[1].split("->")[0], b_eq.split(",")[1].split("->")[0]
  size = lambda sub: (w_shape[0],) + tuple(rank if c == _R else dims[c] for c in sub)      # noqa: E731
  names = lambda sub: (w_axes[0],) + tuple(None if c == _R else axes[c] for c in sub)      # noqa: E731
  return size(a_sub), names(a_sub), size(b_sub), names(b_sub)


def weight_names(cfg: Any) -> tuple[str, ...]:
  """Our weight names that carry adapters under a ModelConfig (empty without LoRA)."""
  if not cfg.lora_rank:
    return ()
  table = MOE_TARGETS if cfg.num_experts else DENSE_TARGETS
  return tuple(table[t] for t in cfg.lora_targets)


def init_arrays(name: str, w_shape: tuple[int, ...], w_axes: tuple, rank: int, key: jax.Array, dtype
                ) -> tuple[nnx.Param, nnx.Param]:
  """Fresh (A, B) Params for the stacked weight `name`: A ~ U(+-1/sqrt(fan_in)), B = 0."""
  a_shape, a_axes, b_shape, b_axes = shapes(name, w_shape, w_axes, rank)
  _, w, _, contracted, _ = _letters(EQS[name])
  fan_in = math.prod(s for c, s in zip(w, w_shape[1:]) if c in contracted)
  bound = 1.0 / math.sqrt(fan_in)
  a = jax.random.uniform(key, a_shape, jnp.float32, -bound, bound).astype(dtype)
  return nnx.Param(a, axes=a_axes), nnx.Param(jnp.zeros(b_shape, dtype), axes=b_axes)


def init_params(layers: nnx.Module, cfg: Any, rngs: nnx.Rngs) -> None:
  """Create the adapters of cfg.lora_targets on a `DecoderLayers` whose base weights already exist."""
  dtype = jnp.dtype(cfg.param_dtype)
  for name in weight_names(cfg):
    w = getattr(layers, name)
    a, b = init_arrays(name, tuple(w[...].shape), tuple(w.get_metadata()["axes"]), cfg.lora_rank,
                       rngs.params(), dtype)
    setattr(layers, name + SUFFIX_A, a)
    setattr(layers, name + SUFFIX_B, b)


# ------------------------------------------------------------------------------------------------ forward
def project(eq: str, x: jax.Array, p: dict[str, jax.Array], name: str, dtype, scale: float) -> jax.Array:
  """x projected by p[name] (float32 result), plus scale * (x @ A) @ B when the layer has an adapter on it."""
  y = mixed_einsum(eq, x, p[name], dtype)
  if name + SUFFIX_A in p:
    a_eq, b_eq, _ = equations(name)
    xa = mixed_einsum(a_eq, x, p[name + SUFFIX_A], dtype)                  # [..., r]
    y = y + scale * mixed_einsum(b_eq, xa, p[name + SUFFIX_B], dtype)
  return y


def merged_weight(name: str, w: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """W + scale * A @ B for stacked [L, ...] arrays, in float32."""
  ab, w_sub = equations(name)[2].split("->")
  a_sub, b_sub = ab.split(",")
  update = jnp.einsum(f"l{a_sub},l{b_sub}->l{w_sub}", a.astype(jnp.float32), b.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  return w.astype(jnp.float32) + scale * update


# ------------------------------------------------------------------------------------------------ state
def is_adapter(path: tuple, _value: Any = None) -> bool:
  """nnx filter: the leaf is a LoRA A or B matrix."""
  name = str(path[-1]) if path else ""
  return name.endswith(SUFFIX_A) or name.endswith(SUFFIX_B)


def has_adapters(params: Any) -> bool:
  """Whether an nnx.State of Params holds adapter leaves."""
  return isinstance(params, nnx.State) and any(is_adapter(p) for p, _ in nnx.to_flat_state(params))


def split(params: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(adapters, base) of a model state."""
  adapters, base = nnx.split_state(params, is_adapter, ...)
  return adapters, base


def trainable(params: Any) -> Any:
  """What the optimizer updates: the adapter leaves of a LoRA model, else all of params."""
  return split(params)[0] if has_adapters(params) else params


def with_trainable(params: Any, sub: Any) -> Any:
  """params with its trainable part replaced by `sub` (inverse of `trainable`)."""
  if not has_adapters(params):
    return sub
  return nnx.merge_state(split(params)[1], sub)


def cast_base(params: nnx.State, dtype: str) -> nnx.State:
  """The frozen base weights of a LoRA state cast to dtype ("" = unchanged); adapters untouched."""
  if not dtype:
    return params
  adapters, base = split(params)
  base = jax.tree.map(lambda x: x.astype(dtype), base)
  return nnx.merge_state(base, adapters)


def attach(model: nnx.Module, lcfg: LoRAConfig, seed: int = 0) -> nnx.Module:
  """A copy of a Transformer without adapters, with fresh adapters per lcfg (same base arrays, same shardings)."""
  from resd_jax.models.transformer import Transformer  # noqa: PLC0415
  if model.config.lora_rank:
    raise ValueError("lora.attach: the model already has LoRA adapters")
  cfg = model.config.replace(**lcfg.model_overrides())
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  base = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(base))
  key = jax.random.key(seed)
  dtype = jnp.dtype(cfg.param_dtype)
  for name in weight_names(cfg):
    w = flat[("layers", name)]
    key, sub = jax.random.split(key)
    a, b = init_arrays(name, tuple(w[...].shape), tuple(w.get_metadata()["axes"]), cfg.lora_rank, sub, dtype)
    flat[("layers", name + SUFFIX_A)], flat[("layers", name + SUFFIX_B)] = a, b
  for path, var in nnx.to_flat_state(abstract):
    var.set_value(flat[path][...])
  return nnx.merge(graphdef, abstract)


def merged_model(model: nnx.Module) -> nnx.Module:
  """The same model without adapters: every adapted weight replaced by W + scale * A @ B (float32 math,
  stored in the base weight's dtype)."""
  from resd_jax.models.transformer import Transformer  # noqa: PLC0415
  cfg = model.config
  plain = cfg.replace(lora_rank=0, lora_targets=())
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(plain, rngs=nnx.Rngs(0))))
  flat = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for name in weight_names(cfg):
    w = flat[("layers", name)]
    merged = merged_weight(name, w, flat[("layers", name + SUFFIX_A)], flat[("layers", name + SUFFIX_B)],
                           cfg.lora_scale)
    flat[("layers", name)] = merged.astype(w.dtype)
  for path, var in nnx.to_flat_state(abstract):
    var.set_value(flat[path])
  return nnx.merge(graphdef, abstract)
