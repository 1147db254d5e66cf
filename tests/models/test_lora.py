"""LoRA adapters on the model: zero B is the base model exactly, the adapted forward against an independent
reference (explicit W + scale A B), merged export and the PEFT adapter through `transformers` + `peft`, and
the PEFT import round trip and its errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.models import ModelConfig, Transformer, hf_io, lora, lora_io

LCFG = lora.LoRAConfig(enabled=True, rank=4, alpha=8.0)


def tokens(b=2, t=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, 160, (b, t)), jnp.int32)


def with_random_b(model, std=0.2, seed=1):
  """The model with every B leaf drawn at random (a fresh adapter's B is zero)."""
  graphdef, state = nnx.split(model)
  flat = nnx.to_flat_state(jax.tree.map(jnp.copy, state))      # a copy: `model` stays as it is
  key = jax.random.key(seed)
  for path, var in flat:
    if str(path[-1]).endswith(lora.SUFFIX_B):
      key, sub = jax.random.split(key)
      var.set_value(std * jax.random.normal(sub, var[...].shape, var[...].dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


@jax.jit
def _logits(graphdef, state, toks, mask):
  model = nnx.merge(graphdef, state)
  return model.logits(model(toks, attn_mask=mask)[0])


def logits(model, toks, mask=None):
  graphdef, state = nnx.split(model)
  return _logits(graphdef, state, toks, jnp.ones(toks.shape, bool) if mask is None else mask)


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe"])
def test_zero_b_equals_the_base_model_exactly(preset):
  base = Transformer(ModelConfig.preset(preset), rngs=nnx.Rngs(0))
  adapted = lora.attach(base, LCFG, seed=5)
  toks = tokens(t=10)
  assert np.array_equal(np.asarray(logits(adapted, toks)), np.asarray(logits(base, toks)))
  # Built directly with adapters (not attached), the base weights are drawn as without them.
  direct = Transformer(ModelConfig.preset(preset, **LCFG.model_overrides()), rngs=nnx.Rngs(0))
  assert np.array_equal(np.asarray(direct.layers.q[...]), np.asarray(base.layers.q[...]))


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe"])
def test_adapted_forward_and_merge_equal_explicit_weights(preset):
  """Reference: the plain model whose weights are set, in NumPy float64, to W + (alpha / r) A B."""
  base = Transformer(ModelConfig.preset(preset), rngs=nnx.Rngs(0))
  adapted = with_random_b(lora.attach(base, LCFG, seed=5))
  cfg = adapted.config
  ref_state = jax.tree.map(jnp.copy, nnx.state(base, nnx.Param))
  for name in lora.weight_names(cfg):
    w = np.asarray(getattr(adapted.layers, name)[...], np.float64)
    a = np.asarray(getattr(adapted.layers, name + "_lora_a")[...], np.float64)
    b = np.asarray(getattr(adapted.layers, name + "_lora_b")[...], np.float64)
    r = a.shape[-1]
    if name.startswith("expert_"):   # [L, E, in, r] x [L, E, r, out]
      delta = np.einsum("leir,lero->leio", a, b)
    else:                            # flatten the input and output dimensions
      delta = (a.reshape(a.shape[0], -1, r) @ b.reshape(b.shape[0], r, -1)).reshape(w.shape)
    ref_state["layers"][name].set_value(jnp.asarray(w + 2.0 * delta, jnp.float32))
  reference = nnx.merge(nnx.graphdef(base), ref_state)
  toks = tokens()
  want = np.asarray(logits(reference, toks))
  got = np.asarray(logits(adapted, toks))
  merged = np.asarray(logits(lora.merged_model(adapted), toks))
  assert np.abs(got - np.asarray(logits(base, toks))).max() > 1e-3    # the adapters matter
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  np.testing.assert_allclose(merged, got, atol=1e-5, rtol=0)


def test_cached_decoding_uses_the_adapters_unmerged():
  """The sampler's path (prefill + one token at a time through the KV cache) on the adapted model gives the
  merged model's full-forward logits: generation needs no merge."""
  from resd_jax.models import KVCache
  adapted = with_random_b(lora.attach(Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0)), LCFG, seed=5))
  toks = tokens(t=10, seed=4)
  full = np.asarray(logits(lora.merged_model(adapted), toks))
  step = nnx.jit(lambda m, t, c: m(t, None, jnp.ones(t.shape, bool), c))
  cache = KVCache.init(adapted.config, batch=2, max_len=12)
  h, cache = step(adapted, toks[:, :6], cache)
  got = [np.asarray(adapted.logits(h))]
  for t in range(6, 10):
    h, cache = step(adapted, toks[:, t:t + 1], cache)
    got.append(np.asarray(adapted.logits(h)))
  np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=1e-5, rtol=0)


