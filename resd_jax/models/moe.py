"""Qwen3-MoE sparse block: top-k router, SwiGLU experts, capacity-bounded sorted dispatch, router statistics.

Routing (as Hugging Face `Qwen3MoeTopKRouter`): logits = h @ router [.., E]; softmax over ALL experts in float32;
the top-k probabilities are kept and, when `norm_topk_prob`, renormalised to sum to one. Each chosen expert is a
SwiGLU MLP (down(silu(gate(h)) * up(h))) and the outputs are summed with those weights. No shared expert.

Dispatch choice: *sorted, capacity-bounded buffers* (gather in, batched expert matmul, gather out). Tokens are
cut into routing groups of `cfg.moe_group_size` positions of one sequence. In a group of S tokens each of the
S*k (token, choice) assignments is sorted by expert (stable, choice-major, so first choices claim capacity
first) and gets a rank inside its expert; ranks below the capacity C land in a buffer [E, C, D], every expert
runs one dense matmul on its C rows, and each assignment gathers its row back. Compared with

- `jax.lax.ragged_dot` (dropless grouped matmul): exact for any routing, but in this JAX version its CPU lowering
  materialises the input once per expert (65k tokens x 128 experts: 35 GB of temporaries), so memory plans on
  simulated CPU meshes are meaningless and GSPMD cannot split its group dimension;
- a one-hot dispatch/combine einsum (GShard): same buffers, but [S, E, C] masks and O(S*E*C*D) einsum FLOPs;

the buffers cost O(S*k*cf*D) memory and the FLOPs of the chosen experts times the capacity factor, lower the same
way on every backend, and shard over the `expert` mesh axis by plain GSPMD (buffers and expert weights split on
E; tokens stay on their batch shard and are replicated over `expert`; the combine is a sum over experts). The
price: an assignment whose rank reaches C is *dropped* (contributes zero; counted in `moe_dropped`).
`cfg.moe_capacity_factor <= 0` means dropless (C = S); C never drops below min(S, `_MIN_CAPACITY`) so decoding
and short prompts are always exact. Padding tokens (attn_mask False) are routed nowhere: they take no capacity
and do not enter the statistics or the load-balancing loss.

Groups run in a `jax.lax.scan` over chunks of the sequence (all sequences of the batch in parallel), with the
group body rematerialised when `cfg.remat != "none"`, so MoE activation memory is one group's buffers.

Per layer, `moe_mlp` returns `aux` with
- `moe_load_balance_loss` []: Switch-style E * sum_e f_e * P_e over this layer's real tokens (f_e: share of the
  top-k assignments sent to e, summing to k; P_e: mean router probability of e). Same formula as the HF
  `load_balancing_loss_func`, but per layer (HF pools all layers' tokens); not added to any loss here — a train
  step multiplies the mean over layers by its `aux_loss_coef` (off by default for fine-tuning).
- `moe_tokens_per_expert` [E], `moe_tokens` [], `moe_dropped` [], `moe_assignments` []: (sum, count) pairs.

Only homogeneous stacks are supported (every layer sparse, as Qwen3-30B-A3B): layers are stacked and scanned, so
a mix of dense and sparse layers (`mlp_only_layers`, `decoder_sparse_step` > 1) raises at construction.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resd_jax.models import lora
from resd_jax.models.config import ModelConfig
from resd_jax.parallel import sharding as shd

_F32 = jnp.float32
_MIN_CAPACITY = 128

# Our stacked parameter -> (HF key template, layout). `{e}` templates hold one tensor per expert.
HF_LAYER_KEYS: dict[str, tuple[str, str]] = {
    "router": ("model.layers.{i}.mlp.gate.weight", "transpose"),
    "expert_gate": ("model.layers.{i}.mlp.experts.{e}.gate_proj.weight", "transpose"),
    "expert_up": ("model.layers.{i}.mlp.experts.{e}.up_proj.weight", "transpose"),
    "expert_down": ("model.layers.{i}.mlp.experts.{e}.down_proj.weight", "transpose"),
}


def check_supported(cfg: ModelConfig) -> None:
  """Raise unless every decoder layer of `cfg` is sparse (the stacked-scan layout needs homogeneous layers)."""
  dense = [i for i in range(cfg.num_layers) if not cfg.is_moe_layer(i)]
  if dense:
    raise ValueError(f"ModelConfig: layers {dense[:8]}{' ...' if len(dense) > 8 else ''} are dense MLP layers in a "
                     "MoE model (mlp_only_layers / decoder_sparse_step); only all-sparse stacks are supported "
                     "(set mlp_only_layers=() and decoder_sparse_step=1, as Qwen3-30B-A3B does)")


def init_params(layers: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
  """Create the stacked router and expert weights on the `DecoderLayers` module."""
  check_supported(cfg)
  L, D, E, F = cfg.num_layers, cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
  pd = jnp.dtype(cfg.param_dtype)

  def normal(shape, axes):
    return nnx.Param((0.02 * jax.random.normal(rngs.params(), shape, _F32)).astype(pd), axes=axes)

  layers.router = normal((L, D, E), ("layers", "embed", None))
  layers.expert_gate = normal((L, E, D, F), ("layers", "expert", "embed", "expert_mlp"))
  layers.expert_up = normal((L, E, D, F), ("layers", "expert", "embed", "expert_mlp"))
  layers.expert_down = normal((L, E, F, D), ("layers", "expert", "expert_mlp", "embed"))


def capacity(cfg: ModelConfig, group: int) -> int:
  """Rows per expert in a routing group of `group` tokens."""
  if cfg.moe_capacity_factor <= 0:
    return group
  want = math.ceil(cfg.moe_capacity_factor * group * cfg.num_experts_per_tok / cfg.num_experts)
  return min(group, max(want, _MIN_CAPACITY))


def route(cfg: ModelConfig, router: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x [..., D] -> (probs [..., E] full softmax, weights [..., k], experts [..., k] int32), as HF Qwen3-MoE."""
  logits = jnp.einsum("...d,de->...e", x.astype(_F32), router.astype(_F32), preferred_element_type=_F32)
  probs = jax.nn.softmax(logits, axis=-1)
  weights, experts = jax.lax.top_k(probs, cfg.num_experts_per_tok)
  if cfg.norm_topk_prob:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return probs, weights, experts.astype(jnp.int32)


