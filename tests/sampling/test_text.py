"""Chat front end: templating, order after length-sorted batching, default stops, stop strings, Sampler."""
import numpy as np
import pytest
from flax import nnx

from resd_jax.models import ModelConfig, Transformer
from resd_jax.models import tokenizer as tk
from resd_jax.sampling import SamplingParams, Sampler, generate, generate_rollouts, generate_text

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer():
  """A word-level tokenizer with a ChatML-like template (fast to build, no download)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  specials = ["<pad>", "<|im_end|>", "<|im_start|>", "<unk>"]
  vocab = {w: i for i, w in enumerate(specials + ["user", "assistant", "system"] + WORDS)}
  raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  raw.decoder = decoders.WordPiece(prefix="##")
  tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>",
                                additional_special_tokens=["<|im_start|>"])
  tok.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
  return tok


@pytest.fixture(scope="module")
def model(tokenizer):
  return Transformer(ModelConfig.preset("tiny", vocab_size=len(tokenizer)), rngs=nnx.Rngs(1))


def _convs(n):
  rng = np.random.default_rng(0)
  return [[{"role": "user", "content": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 20))))}]
          for _ in range(n)]


# Every call uses batch_size=2 so the whole file compiles two batch buckets (1 and 2) only.
def test_generate_text_order_templating_and_default_stops(model, tokenizer):
  convs = _convs(5)
  sp = SamplingParams(temperature=0, max_new_tokens=16)
  rolls = generate_rollouts(model, tokenizer, convs, sp, batch_size=2)
  stops = tk.stop_token_ids(tokenizer)
  for conv, r in zip(convs, rolls):
    prompt = tk.chat_tokens(tokenizer, conv)
    assert r.prompt_tokens == prompt
    alone = generate(model, [prompt], sp.replace(stop_token_ids=stops))
    assert r.response_tokens == alone.tokens[0]
    assert r.text == tokenizer.decode(alone.tokens[0], skip_special_tokens=True)
    assert r.truncated == (r.finish_reason == "length") == (stops[0] not in r.response_tokens)
  assert generate_text(model, tokenizer, convs, sp, batch_size=2) == [r.text for r in rolls]


def test_stop_string_cuts_text_before_it(model, tokenizer):
  convs = _convs(3)
  full = generate_rollouts(model, tokenizer, convs, SamplingParams(temperature=0, max_new_tokens=12), batch_size=2)
  words = full[0].text.split()
  assert len(words) >= 4, full[0].text
  stop = words[2]
  got = generate_rollouts(model, tokenizer, convs, SamplingParams(temperature=0, max_new_tokens=12,
                                                                   stop_strings=(stop,)), batch_size=2)
  assert got[0].text == full[0].text[:full[0].text.find(stop)]
  assert got[0].finish_reason == "stop" and not got[0].truncated
  assert len(got[0].response_tokens) == len(got[0].logprobs) <= len(full[0].response_tokens)


def test_sampler_calls_are_reproducible_and_fresh(model, tokenizer):
  convs = _convs(4)
  sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=5)
  a, b = Sampler(model, tokenizer, sp, batch_size=2), Sampler(model, tokenizer, sp, batch_size=2)
  assert a.params.stop_token_ids == tk.stop_token_ids(tokenizer)
  first = a(convs)
  assert len(first) == 4 and all(isinstance(t, str) for t in first)
  assert b.generate_text(convs) == first                      # same seed, same call index
  assert a(convs) != first and a.calls == 2                   # next call draws a fresh key
  with pytest.raises(ValueError, match="batch_size"):
    generate_text(model, tokenizer, convs, sp, batch_size=0)
