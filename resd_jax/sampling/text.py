"""Chat front end of the sampler: conversations in, text (or token-level rollouts) out.

`generate_text(model, tokenizer, conversations, params)` applies the chat template, generates with the
rollout engine (`engine.py`: paged KV cache, continuous batching over `batch_size` slots, shared prompt
prefixes) and returns the detokenized responses (special tokens dropped) in the original order.
`generate_rollouts` returns the token-level record the trainer needs (prompt / response tokens, log-probs,
finish reason, truncated flag).

Multi-turn: to continue a conversation, append the assistant reply and the new user / environment message
to its message list and call again. The whole conversation is re-rendered by the chat template and
re-prefilled (correct by construction, including templates that rewrite earlier turns, e.g. Qwen3 dropping
old reasoning); the KV cache is not reused across turns.

`Sampler` bundles a model, tokenizer and default params; `sampler.generate_text` (or the sampler itself) is
the `generate_text(conversations) -> list[str]` that the context engine takes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from resd_jax.models import tokenizer as tk
from resd_jax.sampling.engine import EngineConfig, generate_paged
from resd_jax.sampling.params import SamplingParams

Conversation = Sequence[dict[str, str]]


@dataclasses.dataclass
class Rollout:
  """One sampled response to one conversation."""
  prompt_tokens: list[int]
  response_tokens: list[int]      # includes a final stop token when there is one
  logprobs: list[float]           # policy log-probs of response_tokens (before temperature / top-p / top-k)
  sampling_logprobs: list[float]  # log-probs under the sampling distribution
  finish_reason: str              # 'stop' | 'length'
  truncated: bool                 # True when generation hit max_new_tokens (no stop token / string)
  text: str                       # detokenized response without special tokens, cut before a stop string


def with_default_stops(params: SamplingParams, tokenizer: Any) -> SamplingParams:
  """params with the tokenizer's EOS and chat end-of-turn tokens as stop tokens when it names none."""
  if params.stop_token_ids:
    return params
  return params.replace(stop_token_ids=tk.stop_token_ids(tokenizer))


def _cut_at_stop_string(text: str, stop_strings: Sequence[str]) -> str:
  hits = [text.find(s) for s in stop_strings if s in text]
  return text[:min(hits)] if hits else text


def generate_rollouts(model: Any, tokenizer: Any, conversations: Sequence[Conversation], params: SamplingParams,
                      rng: jax.Array | None = None, enable_thinking: bool | None = None,
                      batch_size: int = 32, engine: EngineConfig | None = None,
                      max_new_tokens: Sequence[int] | None = None) -> list[Rollout]:
  """Sample one response per conversation; results in the order of `conversations`.

  batch_size: decode slots when `engine` is None (EngineConfig defaults otherwise); engine: the rollout
  engine's settings (config block `engine.*`, whose `slots` then replaces batch_size); max_new_tokens: an
  optional cap per conversation (default params.max_new_tokens for all). Conversation i samples with key
  fold_in(rng, i), whatever slot it runs in.
  """
  if batch_size < 1:
    raise ValueError(f"generate_rollouts: batch_size must be >= 1, got {batch_size}")
  params = with_default_stops(params, tokenizer)
  prompts = [tk.chat_tokens(tokenizer, conv, add_generation_prompt=True, enable_thinking=enable_thinking)
             for conv in conversations]
  rng = jax.random.PRNGKey(params.seed) if rng is None else rng
  decode_text = lambda ids: tk.decode(tokenizer, ids)
  comp = generate_paged(model, prompts, params, rng, decode_text=decode_text if params.stop_strings else None,
                        max_new_tokens=max_new_tokens, engine=engine or EngineConfig(slots=int(batch_size)))
  return [Rollout(prompt_tokens=prompts[i], response_tokens=toks, logprobs=comp.logprobs[i],
                  sampling_logprobs=comp.sampling_logprobs[i], finish_reason=comp.finish_reasons[i],
                  truncated=comp.finish_reasons[i] == "length",
                  text=_cut_at_stop_string(decode_text(toks), params.stop_strings))
          for i, toks in enumerate(comp.tokens)]


def generate_text(model: Any, tokenizer: Any, conversations: Sequence[Conversation], params: SamplingParams,
                  rng: jax.Array | None = None, enable_thinking: bool | None = None, batch_size: int = 32,
                  engine: EngineConfig | None = None) -> list[str]:
  """Sample one response per conversation and return the texts, in the order of `conversations`."""
  return [r.text for r in generate_rollouts(model, tokenizer, conversations, params, rng, enable_thinking,
                                            batch_size, engine)]


class Sampler:
  """A model + tokenizer + default SamplingParams: `sampler(conversations) -> list[str]`.

  Each call draws a fresh key fold_in(PRNGKey(params.seed), calls) and increments `calls`, so a sequence of
  calls is reproducible under the seed (save and restore `calls` to resume exactly). `set_weights` swaps in
  new weights (an nnx model or a (graphdef, state) pair) without touching anything else.
  """

  def __init__(self, model: Any, tokenizer: Any, params: SamplingParams | None = None,
               enable_thinking: bool | None = None, batch_size: int = 32, engine: EngineConfig | None = None):
    self.model = model
    self.tokenizer = tokenizer
    self.params = with_default_stops(params or SamplingParams(), tokenizer)
    self.enable_thinking = enable_thinking
    self.batch_size = int(batch_size)
    self.engine = engine
    self.calls = 0

  def set_weights(self, model: Any) -> None:
    self.model = model

  def _next_key(self) -> jax.Array:
    key = jax.random.fold_in(jax.random.PRNGKey(self.params.seed), self.calls)
    self.calls += 1
    return key

  def rollouts(self, conversations: Sequence[Conversation], params: SamplingParams | None = None) -> list[Rollout]:
    return generate_rollouts(self.model, self.tokenizer, conversations, params or self.params, self._next_key(),
                             self.enable_thinking, self.batch_size, self.engine)

  def generate_text(self, conversations: Sequence[Conversation], params: SamplingParams | None = None) -> list[str]:
    return [r.text for r in self.rollouts(conversations, params)]

  __call__ = generate_text
