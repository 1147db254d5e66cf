"""generate(): parity with full forwards, log-probs, seeds, batching invariance, stopping, compile counts, mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.models import ModelConfig, Transformer
from resd_jax.parallel import make_mesh, state_shardings
from resd_jax.sampling import SamplingParams, compile_counts, generate

REF_LEN = 64  # right-padded length of the reference full forward (one compile)


@pytest.fixture(scope="module")
def model():
  return Transformer(ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def full_logits(model):
  """logits [len(seq), V] of one unpadded sequence by a full forward without a cache (float64 NumPy out)."""
  fwd = jax.jit(lambda t, m: model.logits(model(t, None, m)[0]))

  def run(seq):
    t = np.zeros((1, REF_LEN), np.int32)
    t[0, :len(seq)] = seq
    m = np.arange(REF_LEN)[None] < len(seq)   # right padding: causal, so real positions are unaffected
    return np.asarray(fwd(jnp.asarray(t), jnp.asarray(m)), np.float64)[0, :len(seq)]
  return run


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


PROMPTS = [[5, 9, 200, 31, 7], list(range(40, 57)), [int(x) for x in np.random.default_rng(0).integers(1, 512, 30)]]


def _greedy_ref(full_logits, prompt, n):
  seq, lps = list(prompt), []
  for _ in range(n):
    lg = full_logits(seq)[-1]
    tok = int(np.argmax(lg))
    lps.append(_log_softmax(lg)[tok])
    seq.append(tok)
  return seq[len(prompt):], lps


def test_greedy_equals_stepwise_argmax_of_full_forwards(model, full_logits):
  out = generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
  for i, p in enumerate(PROMPTS):
    want, want_lp = _greedy_ref(full_logits, p, 10)
    assert out.tokens[i] == want
    np.testing.assert_allclose(out.logprobs[i], want_lp, atol=1e-4)
    assert out.sampling_logprobs[i] == [0.0] * 10
  assert out.lengths == [10, 10, 10] and out.finish_reasons == ["length"] * 3


def test_sampled_logprobs_equal_log_softmax_of_full_forward(model, full_logits):
  temp = 0.8
  out = generate(model, PROMPTS, SamplingParams(temperature=temp, max_new_tokens=12, seed=3))
  for i, p in enumerate(PROMPTS):
    lg = full_logits(p + out.tokens[i])[len(p) - 1:-1]                      # logits that predicted each token
    idx = np.arange(12), np.asarray(out.tokens[i])
    np.testing.assert_allclose(out.logprobs[i], _log_softmax(lg)[idx], atol=1e-4)
    np.testing.assert_allclose(out.sampling_logprobs[i], _log_softmax(lg / temp)[idx], atol=1e-4)


def test_fixed_seed_reproducible_and_seed_matters(model):
  sp = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
  a, b = generate(model, PROMPTS, sp), generate(model, PROMPTS, sp)
  assert a.tokens == b.tokens and a.logprobs == b.logprobs
  c = generate(model, PROMPTS, sp.replace(seed=8))
  assert c.tokens != a.tokens
  d = generate(model, PROMPTS, sp, rng=jax.random.PRNGKey(7))
  assert d.tokens == a.tokens


def test_top_k_one_equals_greedy(model):
  greedy = generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
  k1 = generate(model, PROMPTS, SamplingParams(temperature=1.3, top_k=1, max_new_tokens=10, seed=1))
  assert k1.tokens == greedy.tokens
  assert all(abs(x) < 1e-6 for row in k1.sampling_logprobs for x in row)


def test_prompt_batched_with_longer_and_shorter_gives_same_tokens(model):
  sp = SamplingParams(temperature=0, max_new_tokens=10)
  target = PROMPTS[1]
  alone = generate(model, [target], sp).tokens[0]
  longer = [int(x) for x in np.random.default_rng(5).integers(1, 512, 45)]    # pushes the bucket to 64
  mixed = generate(model, [[3, 4], target, longer], sp)
  assert mixed.tokens[1] == alone
  # Sampling: the per-row key follows the prompt (row_ids), not its batch neighbours.
  sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=2)
  alone = generate(model, [target], sp, row_ids=[1]).tokens[0]
  assert generate(model, [[3, 4], target, longer], sp).tokens[1] == alone


def test_stop_tokens_and_max_new_tokens(model, full_logits):
  ref = [_greedy_ref(full_logits, p, 12)[0] for p in PROMPTS]
  stop = next(t for j, t in enumerate(ref[0]) if j >= 2 and t not in ref[0][:j])
  out = generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=(stop,)))
  for i, r in enumerate(ref):
    n = r.index(stop) + 1 if stop in r else 12
    assert out.tokens[i] == r[:n] and out.lengths[i] == n == len(out.logprobs[i])
    assert out.finish_reasons[i] == ("stop" if stop in r else "length")
  assert out.finish_reasons[0] == "stop"
  short = generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=3))
  assert short.tokens == [r[:3] for r in ref] and short.finish_reasons == ["length"] * 3


def test_stop_strings_cut_after_completing_tokens(model, full_logits):
  decode = lambda ids: "".join(chr(97 + i % 26) for i in ids)
  ref = _greedy_ref(full_logits, PROMPTS[0], 12)[0]
  stop = decode(ref[4:6])
  want_n = next(k for k in range(1, 13) if stop in decode(ref[:k]))
  out = generate(model, PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=12, stop_strings=(stop,)),
                 decode_text=decode)
  assert out.tokens[0] == ref[:want_n] and out.finish_reasons == ["stop"] and out.lengths == [want_n]
  with pytest.raises(ValueError, match="stop_strings need decode_text"):
    generate(model, PROMPTS, SamplingParams(stop_strings=("x",)))


def test_no_recompilation_within_a_bucket(model):
  generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
  before = compile_counts()
  for sp, prompts in [(SamplingParams(temperature=0.5, top_p=0.7, max_new_tokens=20, seed=4), PROMPTS[::-1]),
                      (SamplingParams(temperature=1.0, max_new_tokens=32, stop_token_ids=(1, 2, 3)),
                       [[1], [2, 3], [4]]),
                      (SamplingParams(temperature=0, max_new_tokens=5), [list(range(1, 33))] * 4)]:
    generate(model, prompts, sp)
  assert compile_counts() == before


def test_sharded_generation_equals_single_device(model):
  sp = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=8, seed=11)
  greedy = SamplingParams(temperature=0, max_new_tokens=8)
  want_s, want_g = generate(model, PROMPTS, sp), generate(model, PROMPTS, greedy)
  mesh = make_mesh(data=2, fsdp=4)
  graphdef, state = nnx.split(model)
  with jax.set_mesh(mesh):
    state = jax.device_put(state, state_shardings(state, mesh))
    got_s, got_g = generate((graphdef, state), PROMPTS, sp), generate((graphdef, state), PROMPTS, greedy)
  assert got_g.tokens == want_g.tokens and got_s.tokens == want_s.tokens
  np.testing.assert_allclose(np.array(got_s.logprobs), np.array(want_s.logprobs), atol=1e-4)


def test_bad_inputs(model):
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    generate(model, [[1], []], SamplingParams())
  with pytest.raises(ValueError, match="outside"):
    generate(model, [[1, 512]], SamplingParams())
  with pytest.raises(ValueError, match="outside the vocabulary"):
    generate(model, [[1]], SamplingParams(stop_token_ids=(9999,)))
  with pytest.raises(TypeError, match="SamplingParams"):
    generate(model, [[1]], {"temperature": 0})
  assert generate(model, [], SamplingParams()).tokens == []