def test_config_errors():
  with pytest.raises(ValueError, match="targets"):
    lora.LoRAConfig(targets=("q", "qq"))
  with pytest.raises(ValueError, match="dropout"):
    lora.LoRAConfig(dropout=0.1)
  with pytest.raises(ValueError, match="rank"):
    lora.LoRAConfig(rank=0)
  with pytest.raises(ValueError, match="lora_targets"):
    ModelConfig.preset("tiny", lora_rank=4, lora_targets=())
  base = Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already has"):
    lora.attach(lora.attach(base, LCFG), LCFG)


# ------------------------------------------------------------------------------------------------ HF / PEFT
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory):
  """A random tiny Qwen3 saved as HF, our adapted model (random B) on it, and its PEFT + merged exports."""
  hf_cfg = transformers.Qwen3Config(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                    tie_word_embeddings=False, rope_theta=10000.0, max_position_embeddings=512)
  torch.manual_seed(0)
  hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).float().eval()
  root = tmp_path_factory.mktemp("lora")
  hf.save_pretrained(root / "base", safe_serialization=True)
  ours, _ = hf_io.load_hf(root / "base")
  adapted = with_random_b(lora.attach(ours, lora.LoRAConfig(enabled=True, rank=4, alpha=8.0,
                                                             targets=("q", "k", "v", "o", "gate", "up", "down"))))
  lora_io.save_peft(adapted, root / "peft", base_model_name_or_path=str(root / "base"))
  lora_io.save_merged(adapted, root / "merged")
  return root, adapted


def _batch():
  toks = np.random.default_rng(3).integers(1, 160, (2, 9))
  mask = np.ones((2, 9), bool)
  mask[1, :3] = False
  return toks, mask


def _ours(model):
  toks, mask = _batch()
  out = np.asarray(logits(model, jnp.asarray(toks, jnp.int32), jnp.asarray(mask)))
  return np.where(mask[..., None], out, 0.0)


def _torch(model):
  toks, mask = _batch()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(toks), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
  return np.where(mask[..., None], out, 0.0)


def test_merged_export_loads_in_transformers(hf_setup, tmp_path):
  from safetensors.numpy import load_file
  root, adapted = hf_setup
  hf = transformers.AutoModelForCausalLM.from_pretrained(root / "merged", torch_dtype=torch.float32).eval()
  np.testing.assert_allclose(_torch(hf), _ours(adapted), atol=1e-4, rtol=0)
  # hf_io.save_hf of the adapted model writes the same merged tensors.
  hf_io.save_hf(adapted, tmp_path / "direct")
  a, b = load_file(root / "merged" / "model.safetensors"), load_file(tmp_path / "direct" / "model.safetensors")
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_peft_adapter_loads_onto_the_hf_base(hf_setup):
  peft = pytest.importorskip("peft")
  root, adapted = hf_setup
  cfg = json.loads((root / "peft" / "adapter_config.json").read_text())
  assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", 4, 8.0)
  base = transformers.AutoModelForCausalLM.from_pretrained(root / "base", torch_dtype=torch.float32).eval()
  before = _torch(base)
  model = peft.PeftModel.from_pretrained(base, str(root / "peft")).eval()
  got = _torch(model)
  assert np.abs(got - before).max() > 1e-3        # the adapter was applied ...
  np.testing.assert_allclose(got, _ours(adapted), atol=1e-4, rtol=0)   # ... as ours


def test_peft_import_round_trip_and_errors(hf_setup, tmp_path):
  root, adapted = hf_setup
  plain, _ = hf_io.load_hf(root / "base")
  loaded = lora_io.load_peft(plain, root / "peft")             # attaches, then fills
  for name in lora.weight_names(adapted.config):
    for suffix in (lora.SUFFIX_A, lora.SUFFIX_B):
      assert np.array_equal(np.asarray(getattr(loaded.layers, name + suffix)[...]),
                            np.asarray(getattr(adapted.layers, name + suffix)[...])), name + suffix
  other = lora.attach(plain, lora.LoRAConfig(enabled=True, rank=2))
  with pytest.raises(hf_io.WeightsError, match="rank 4"):
    lora_io.load_peft(other, root / "peft")
  with pytest.raises(hf_io.WeightsError, match="adapter_config.json: missing"):
    lora_io.load_peft(plain, tmp_path)
  with pytest.raises(hf_io.WeightsError, match="not empty"):
    lora_io.save_peft(adapted, root / "peft")
