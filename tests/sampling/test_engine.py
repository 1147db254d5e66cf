"""Rollout engine: paged attention (XLA paths and the Pallas TPU / GPU kernels in their interpreters) against a
dense float64 reference, the page allocator, and generate_paged against the static sampler (same keys: same
tokens and log-probs) under continuous batching, chunked prefill, preemption, shared prefixes, per-row
max_new_tokens, stops, a mesh, the GPU kernel; compile counts; bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.models import ModelConfig, Transformer
from resd_jax.parallel import make_mesh, state_shardings
from resd_jax.sampling import SamplingParams, generate
from resd_jax.sampling import engine as eng
from resd_jax.sampling.engine import EngineConfig, generate_paged
from resd_jax.sampling.paged_attention import paged_attention, ragged_decode_attention
from resd_jax.sampling.paged_cache import PageAllocator, PrefixIndex, bytes_per_page, pages_for_budget

# One engine setting for the model tests, so they share compiled programs: 8-token pages, 4 slots (fewer than
# the prompts: rows wait and are admitted as others finish), 16-token prefill chunks (the 40-token prompt
# prefills in three), 4 decode steps per call.
EC = EngineConfig(page_size=8, slots=4, prefill_chunk=16, decode_steps=4)
_rng = np.random.default_rng(0)
PROMPTS = [[int(x) for x in _rng.integers(1, 512, n)] for n in (5, 17, 30, 40, 3, 11)]


@pytest.fixture(scope="module")
def model():
  return Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))


def _layer(pages: np.ndarray) -> jax.Array:
  """Pages built as [P, page, KVH, Dh] (easy to read back per position) in the pool's layer layout
  [KVH, P, page, Dh]."""
  return jnp.asarray(np.moveaxis(pages, 2, 0))


def _dense_decode_reference(q_row, kp, vp, pages, n):
  """float64 attention of one decode query q_row [H, Dh] over the first n keys held in `pages` (ids into kp /
  vp [P, page, KVH, Dh]): [H, Dh]."""
  k = np.concatenate([kp[p] for p in pages], 0).astype(np.float64)[:n]      # dense [n, KVH, Dh]
  v = np.concatenate([vp[p] for p in pages], 0).astype(np.float64)[:n]
  h, dh = q_row.shape
  g = h // k.shape[1]
  out = np.zeros((h, dh))
  for j in range(h):
    s = k[:, j // g] @ q_row[j].astype(np.float64) / np.sqrt(dh)
    w = np.exp(s - s.max())
    out[j] = (w / w.sum()) @ v[:, j // g]
  return out


def _same(a, b, atol=1e-4):
  assert a.tokens == b.tokens
  assert a.lengths == b.lengths and a.finish_reasons == b.finish_reasons
  for x, y in zip(a.logprobs, b.logprobs):
    np.testing.assert_allclose(x, y, atol=atol)
  for x, y in zip(a.sampling_logprobs, b.sampling_logprobs):
    np.testing.assert_allclose(x, y, atol=atol)


# ------------------------------------------------------------------------------------------------ attention
def test_paged_attention_equals_dense_reference():
  rng = np.random.default_rng(1)
  n_pages, page, kvh, g, dh = 12, 4, 2, 3, 8
  kp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
  vp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
  table = np.array([[5, 2, 9, 0], [7, 11, 0, 0]], np.int32)          # row 0: 3 pages, row 1: 2 (0 = trash)
  lens = [11, 6]                                                     # tokens held per row
  t = 3                                                              # a 3-token chunk ending at each row's end
  q = rng.normal(size=(2, t, kvh * g, dh)).astype(np.float32)
  q_pos = np.array([[l - t + i for i in range(t)] for l in lens], np.int32)
  valid = np.array([[True] * t, [True, True, False]])                # row 1's last query is padding
  got = np.asarray(paged_attention(jnp.asarray(q), jnp.asarray(q_pos), jnp.asarray(valid), _layer(kp),
                                   _layer(vp), jnp.asarray(table), dtype=jnp.float32))
  # the same pages as layer 1 of a stacked pool [L, KVH, P, page, Dh], read in place
  stack = lambda x: jnp.stack([jnp.zeros_like(_layer(x)), _layer(x), -_layer(x)])  # noqa: E731
  np.testing.assert_array_equal(got, paged_attention(jnp.asarray(q), jnp.asarray(q_pos), jnp.asarray(valid),
                                                     stack(kp), stack(vp), jnp.asarray(table), dtype=jnp.float32,
                                                     layer=1))
  for b in range(2):
    k = np.concatenate([kp[p] for p in table[b]], 0).astype(np.float64)    # dense [S, KVH, Dh]
    v = np.concatenate([vp[p] for p in table[b]], 0).astype(np.float64)
    for i in range(t):
      if not valid[b, i]:
        assert np.all(np.isfinite(got[b, i]))
        continue
      n = q_pos[b, i] + 1                                            # causal: keys 0..pos
      for h in range(kvh * g):
        s = k[:n, h // g] @ q[b, i, h].astype(np.float64) / np.sqrt(dh)
        p = np.exp(s - s.max())
        np.testing.assert_allclose(got[b, i, h], (p / p.sum()) @ v[:n, h // g], atol=1e-5)


def test_pallas_decode_kernel_in_tpu_interpret_mode_equals_dense_reference():
  """The TPU kernel path (selected only on a TPU) run by Pallas' TPU interpreter on the CPU: pool layout, page
  table and lengths reach the kernel right (one token too many or too few is off by 0.1-0.2 here). The
  interpreter's arithmetic is not the TPU's: it lands 2.4e-3 from float64 where the XLA paths land 1e-5."""
  pltpu = pytest.importorskip("jax.experimental.pallas.tpu")
  if not hasattr(pltpu, "force_tpu_interpret_mode"):
    pytest.skip("this jax has no TPU interpret mode")
  from resd_jax.sampling.paged_attention import pallas_decode_attention
  rng = np.random.default_rng(0)
  b, h, kvh, dh, n_pages, page = 2, 4, 2, 128, 9, 16                 # the kernel wants Dh = 128
  q = rng.normal(size=(b, 1, h, dh)).astype(np.float32)
  kp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
  vp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
  table = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int32)
  q_pos = np.array([[40], [63]], np.int32)                           # 41 and 64 tokens held
  with pltpu.force_tpu_interpret_mode():
    got = np.asarray(pallas_decode_attention(jnp.asarray(q), jnp.asarray(q_pos), jnp.ones((b, 1), bool),
                                             _layer(kp), _layer(vp), jnp.asarray(table), dtype=jnp.float32,
                                             kernel="tpu"))
  for r in range(b):
    np.testing.assert_allclose(got[r, 0], _dense_decode_reference(q[r, 0], kp, vp, table[r], q_pos[r, 0] + 1),
                               atol=5e-3)


def test_pallas_gpu_decode_kernel_in_interpret_mode_equals_dense_reference():
  """The GPU (Triton) kernel path, opt-in on a GPU (`engine.decode_kernel='pallas'`), run by Pallas' interpreter
  on the CPU: page table, lengths (one token off moves the output by 0.1-0.2 here), an invalid row, GQA groups
  padded to the kernel's 16-head blocks, several key partitions. Tables of 8 pages: 1 partition of 8 pages a
  block; of 32 pages: 4 partitions."""
  from resd_jax.sampling.paged_attention import _gpu_blocks, pallas_decode_attention
  assert _gpu_blocks(8, 16) == (1, 8) and _gpu_blocks(32, 16) == (4, 8) and _gpu_blocks(256, 16) == (16, 8)
  assert _gpu_blocks(16, 1) == (1, 16)                               # 1-token pages: 16 a block (Triton's dot)
  rng = np.random.default_rng(5)
  b, h, kvh, dh, page = 3, 4, 2, 16, 4
  for nb in (8, 32):
    n_pages = b * nb + 1
    q = rng.normal(size=(b, 1, h, dh)).astype(np.float32)
    kp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
    vp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
    table = (1 + rng.permutation(b * nb)).reshape(b, nb).astype(np.int32)
    q_pos = np.array([[2], [nb * page - 1], [nb * page // 2 + 1]], np.int32)
    valid = np.array([[True], [True], [False]])
    got = np.asarray(pallas_decode_attention(jnp.asarray(q), jnp.asarray(q_pos), jnp.asarray(valid), _layer(kp),
                                             _layer(vp), jnp.asarray(table), dtype=jnp.float32, kernel="gpu"))
    assert np.all(np.isfinite(got))
    for r in (0, 1):
      np.testing.assert_allclose(got[r, 0], _dense_decode_reference(q[r, 0], kp, vp, table[r], q_pos[r, 0] + 1),
                                 atol=1e-5)


def test_decode_kernel_choice():
  from resd_jax.sampling.paged_attention import decode_attention_impl
  assert decode_attention_impl("auto", "cpu") == "xla" and decode_attention_impl("auto", "gpu") == "xla"
  assert decode_attention_impl("xla", "tpu") == "xla"
  assert decode_attention_impl("pallas", "gpu") == "pallas_gpu" and decode_attention_impl("pallas", "cuda") == "pallas_gpu"
  assert decode_attention_impl("auto", "tpu") == "pallas_tpu" and decode_attention_impl("pallas", "tpu") == "pallas_tpu"
  with pytest.raises(ValueError, match="decode_kernel='pallas' needs a TPU or GPU backend, this one is 'cpu'"):
    decode_attention_impl("pallas", "cpu")
  with pytest.raises(ValueError, match="engine.decode_kernel must be one of"):
    EngineConfig(decode_kernel="triton")


def test_ragged_decode_attention_equals_dense_reference():
  rng = np.random.default_rng(2)
  n_pages, page, kvh, g, dh = 12, 4, 2, 2, 8
  kp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
  vp = rng.normal(size=(n_pages, page, kvh, dh)).astype(np.float32)
  own = {0: [5, 2, 9], 1: [], 2: [7, 11]}                            # row 1: an empty slot (no pages)
  q_pos = np.array([[10], [0], [4]], np.int32)                       # row 0 holds 11 tokens, row 2 holds 5
  valid = np.array([[True], [False], [True]])
  flat = [p for r in own for p in own[r]] + [0, 0, 0]                # padded to 8 entries
  rows = [r for r in own for _ in own[r]] + [2, 2, 2]
  first = [k * page for r in own for k in range(len(own[r]))] + [1 << 30] * 3
  q = rng.normal(size=(3, 1, kvh * g, dh)).astype(np.float32)
  lists = [jnp.asarray(np.array(x, np.int32)) for x in (flat, rows, first)]
  got = np.asarray(ragged_decode_attention(*map(jnp.asarray, (q, q_pos, valid)), _layer(kp), _layer(vp), *lists,
                                           dtype=jnp.float32))
  stack = lambda x: jnp.stack([jnp.zeros_like(_layer(x)), _layer(x)])  # noqa: E731   (layer 1 of a stacked pool)
  np.testing.assert_array_equal(got, ragged_decode_attention(*map(jnp.asarray, (q, q_pos, valid)), stack(kp),
                                                             stack(vp), *lists, dtype=jnp.float32, layer=1))
  assert np.all(np.isfinite(got))
  for b in (0, 2):
    np.testing.assert_allclose(got[b, 0], _dense_decode_reference(q[b, 0], kp, vp, own[b], q_pos[b, 0] + 1),
                               atol=1e-5)


def test_page_allocator_refcounts_and_prefix_index():
  a = PageAllocator(6)
  assert a.capacity == 5 and a.free == 5
  x = a.alloc(3)
  assert 0 not in x and a.free == 2
  a.retain(x[:2])
  assert a.release(x) == [x[2]] and a.free == 3                     # shared pages stay held
  assert sorted(a.release(x[:2])) == sorted(x[:2]) and a.free == 5
  with pytest.raises(RuntimeError, match="release of free page"):
    a.release([x[0]])
  with pytest.raises(RuntimeError, match="6 pages asked"):
    a.alloc(6)
  idx = PrefixIndex(4)
  toks = list(range(10))
  idx.add(toks, [3, 4, 5], 10)                                       # two full pages indexed
  assert len(idx) == 2
  assert idx.match(toks, 9) == [3, 4] and idx.match(toks, 7) == [3]
  assert idx.match([0, 1, 2, 3, 9, 9, 9, 9, 1], 8) == [3]            # diverges in the second page
  assert idx.match([9] + toks[1:], 9) == []
  idx.drop([4])
  assert idx.match(toks, 9) == [3]


def test_pool_sizing_from_budget():
  cfg = ModelConfig.preset("tiny")
  per = bytes_per_page(cfg, 16)
  assert per == 2 * cfg.num_layers * 16 * cfg.num_kv_heads * cfg.head_dim * 4
  assert pages_for_budget(cfg, 10 * per + per // 2, 16) == 10


# ------------------------------------------------------------------------------------------------ engine
def test_greedy_and_sampled_equal_static_sampler(model):
  for sp in (SamplingParams(temperature=0, max_new_tokens=12),
             SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=3)):
    stats = {}
    got = generate_paged(model, PROMPTS, sp, engine=EC, stats=stats)
    _same(got, generate(model, PROMPTS, sp))
    assert stats["slots"] == 4 and stats["decode_calls"] > 3


def test_per_row_max_new_tokens_and_row_ids(model):
  sp = SamplingParams(temperature=1.0, max_new_tokens=12, seed=5)
  caps = [12, 1, 7, 3, 12, 5]
  ref = generate(model, PROMPTS, sp, row_ids=[10, 11, 12, 13, 14, 15])
  got = generate_paged(model, PROMPTS, sp, row_ids=[10, 11, 12, 13, 14, 15], max_new_tokens=caps, engine=EC)
  for i, c in enumerate(caps):                                       # the key schedule is per step: a prefix
    assert got.tokens[i] == ref.tokens[i][:c] and got.lengths[i] == c
    np.testing.assert_allclose(got.logprobs[i], ref.logprobs[i][:c], atol=1e-4)
  assert got.finish_reasons == ["length"] * 6
  with pytest.raises(ValueError, match="one integer >= 1 per prompt"):
    generate_paged(model, PROMPTS, sp, max_new_tokens=[3], engine=EC)


def test_stop_tokens_and_stop_strings_as_static(model):
  greedy = SamplingParams(temperature=0, max_new_tokens=12)
  ref = generate(model, PROMPTS, greedy)
  stop = next(t for j, t in enumerate(ref.tokens[0]) if j >= 2 and t not in ref.tokens[0][:j])
  sp = greedy.replace(stop_token_ids=(stop, 7))
  _same(generate_paged(model, PROMPTS, sp, engine=EC), generate(model, PROMPTS, sp))
  decode = lambda ids: "".join(chr(97 + i % 26) for i in ids)
  sp = greedy.replace(stop_strings=(decode(ref.tokens[2][3:5]), decode(ref.tokens[4][6:7])))
  got = generate_paged(model, PROMPTS, sp, engine=EC, decode_text=decode)
  _same(got, generate(model, PROMPTS, sp, decode_text=decode))
  assert "stop" in got.finish_reasons


def test_engine_decoding_through_the_gpu_kernel_equals_static_sampler(model, monkeypatch):
  # engine.decode_kernel='pallas' on a GPU: decode attention through the Pallas GPU kernel with the rows' page
  # tables (its interpreter here), everything else unchanged. Same tokens and log-probs as the static sampler.
  monkeypatch.setattr(eng, "decode_attention_impl", lambda choice="auto": "pallas_gpu")
  for sp in (SamplingParams(temperature=0, max_new_tokens=6),
             SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=6, seed=3)):
    _same(generate_paged(model, PROMPTS, sp, engine=EC), generate(model, PROMPTS, sp))


def test_unrolled_model_equals_static_sampler():
  # model.scan_layers=False: the engine runs the layers unrolled over the stacked pool, each layer's weights
  # sliced once per decode call; same results as the static sampler.
  unrolled = Transformer(ModelConfig.preset("tiny", scan_layers=False), rngs=nnx.Rngs(0))
  sp = SamplingParams(temperature=0.8, max_new_tokens=6, seed=11)
  _same(generate_paged(unrolled, PROMPTS, sp, engine=EC), generate(unrolled, PROMPTS, sp))


def test_small_pool_waits_and_preempts_without_changing_results(model):
  sp = SamplingParams(temperature=0.7, max_new_tokens=12, seed=9)
  stats = {}
  # 10 usable pages of 8 tokens: the 40-token prompt + 12 new needs 7, so rows wait for pages and running rows
  # get preempted (and resumed from their own tokens) when they outgrow the pool.
  small = EngineConfig(page_size=8, slots=4, prefill_chunk=16, decode_steps=4, num_pages=11)
  got = generate_paged(model, PROMPTS, sp, engine=small, stats=stats)
  _same(got, generate(model, PROMPTS, sp))
  assert stats["preemptions"] > 0


def test_admission_keeps_free_only_the_pages_rows_will_use(model):
  # 4 rows of 40 prompt + 8 new tokens need 3 pages of 16 each, and the pool has exactly 12 (+ trash). Every
  # row is admitted at once and decodes in one call: the decode headroom counts the pages a row can still use
  # (none here: its 3 pages hold prompt and answer), not decode_steps tokens per row.
  rng = np.random.default_rng(8)
  prompts = [[int(x) for x in rng.integers(1, 512, 40)] for _ in range(4)]
  sp = SamplingParams(temperature=0, max_new_tokens=8)
  stats = {}
  got = generate_paged(model, prompts, sp, engine=EngineConfig(page_size=16, slots=4, decode_steps=32,
                                                               num_pages=13), stats=stats)
  _same(got, generate(model, prompts, sp))
  assert stats["decode_calls"] == 1 and stats["decode_steps"] == 7 and stats["preemptions"] == 0


def test_shared_prefixes_prefill_once_same_results(model):
  sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=2)
  system = PROMPTS[3][:32]                                           # 4 full pages of common prefix
  # A group of 4 whole 40-token prompts (5 full pages), a group of 3 whole 30-token prompts (3 full pages + a
  # partial one, copied on write for each sharer), a group of 2 three-token prompts (only a partial page), and
  # two prompts that share the system prefix's full pages only.
  # 16 slots: every row is admitted as soon as the row it waits for has prefilled, while that row still runs.
  prompts = ([PROMPTS[3]] * 4 + [system + [7, 8, 9], system + PROMPTS[1]] + [PROMPTS[2]] * 3
             + [PROMPTS[4]] * 2)
  ec = EngineConfig(page_size=8, slots=16, prefill_chunk=16, decode_steps=4)
  on, off = {}, {}
  got = generate_paged(model, prompts, sp, engine=ec, stats=on)
  plain = generate_paged(model, prompts, sp, engine=EngineConfig(**{**ec.__dict__, "share_prefixes": False}),
                         stats=off)
  _same(got, generate(model, prompts, sp))
  _same(plain, got)
  assert off["shared_pages"] == 0 and off["cow_rows"] == 0
  # every sharer of a whole prompt skips its prefill: 3 + 2 + 1 rows, one partial page copied for each of the
  # 30- and 3-token prompts' sharers; the two system-prefix rows share its 4 full pages.
  assert on["cow_rows"] == 6 and on["cow_pages"] == 3
  assert on["shared_pages"] == 3 * 5 + 2 * 4 + 2 * 3
  assert on["prefill_tokens"] == 40 + 3 + 17 + 30 + 3                # each prompt once, the system rows' tails
  assert off["prefill_tokens"] == sum(map(len, prompts))
  for group in (slice(0, 4), slice(6, 9), slice(9, 11)):             # the group's samples differ (own keys)
    assert len({tuple(t) for t in got.tokens[group]}) > 1


def test_long_prompt_prefills_in_blocks_that_grow_with_its_span(model):
  # A 1,100-token prompt prefills in 64-token pieces whose attention spans grow 128 -> 2,048 tokens; the query
  # blocks grow with the span (span / 32 tokens, at least the page and at most the buffer), so its last pieces
  # run as one 64-token block while the short prompts packed at the start use 8-token blocks. Same tokens and
  # log-probs as the static sampler, greedy and sampled.
  rng = np.random.default_rng(4)
  prompts = [[int(x) for x in rng.integers(1, 512, 1100)]] + PROMPTS[:3]
  ec = EngineConfig(page_size=8, slots=4, prefill_chunk=64, decode_steps=4)
  for sp in (SamplingParams(temperature=0, max_new_tokens=6), SamplingParams(temperature=0.8, max_new_tokens=6,
                                                                               seed=4)):
    stats = {}
    _same(generate_paged(model, prompts, sp, engine=ec, stats=stats), generate(model, prompts, sp))
    assert set(stats["prefill_block_sizes"]) == {8, 16, 32, 64}    # spans <= 256, 512, 1,024, 2,048 tokens
    assert stats["prefill_tokens"] == sum(map(len, prompts))
  assert eng.prefill_blocks(ec, 1, 128) == (8, 8) and eng.prefill_blocks(ec, 1, 2048) == (64, 1)
  assert eng.prefill_blocks(ec, 2, 2048) == (32, 2) and eng.prefill_blocks(ec, 1, 1 << 15) == (64, 1)


def test_prefill_buffer_shrinks_to_the_tokens_waiting(model):
  # A call runs engine.prefill_chunk tokens only when that many wait: one 20-token prompt (3 blocks of 8) runs in
  # the 64-token minimum buffer, three 30-token prompts (4 blocks each, 96 tokens) in 128, not 256. Same results.
  ec = EngineConfig(page_size=8, slots=4, prefill_chunk=256, decode_steps=4)
  sp = SamplingParams(temperature=0.7, max_new_tokens=5, seed=6)
  rng = np.random.default_rng(7)
  for lens, buffer in (([20], 64), ([30, 30, 30], 128), ([100, 100], 256)):
    prompts = [[int(x) for x in rng.integers(1, 512, n)] for n in lens]
    stats = {}
    _same(generate_paged(model, prompts, sp, engine=ec, stats=stats), generate(model, prompts, sp))
    assert stats["prefill_calls"] == 1 and stats["prefill_buffer_tokens"] == buffer
  assert eng.prefill_blocks(ec, 1, 128, 24) == (8, 8) and eng.prefill_blocks(ec, 1, 128, 1000) == (8, 32)
  assert eng.prefill_blocks(ec, 4, 128, 24) == (8, 8)                # 8 blocks: a multiple of the divisor


def test_compile_count_bounded_over_varied_lengths(model):
  # Prefill packs the pieces of several rows into one fixed buffer (2 blocks of 8 tokens here), so its programs
  # depend on nothing but the attention span (pages read per block, a power of two >= 128 tokens); decode's on
  # the flat pages bucket (>= 128 tokens per slot) and the slots (min(engine.slots, rows rounded up to a power
  # of two)). A fixed pool, so the pool's shape is the same for every call.
  ec = EngineConfig(page_size=8, slots=4, prefill_chunk=16, decode_steps=4, num_pages=128)
  eng.prefill_fn.clear_cache()
  eng.decode_fn.clear_cache()
  eng.share_fn.clear_cache()
  assert eng.compile_counts() == {"prefill": 0, "decode": 0, "share": 0}
  rng = np.random.default_rng(3)
  sp = SamplingParams(temperature=0.8, max_new_tokens=10, seed=1)
  for trial in range(4):                                             # rows, pieces, lengths and caps all vary
    n = int(rng.integers(4, 9))                                      # >= 4 rows: the 4 slots are all used
    prompts = [[int(x) for x in rng.integers(1, 512, k)] for k in rng.integers(1, 101, n)]
    caps = [int(c) for c in rng.integers(1, 11, n)]
    got = generate_paged(model, prompts, sp.replace(seed=trial), engine=ec, max_new_tokens=caps)
    if trial == 0:                                                   # the packed calls still give the same rows
      want = generate(model, prompts, sp.replace(seed=trial))
      assert got.tokens == [t[:c] for t, c in zip(want.tokens, caps)]
  assert eng.compile_counts() == {"prefill": 1, "decode": 1, "share": 0}       # every span <= 16 pages, flat <= 4 x 14 pages
  # A 200-token prompt needs a 32-page span for its last pieces: one more prefill program, nothing else.
  long = [[int(x) for x in rng.integers(1, 512, 200)]] + [[5, 6, 7]] * 3
  got = generate_paged(model, long, sp, engine=ec, max_new_tokens=[4, 2, 3, 4])
  want = generate(model, long, sp)
  assert got.tokens == [t[:c] for t, c in zip(want.tokens, [4, 2, 3, 4])]
  assert eng.compile_counts() == {"prefill": 2, "decode": 1, "share": 1}   # the three [5, 6, 7] rows share


def test_programs_write_the_pool_in_place(model):
  # The pool is donated to the prefill / decode programs, stacked [L, KVH, P, page, Dh] (XLA attention, layers
  # scanned) or one [KVH, P, page, Dh] buffer per layer (the Pallas kernels, layers unrolled): the optimised
  # programs scatter the new tokens into it and hold no copy of it (a copy would be a pass over the whole pool
  # per layer and step).
  from resd_jax.sampling import sampler as smp
  from resd_jax.sampling.paged_cache import empty_pool
  from resd_jax.sampling.paged_forward import FlatPages
  graphdef, state = nnx.split(model)
  cfg = model.config
  n_pages, page, s = 64, 8, 4
  knobs = smp._knobs(SamplingParams(temperature=0, max_new_tokens=8), cfg.vocab_size)
  i32 = lambda x: jnp.asarray(np.asarray(x, np.int32))  # noqa: E731
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(0), jnp.arange(s))
  slots = eng.Slots(last=i32([1] * s), pos=i32([3] * s), step=i32([1] * s), max_new=i32([8] * s),
                    done=jnp.zeros(s, bool), keys=keys)
  flat = FlatPages(pages=i32(list(range(1, 17)) + [0] * 48), row=i32(sorted(list(range(4)) * 4) + [3] * 48),
                   first=i32([k * page for k in range(4)] * 4 + [1 << 30] * 48), row_start=i32([0, 4, 8, 12]))
  toks = i32(np.arange(32).reshape(4, 8) % 500 + 1)

  def prefill(pool):
    return eng.prefill_fn.lower(graphdef, state, pool, toks, i32(np.tile(np.arange(8), (4, 1))),
                                jnp.ones((4, 8), bool), i32(np.arange(1, 5)[:, None] + np.zeros((4, 16), int)),
                                i32([7, 15, 23, 31]), keys, i32([0] * 4), knobs, k_cap=0,
                                attn_impl="xla").compile().as_text()

  layer = f"{cfg.num_kv_heads},{n_pages},{page},{cfg.head_dim}]"
  stacked = empty_pool(cfg, n_pages, page)
  assert stacked.stacked and stacked.k.shape == (cfg.num_layers, cfg.num_kv_heads, n_pages, page, cfg.head_dim)
  decode = eng.decode_fn.lower(graphdef, state, stacked, slots, None, flat, knobs, k_cap=0, n_steps=4,
                               attn_impl="xla").compile().as_text()
  per_layer = empty_pool(cfg, n_pages, page, per_layer=True)
  assert len(per_layer.k) == cfg.num_layers and per_layer.num_pages == n_pages and per_layer.page_size == page
  for text, shape, count in ((decode, f"f32[{cfg.num_layers},{layer}", 2), (prefill(stacked), f"f32[{cfg.num_layers},{layer}", 2),
                             (prefill(per_layer), f"f32[{layer}", 2 * cfg.num_layers)):
    lines = text.splitlines()
    assert sum(shape in line for line in lines) >= count                      # the buffers are there
    assert any("scatter(" in line and line.split("=")[1].lstrip().startswith(shape) for line in lines)
    assert not [line for line in lines if " copy(" in line and line.split("=")[1].lstrip().startswith(shape)]


def test_bad_input_errors(model):
  tiny_pool = EngineConfig(page_size=8, slots=4, prefill_chunk=16, decode_steps=4, num_pages=4)
  with pytest.raises(ValueError, match=r"needs 7 pages .* pool holds 3 .* raise engine.num_pages"):
    generate_paged(model, [PROMPTS[3]], SamplingParams(max_new_tokens=12), engine=tiny_pool)
  with pytest.raises(ValueError, match="engine.page_size must be a power of two"):
    EngineConfig(page_size=12)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    generate_paged(model, [[1], []], SamplingParams(), engine=EC)
  assert generate_paged(model, [], SamplingParams(), engine=EC).tokens == []


@pytest.mark.slow
def test_sharded_engine_equals_single_device(model):
  sp = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=8, seed=11)
  prompts = PROMPTS + [PROMPTS[2]] * 2                               # two rows share a whole prompt (copy on write)
  want = generate(model, prompts, sp)
  graphdef, state = nnx.split(model)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)                         # slots over data x fsdp, kv heads over tensor
  with jax.set_mesh(mesh):
    sharded = jax.device_put(state, state_shardings(state, mesh))
    stats = {}
    _same(generate_paged((graphdef, sharded), prompts, sp, engine=EC, stats=stats), want)
  assert stats["cow_rows"] >= 1


def test_config_block_checked_at_validation():
  from resd_jax import config_schema as cs
  from resd_jax.configs import base
  c = base.get_config("tiny")                                        # 1,024 + 128 tokens per row at most
  c.engine.num_pages = 50                                            # 49 x 16 = 784 tokens
  with pytest.raises(cs.ConfigError, match=r"engine.num_pages=50 holds 784 tokens.* at least 73"):
    cs.check_engine(c)
  c.engine.num_pages, c.engine.page_size = 0, 24
  with pytest.raises(cs.ConfigError, match="engine.page_size must be a power of two"):
    cs.check_engine(c)
  c.engine.page_size = 16
  cs.check_engine(c)
  assert cs.as_run(c).engine_config().slots == c.rollout.sample_batch  # slots = 0 takes rollout.sample_batch
  c.engine.decode_kernel = "pallas"                                  # this CPU has no Pallas kernel
  with pytest.raises(cs.ConfigError, match=r"needs a TPU or GPU backend, this one is 'cpu'.*engine.decode_kernel"):
    cs.check_engine(c)
  c.engine.decode_kernel = "triton"
  with pytest.raises(cs.ConfigError, match=r"engine.decode_kernel must be one of \('auto', 'xla', 'pallas'\)"):
    cs.check_engine(c)


def test_startup_rejects_a_budget_too_small_for_one_row():
  cfg = ModelConfig.preset("tiny")
  ec = EngineConfig(page_size=16, num_pages=0, memory_fraction=1e-9)  # a few bytes of budget
  with pytest.raises(ValueError, match="raise engine.num_pages .or engine.memory_fraction"):
    eng.check_startup(cfg, ec, 2048)
  eng.check_startup(cfg, EngineConfig(page_size=16, num_pages=129), 2048)