def _slots(expert: jax.Array, num_experts: int, cap: int) -> jax.Array:
  """One group's assignments expert [A] (num_experts = nowhere) -> buffer slot [A] (E*cap = dropped)."""
  a = expert.shape[0]
  order = jnp.argsort(expert, stable=True)
  sorted_e = expert[order]
  counts = jnp.bincount(expert, length=num_experts + 1)
  starts = jnp.cumsum(counts) - counts
  rank = jnp.zeros((a,), jnp.int32).at[order].set(jnp.arange(a, dtype=jnp.int32) - starts[sorted_e])
  keep = (expert < num_experts) & (rank < cap)
  return jnp.where(keep, expert * cap + rank, num_experts * cap)


def _sources(slot: jax.Array, tokens: int, rows: int) -> jax.Array:
  """slot [A] -> for each buffer row, the token that fills it [rows] (`tokens` = the zero row)."""
  token = jnp.arange(slot.shape[0], dtype=jnp.int32) % tokens
  return jnp.full((rows + 1,), tokens, jnp.int32).at[slot].set(token)[:rows]


def _group(cfg: ModelConfig, p: dict[str, jax.Array], x: jax.Array, m: jax.Array):
  """One routing group per sequence: x [B, S, D] float32, m [B, S] bool -> (y [B, S, D], stats)."""
  b, s, d = x.shape
  E, k = cfg.num_experts, cfg.num_experts_per_tok
  cap = capacity(cfg, s)
  cd = jnp.dtype(cfg.compute_dtype)
  probs, w, ex = route(cfg, p["router"], x)                         # [B, S, E], [B, S, k], [B, S, k]
  ex = jnp.where(m[..., None], ex, E)                               # padding goes nowhere
  a_ex = jnp.swapaxes(ex, 1, 2).reshape(b, k * s)                   # [B, A] choice-major
  a_w = jnp.swapaxes(w, 1, 2).reshape(b, k * s)                     # [B, A]
  slot = jax.vmap(lambda e: _slots(e, E, cap))(a_ex)                # [B, A]
  src = jax.vmap(lambda sl: _sources(sl, s, E * cap))(slot)          # [B, E*C]
  x_pad = jnp.concatenate([x, jnp.zeros((b, 1, d), x.dtype)], axis=1)  # [B, S+1, D]
  xb = jnp.take_along_axis(x_pad, src[..., None], axis=1).reshape(b, E, cap, d)   # [B, E, C, D]
  xb = shd.constrain(xb, ("batch", "expert", None, None))
  g = lora.project("becd,edf->becf", xb, p, "expert_gate", cd, cfg.lora_scale)
  u = lora.project("becd,edf->becf", xb, p, "expert_up", cd, cfg.lora_scale)
  hb = shd.constrain(jax.nn.silu(g) * u, ("batch", "expert", None, "expert_mlp"))        # [B, E, C, F]
  yb = lora.project("becf,efd->becd", hb, p, "expert_down", cd, cfg.lora_scale)
  yb = shd.constrain(yb, ("batch", "expert", None, None)).reshape(b, E * cap, d)
  yb = jnp.concatenate([yb, jnp.zeros((b, 1, d), yb.dtype)], axis=1)                     # [B, E*C+1, D]
  kept = slot < E * cap                                                                  # [B, A]
  ya = jnp.take_along_axis(yb, slot[..., None], axis=1) * jnp.where(kept, a_w, 0.0)[..., None]  # [B, A, D]
  y = ya.reshape(b, k, s, d).sum(axis=1)                                                 # [B, S, D]
  mf = m.astype(_F32)
  stats = {
      "count": jnp.sum(jax.nn.one_hot(a_ex, E, dtype=_F32), axis=(0, 1)),               # [E] (padding: no class)
      "prob": jnp.einsum("bse,bs->e", probs, mf),                                        # [E]
      "tokens": jnp.sum(mf),
      "dropped": jnp.sum(((a_ex < E) & ~kept).astype(_F32)),
  }
  return y, stats


