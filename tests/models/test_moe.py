"""Qwen3-MoE: parity with transformers, export round trip, capacity drops and aux loss vs NumPy, expert sharding."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from resd_jax.models import ModelConfig, hf_io, moe  # noqa: E402
from resd_jax.models.transformer import Transformer  # noqa: E402
from resd_jax.parallel import make_mesh  # noqa: E402
from test_parity import _batch  # noqa: E402  (the same left-padded 3-row batch, vocabulary 160)

TOL = 1e-4
E, K, UNUSED = 8, 2, (5, 6, 7)


def _hf_model(variant: str):
  cfg = transformers.Qwen3MoeConfig(
      vocab_size=160, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=E, num_experts_per_tok=K,
      norm_topk_prob=variant != "unnormalised", tie_word_embeddings=False, rope_theta=10000.0,
      max_position_embeddings=512)
  torch.manual_seed(1)
  model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
      if name.endswith("mlp.gate.weight"):  # a router that is far from uniform
        p.normal_(0, 0.3)
        if variant == "skewed":  # experts 5..7 get logit 0; the others read a large constant feature (below)
          p[list(UNUSED)] = 0.0
          p[: E - len(UNUSED), 0] = 2.0
      if variant == "skewed" and name.endswith("embed_tokens.weight"):
        p[:, 0] = 10.0  # feature 0 dominates the residual stream, so normed h[0] is large and positive
  return model


_SAVED: dict = {}


def _saved(variant, tmp_path_factory):
  if variant not in _SAVED:
    model = _hf_model(variant)
    d = tmp_path_factory.mktemp(variant)
    model.save_pretrained(d, safe_serialization=True)
    _SAVED[variant] = (d, model, variant)
  return _SAVED[variant]


@pytest.fixture(params=["normalised", "unnormalised", "skewed"])
def hf_dir(request, tmp_path_factory):
  return _saved(request.param, tmp_path_factory)


@pytest.fixture
def hf_one(tmp_path_factory):
  return _saved("normalised", tmp_path_factory)


@torch.no_grad()
def _torch(model, toks, mask):
  """transformers logits [B, T, V] and per-layer router logits [B*T, E] (positions from the mask)."""
  kw = dict(attention_mask=torch.tensor(mask.astype(np.int64)), output_router_logits=True,
            position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0)))
  out = model(input_ids=torch.tensor(toks), **kw)
  return out.logits.numpy(), [r.numpy() for r in out.router_logits]


def _ours(model, toks, mask):
  h, _, aux = model.forward_with_aux(jnp.asarray(toks, jnp.int32), None, jnp.asarray(mask))
  return np.asarray(model.logits(h)), jax.tree.map(np.asarray, aux)


def test_logits_match_transformers_on_left_padded_batch(hf_dir):
  d, ref, variant = hf_dir
  ours, cfg = hf_io.load_hf(d)
  assert cfg.architecture == "qwen3_moe" and cfg.norm_topk_prob == (variant != "unnormalised")
  toks, mask = _batch()
  want, router_logits = _torch(ref, toks, mask)
  got, aux = _ours(ours, toks, mask)
  assert np.abs(got - want)[mask].max() <= TOL
  # Tokens per expert on real tokens, from transformers' own router logits.
  for layer, logits in enumerate(router_logits):
    chosen = np.argsort(-logits.reshape(toks.shape + (E,))[mask], axis=-1)[:, :K]
    counts = np.bincount(chosen.ravel(), minlength=E)
    np.testing.assert_array_equal(aux["moe_tokens_per_expert"][layer], counts)
    if variant == "skewed":  # the premise: some experts receive no tokens at all
      assert np.all(counts[list(UNUSED)] == 0) and (counts > 0).sum() >= 3, counts
  assert aux["moe_dropped"].sum() == 0 and np.all(aux["moe_tokens"] == mask.sum())
  if variant == "normalised":  # padding does not change real tokens: the middle row alone, unpadded
    row = toks[1:2, mask[1]]
    alone, _ = _ours(ours, row, np.ones_like(row, bool))
    assert np.abs(alone[0] - got[1, mask[1]]).max() <= TOL


def test_export_round_trip_through_transformers(hf_one, tmp_path):
  d, _, _ = hf_one
  ours, _ = hf_io.load_hf(d)
  out = hf_io.save_hf(ours, tmp_path / "export")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).float().eval()
  toks, mask = _batch()
  assert np.abs(_torch(reloaded, toks, mask)[0] - _ours(ours, toks, mask)[0])[mask].max() <= TOL
  again, cfg = hf_io.load_hf(out)
  a, b = hf_io.hf_tensors(ours), hf_io.hf_tensors(again)
  assert "model.layers.1.mlp.experts.7.down_proj.weight" in a
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert ModelConfig.from_hf(json.loads((out / "config.json").read_text())) == cfg


def test_missing_expert_key_names_it(hf_one, tmp_path):
  from safetensors.numpy import load_file, save_file
  d, _, _ = hf_one
  (tmp_path / "config.json").write_text((d / "config.json").read_text())
  tensors = load_file(str(d / "model.safetensors"))
  del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(hf_io.WeightsError, match=r"missing key model\.layers\.1\.mlp\.experts\.3\.up_proj"):
    hf_io.load_hf(tmp_path)


# ------------------------------------------------------------------------------------------------ NumPy reference
def _np_moe(cfg, p, h, mask, cap):
  """Float64 reference of one sparse layer with per-group capacity (first choices claim capacity first)."""
  h, mask = np.asarray(h, np.float64), np.asarray(mask)
  router, wg, wu, wd = (np.asarray(p[n], np.float64) for n in ("router", "expert_gate", "expert_up", "expert_down"))
  b, t, _ = h.shape
  logits = h @ router
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  top = np.argsort(-probs, axis=-1, kind="stable")[..., :cfg.num_experts_per_tok]
  w = np.take_along_axis(probs, top, -1)
  if cfg.norm_topk_prob:
    w /= w.sum(-1, keepdims=True)
  y = np.zeros_like(h)
  counts = np.zeros(cfg.num_experts)
  dropped = 0
  s = cfg.moe_group_size
  for bi in range(b):
    for g0 in range(0, t, s):
      used = np.zeros(cfg.num_experts, int)
      for j in range(cfg.num_experts_per_tok):
        for ti in range(g0, min(t, g0 + s)):
          if not mask[bi, ti]:
            continue
          e = top[bi, ti, j]
          counts[e] += 1
          if used[e] >= cap:
            dropped += 1
            continue
          used[e] += 1
          x = h[bi, ti]
          g, u = x @ wg[e], x @ wu[e]
          y[bi, ti] += w[bi, ti, j] * ((g / (1 + np.exp(-g)) * u) @ wd[e])
  pm = probs[mask]
  f, pe = counts / mask.sum(), pm.mean(0)
  return y, counts, dropped, cfg.num_experts * np.sum(f * pe)


def _layer_params(cfg, seed=0, router_std=1.0):
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  p = {k: v[0] for k, v in model.layers.arrays().items()}
  p["router"] = router_std * jax.random.normal(jax.random.key(seed + 1), p["router"].shape)
  return p


@pytest.mark.parametrize("norm,cf,group", [(True, 1.0, 512), (False, 0.0, 200)])
def test_capacity_drops_stats_and_aux_loss_match_numpy(norm, cf, group):
  cfg = ModelConfig.preset("tiny_moe", norm_topk_prob=norm, moe_capacity_factor=cf, moe_group_size=group)
  p = _layer_params(cfg)
  rng = np.random.default_rng(5)
  h = rng.standard_normal((2, 600, cfg.hidden_size)).astype(np.float32)
  mask = np.ones((2, 600), bool)
  mask[0, :150] = False           # left padding, must take no capacity
  mask[1, 300:320] = False
  y, aux = jax.jit(lambda p, h, m: moe.moe_mlp(cfg, p, h, m))(p, jnp.asarray(h), jnp.asarray(mask))
  cap = moe.capacity(cfg, min(group, 600))
  ry, rc, rd, rl = _np_moe(cfg, p, h, mask, cap)
  assert (rd > 0) == (cf > 0)     # the 1.0 case really drops (and checks which), dropless never does
  np.testing.assert_allclose(np.asarray(y)[mask], ry[mask], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(aux["moe_tokens_per_expert"]), rc)
  assert float(aux["moe_dropped"]) == rd and float(aux["moe_tokens"]) == mask.sum()
  np.testing.assert_allclose(float(aux["moe_load_balance_loss"]), rl, rtol=1e-5)


def test_aux_loss_gradient_reaches_router_only():
  cfg = ModelConfig.preset("tiny_moe")
  p = _layer_params(cfg, router_std=0.3)
  h = jnp.asarray(np.random.default_rng(2).standard_normal((2, 9, cfg.hidden_size)), jnp.float32)
  g = jax.grad(lambda p: moe.moe_mlp(cfg, p, h, jnp.ones((2, 9), bool))[1]["moe_load_balance_loss"])(p)
  assert float(jnp.abs(g["router"]).max()) > 0
  assert all(float(jnp.abs(g[n]).max()) == 0 for n in ("expert_gate", "expert_up", "expert_down"))


# ------------------------------------------------------------------------------------------------ expert parallelism
def _train(mesh, steps=1):
  """State after `steps` real self-distillation steps (train/step.py) of a tiny MoE with several routing groups."""
  from resd_jax.train import state as st
  from resd_jax.train import step as S
  from resd_jax.train.optim import make_optimizer
  from resd_jax.train.batch import Batch
  from resd_jax.distill.losses import DistillConfig
  from resd_jax.distill.teacher import TeacherConfig
  from resd_jax.train.optim import OptimConfig
  cfg = S.StepConfig(distill=DistillConfig(top_k=4, chunk_size=8), teacher=TeacherConfig("ema", 0.1),
                     optim=OptimConfig(learning_rate=1e-4, eps=1e-6, warmup_steps=0))  # Adam eps: no amplified rounding noise
  rng = np.random.default_rng(0)
  b, ps, pt, r = 4, 5, 8, 6
  toks = rng.integers(1, 512, (b, ps + r)).astype(np.int32)
  teacher = np.concatenate([rng.integers(1, 512, (b, pt)).astype(np.int32), toks[:, ps:]], axis=1)
  mask, t_mask = np.ones(toks.shape, bool), np.ones(teacher.shape, bool)
  mask[0, :3], t_mask[1, :2] = False, False  # left padding
  ones = np.ones(b, np.float32)
  batch = Batch(toks, mask, teacher, t_mask, toks[:, ps:].copy(), np.ones((b, r), np.float32), ones, ones, None)
  model = Transformer(ModelConfig.preset("tiny_moe", moe_group_size=4), rngs=nnx.Rngs(0))
  graphdef, params = st.split_model(model)
  step = S.make_sd_step(graphdef, cfg, mesh)
  state, batch = step.place(st.init_train_state(params, make_optimizer(cfg.optim), cfg.teacher), batch)
  for _ in range(steps):
    state, metrics = step(state, batch)
  return state, metrics["loss"]  # (sum, count)


def test_sharded_train_step_equals_single_device():
  want, want_loss = _train(None)
  mesh = make_mesh(expert=2, tensor=2, fsdp=2)
  got, got_loss = _train(mesh)
  gate = got.params["layers"]["expert_gate"][...]
  assert gate.sharding.spec[1] == "expert" and gate.addressable_shards[0].data.shape[1] == 8 // 2
  init = Transformer(ModelConfig.preset("tiny_moe"), rngs=nnx.Rngs(0)).layers.router[...]
  assert float(np.abs(np.asarray(want.params["layers"]["router"][...]) - np.asarray(init)).max()) > 1e-5  # moved
  diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), want.params, got.params)
  assert max(jax.tree.leaves(diffs)) < 1e-6, diffs
  np.testing.assert_allclose(np.asarray(jax.tree.leaves(got_loss)), np.asarray(jax.tree.leaves(want_loss)), rtol=1e-4,
                             atol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
def test_mixed_dense_and_sparse_layers_are_refused():
  with pytest.raises(ValueError, match="only all-sparse stacks are supported"):
    Transformer(ModelConfig.preset("tiny_moe", mlp_only_layers=(0,)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"layers \[0\]"):
    Transformer(ModelConfig.preset("tiny_moe", decoder_sparse_step=2), rngs=nnx.Rngs(0))


def test_bad_moe_config_errors():
  with pytest.raises(ValueError, match="num_experts_per_tok"):
    ModelConfig.preset("tiny_moe", num_experts_per_tok=9)
  with pytest.raises(ValueError, match="moe_group_size"):
    ModelConfig.preset("tiny_moe", moe_group_size=0)
