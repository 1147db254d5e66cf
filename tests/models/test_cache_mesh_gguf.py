"""KV-cache decoding, sharded forward, and the real SmolLM2 weights from GGUF against transformers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.models import KVCache, ModelConfig, Transformer, hf_io, tokenizer as tk
from resd_jax.parallel import make_mesh, state_shardings, check_sharded


def _tiny(**kw):
  return Transformer(ModelConfig.preset("tiny", **kw), rngs=nnx.Rngs(0))


def test_kv_cache_decoding_matches_full_forward():
  model = _tiny()
  rng = np.random.default_rng(1)
  toks = rng.integers(1, 512, (2, 12)).astype(np.int32)
  mask = np.ones((2, 12), bool)
  mask[1, :4] = False  # second row left-padded by 4
  h, _ = model(jnp.asarray(toks), None, jnp.asarray(mask))
  full = np.asarray(model.logits(h))
  # Prefill 7 tokens, then feed the remaining 5 one at a time.
  cache = KVCache.init(model.config, batch=2, max_len=16)
  h, cache = model(jnp.asarray(toks[:, :7]), None, jnp.asarray(mask[:, :7]), cache)
  np.testing.assert_allclose(np.asarray(model.logits(h))[mask[:, :7]], full[:, :7][mask[:, :7]], atol=1e-5)
  for t in range(7, 12):
    h, cache = model(jnp.asarray(toks[:, t:t + 1]), None, jnp.asarray(mask[:, t:t + 1]), cache)
    np.testing.assert_allclose(np.asarray(model.logits(h))[:, 0], full[:, t], atol=1e-5)
  assert int(cache.index) == 12 and cache.lengths.tolist() == [12, 8]


@pytest.mark.parametrize("preset,remat", [("tiny", "none"), ("tiny", "full"), ("tiny_moe", "none")])
def test_unrolled_layers_equal_the_scan(preset, remat):
  """scan_layers=False (a Python loop over layers) computes what the scan computes: hidden states, MoE
  statistics, gradients, and KV-cache decoding."""
  scan = Transformer(ModelConfig.preset(preset, remat=remat), rngs=nnx.Rngs(0))
  loop = Transformer(ModelConfig.preset(preset, remat=remat, scan_layers=False), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  toks = jnp.asarray(rng.integers(1, 512, (2, 10)), jnp.int32)
  mask = jnp.asarray(np.arange(10)[None, :] >= np.array([[0], [3]]))  # second row left-padded by 3
  h_scan, _, aux_scan = scan.forward_with_aux(toks, None, mask)
  h_loop, _, aux_loop = loop.forward_with_aux(toks, None, mask)
  np.testing.assert_allclose(np.asarray(h_loop), np.asarray(h_scan), rtol=1e-5, atol=1e-5)
  assert jax.tree.structure(aux_loop) == jax.tree.structure(aux_scan)
  for a, b in zip(jax.tree.leaves(aux_loop), jax.tree.leaves(aux_scan)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

  def loss(model):
    h, _ = model(toks, None, mask)
    return jnp.sum(jnp.where(mask[..., None], model.logits(h), 0.0) ** 2)

  g_scan, g_loop = nnx.grad(loss)(scan), nnx.grad(loss)(loop)
  for a, b in zip(jax.tree.leaves(g_loop), jax.tree.leaves(g_scan)):  # float32 summation order differs
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))

  cache_scan, cache_loop = (KVCache.init(m.config, batch=2, max_len=12) for m in (scan, loop))
  _, cache_scan = scan(toks[:, :7], None, mask[:, :7], cache_scan)
  _, cache_loop = loop(toks[:, :7], None, mask[:, :7], cache_loop)
  h_scan, _ = scan(toks[:, 7:], None, mask[:, 7:], cache_scan)
  h_loop, _ = loop(toks[:, 7:], None, mask[:, 7:], cache_loop)
  np.testing.assert_allclose(np.asarray(h_loop), np.asarray(h_scan), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset,kw", [
    ("tiny", {}), ("tiny", {"scan_layers": False, "remat": "full"}),
    ("tiny", {"attn_block": 3, "attn_max_unrolled_blocks": 1}),  # the long-context scan over query blocks
    ("tiny_moe", {})])
def test_out_start_equals_slicing_the_full_forward(preset, kw):
  """Running the last layer only for positions >= out_start gives those positions' hidden states and gradients."""
  model = Transformer(ModelConfig.preset(preset, **kw), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(4)
  toks = jnp.asarray(rng.integers(1, 512, (2, 11)), jnp.int32)
  mask = jnp.asarray(np.arange(11)[None, :] >= np.array([[0], [4]]))  # second row left-padded by 4
  full, _ = model(toks, None, mask)
  for start in (1, 6, 10):
    part, _ = model(toks, None, mask, out_start=start)
    assert part.shape == (2, 11 - start, model.config.hidden_size)
    np.testing.assert_allclose(np.asarray(part), np.asarray(full[:, start:]), rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.standard_normal((2, 5, model.config.hidden_size)), jnp.float32)
  g_full = nnx.grad(lambda m: jnp.sum(m(toks, None, mask)[0][:, 6:] * weights))(model)
  g_part = nnx.grad(lambda m: jnp.sum(m(toks, None, mask, out_start=6)[0] * weights))(model)
  for a, b in zip(jax.tree.leaves(g_part), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()) + 1e-7)
  with pytest.raises(ValueError, match="out_start=11 must be in"):
    model(toks, None, mask, out_start=11)
  with pytest.raises(ValueError, match="out_start is for full forwards"):
    model(toks[:, :3], None, mask[:, :3], KVCache.init(model.config, batch=2, max_len=8), out_start=1)