def moe_mlp(cfg: ModelConfig, p: dict[str, jax.Array], h: jax.Array, attn_mask: jax.Array
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The sparse MLP of one layer: h [B, T, D] float32 (normed), attn_mask [B, T] -> (y [B, T, D], aux)."""
  b, t, d = h.shape
  s = min(cfg.moe_group_size, t)
  n = -(-t // s)
  pad = n * s - t
  m = attn_mask.astype(bool)
  if pad:
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    m = jnp.pad(m, ((0, 0), (0, pad)))
  xs = (jnp.moveaxis(h.reshape(b, n, s, d), 1, 0), jnp.moveaxis(m.reshape(b, n, s), 1, 0))  # [n, B, S, ...]

  def body(_, chunk):
    return None, _group(cfg, p, *chunk)

  if cfg.remat != "none":
    body = jax.checkpoint(body)
  _, (y, st) = jax.lax.scan(body, None, xs)
  y = jnp.moveaxis(y, 0, 1).reshape(b, n * s, d)[:, :t]                                  # [B, T, D]
  count, prob = st["count"].sum(0), st["prob"].sum(0)                                     # [E], [E]
  tokens = st["tokens"].sum()
  denom = jnp.maximum(tokens, 1.0)
  aux = {
      "moe_load_balance_loss": cfg.num_experts * jnp.sum((count / denom) * (prob / denom)),
      "moe_tokens_per_expert": count,
      "moe_tokens": tokens,
      "moe_dropped": st["dropped"].sum(),
      "moe_assignments": count.sum(),
  }
  return y, aux