def test_block_attention_equals_single_block():
  """Unrolled triangle-skipping blocks and the long-context scan path both equal one dense block."""
  toks = np.random.default_rng(2).integers(1, 512, (2, 37)).astype(np.int32)
  mask = np.ones_like(toks, bool)
  mask[0, :9] = False
  outs, grads = [], []
  for block, unrolled in ((256, 16), (8, 16), (8, 2)):
    model = _tiny(attn_block=block, attn_max_unrolled_blocks=unrolled)
    graphdef, state = nnx.split(model)

    def loss(state):
      m = nnx.merge(graphdef, state)
      logits = m.logits(m(jnp.asarray(toks), None, jnp.asarray(mask))[0])
      return jnp.sum(jnp.where(jnp.asarray(mask)[..., None], jax.nn.log_softmax(logits), 0.0)), logits

    (_, logits), g = jax.value_and_grad(loss, has_aux=True)(state)
    outs.append(np.asarray(logits)[mask])
    grads.append(np.asarray(g["layers"]["q"].get_value()))
  for o, g in zip(outs[1:], grads[1:]):
    np.testing.assert_allclose(o, outs[0], atol=1e-5)
    np.testing.assert_allclose(g, grads[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape,attn_impl", [((2, 4), "blocked"), ((8, 1), "blocked"), ((2, 4), "xla")])
def test_sharded_forward_equals_single_device(shape, attn_impl):
  """attn_impl="xla" stands in for cudnn here: the same row rotation, on batch-sharded arrays."""
  cfg = ModelConfig.preset("tiny", vocab_size=512, hidden_size=64, intermediate_size=128, attn_impl=attn_impl)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  toks = jnp.asarray(np.random.default_rng(3).integers(1, 512, (8, 10)), jnp.int32)
  mask = jnp.ones(toks.shape, bool).at[0, :3].set(False)
  want = np.asarray(model.logits(model(toks, None, mask)[0]))
  mesh = make_mesh(data=shape[0], fsdp=shape[1])
  graphdef, state = nnx.split(model)
  with jax.set_mesh(mesh):
    state = jax.device_put(state, state_shardings(state, mesh))
    sharded = nnx.merge(graphdef, state)

    @jax.jit
    def fwd(toks, mask):
      return sharded.logits(sharded(toks, None, mask)[0])
    got = np.asarray(fwd(toks, mask))
  np.testing.assert_allclose(got, want, atol=1e-5)
  emb = nnx.state(sharded)["embed"].get_value()
  if shape[1] > 1:
    assert len(emb.sharding.device_set) == 8 and emb.addressable_shards[0].data.shape[1] == 64 // shape[1]


def test_large_parameters_are_sharded_on_fsdp():
  abstract = nnx.eval_shape(lambda: Transformer(ModelConfig.preset("small"), rngs=nnx.Rngs(0)))
  state = nnx.state(abstract)
  check_sharded(state, make_mesh(fsdp=8), min_elements=1 << 16)
  with pytest.raises(ValueError, match="not sharded"):
    check_sharded(state, make_mesh(data=8), min_elements=1 << 16)


def test_mesh_config_errors():
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="needs 6 devices"):
    make_mesh(data=2, fsdp=3)


# ------------------------------------------------------------------------------------------------ real weights
@pytest.fixture(scope="module")
def smollm():
  pytest.importorskip("gguf")
  try:
    path = hf_io.embedded_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  return path


def test_smollm2_gguf_matches_transformers(smollm):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tok = tk.load_gguf_tokenizer(smollm)
  ref = transformers.AutoModelForCausalLM.from_pretrained(smollm.parent, gguf_file=smollm.name,
                                                          local_files_only=True, dtype=torch.float32).eval()
  ours, cfg = hf_io.load_gguf(smollm)
  assert cfg.num_layers == 30 and cfg.tie_embeddings
  ids = tk.chat_tokens(tok, [{"role": "user", "content": "What is the capital of France?"}])
  with torch.no_grad():
    want = ref(input_ids=torch.tensor([ids])).logits[0].numpy()
  h, _ = ours(jnp.asarray([ids], jnp.int32))
  got = np.asarray(ours.logits(h))[0]
  assert np.abs(got - want).max() <= 1e-3
  # First 16 greedy tokens identical (ours with the KV cache; transformers with its own cache), past EOS too.
  ref_out, past, inp = [], None, torch.tensor([ids])
  with torch.no_grad():
    for _ in range(16):
      o = ref(input_ids=inp, past_key_values=past, use_cache=True)
      past = o.past_key_values
      ref_out.append(int(o.logits[0, -1].argmax()))
      inp = torch.tensor([[ref_out[-1]]])
  cache = KVCache.init(cfg, 1, len(ids) + 16)
  h, cache = ours(jnp.asarray([ids], jnp.int32), None, None, cache)
  out = []
  for _ in range(16):
    nxt = int(jnp.argmax(ours.logits(h[:, -1])[0]))
    out.append(nxt)
    h, cache = ours(jnp.asarray([[nxt]], jnp.int32), None, None, cache)
  assert out == ref_out, (tk.decode(tok, out), tk.decode(tok, ref_out))
  assert tk.decode(tok, out).startswith("The capital of France is Paris")


def test_strip_reasoning_cases():
  assert tk.strip_reasoning("<think>a</think> answer") == "answer"
  assert tk.strip_reasoning("reasoning only closes</think>\n\nfinal") == "final"
  assert tk.strip_reasoning("x</think> y </think> z") == "y </think> z"
  assert tk.strip_reasoning("truncated mid thought") == "truncated mid thought"
  assert tk.strip_reasoning("<think>a</think>b<think>c</think>d") == "bd"
