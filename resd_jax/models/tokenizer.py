"""Tokenizer helpers: loading (HF directory, GGUF, embedded model), chat templates, reasoning stripping.

Tokenizers are `transformers` tokenizers; these functions paper over version differences (e.g.
`apply_chat_template` returning a BatchEncoding) and keep Qwen3's `enable_thinking` switch in one place.
"""
from __future__ import annotations

import functools
import logging
import os
import pathlib
import re
from typing import Any, Sequence

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_UP_TO_CLOSE = re.compile(r"^.*?</think>\s*", re.DOTALL)

# End-of-turn tokens of the chat formats we support, used as default stop tokens besides EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>")


def strip_reasoning(text: str) -> str:
  """Remove the model's reasoning: every `<think>...</think>` block, then everything up to the first
  remaining `</think>` (outputs whose template opened `<think>` in the prompt carry only the closing tag).

  Text without any `</think>` (e.g. truncated mid-reasoning) is returned unchanged.
  """
  text = _THINK_BLOCK.sub("", text)
  return _UP_TO_CLOSE.sub("", text, count=1)


def load_tokenizer(path: str | os.PathLike) -> Any:
  """A tokenizer from a local Hugging Face model directory."""
  from transformers import AutoTokenizer  # noqa: PLC0415
  directory = pathlib.Path(path).expanduser()
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory}: tokenizer directory does not exist; download the model first, e.g. "
                            f"`huggingface-cli download <org>/<model> --local-dir {directory}`")
  return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def load_gguf_tokenizer(gguf_path: str | os.PathLike) -> Any:
  """The tokenizer (with its chat template) stored inside a GGUF file.

  Byte-level BPE vocabularies (SmolLM2, Llama 3, Qwen, ...) are built from the metadata without torch
  (`gguf_tokenizer`); other kinds (sentencepiece, unknown split rules) go through transformers' GGUF reader,
  which imports torch.
  """
  from resd_jax.models import gguf_tokenizer  # noqa: PLC0415
  spec = gguf_tokenizer.read_spec(gguf_path)
  try:
    return gguf_tokenizer.wrap(gguf_tokenizer.build_backend(spec), spec)
  except gguf_tokenizer.UnsupportedGGUFTokenizer as unsupported:
    logging.getLogger(__name__).warning("%s; using transformers' GGUF reader", unsupported)
    try:
      from transformers import AutoTokenizer  # noqa: PLC0415
      p = pathlib.Path(spec.path)
      return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
    except ImportError as e:  # transformers' GGUF reader needs torch
      raise gguf_tokenizer.GGUFTokenizerError(
          f"{unsupported}; that reader needs torch: run `pip install torch`, or point model.tokenizer at the "
          "model's tokenizer directory") from e


@functools.lru_cache(maxsize=1)
def load_embedded_tokenizer() -> Any:
  """SmolLM2-135M-Instruct's tokenizer from the embedded GGUF (cached: parsing the GGUF takes seconds)."""
  from resd_jax.models.hf_io import embedded_gguf_path  # noqa: PLC0415
  return load_gguf_tokenizer(embedded_gguf_path())


def _ids(encoded: Any) -> list[int]:
  if isinstance(encoded, dict) or hasattr(encoded, "keys"):
    encoded = encoded["input_ids"]
  return [int(t) for t in encoded]


def chat_text(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
              enable_thinking: bool | None = None) -> str:
  """The chat-templated prompt as text. `enable_thinking` is passed to templates that use it (Qwen3)."""
  kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
  return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                       **kwargs)


def chat_tokens(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
                enable_thinking: bool | None = None) -> list[int]:
  """The chat-templated prompt as token ids."""
  kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
  return _ids(tokenizer.apply_chat_template(list(messages), tokenize=True,
                                            add_generation_prompt=add_generation_prompt, **kwargs))


def encode(tokenizer: Any, text: str) -> list[int]:
  """Plain text -> ids, without adding special tokens."""
  return _ids(tokenizer(text, add_special_tokens=False))


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
  """ids -> text without special tokens (Qwen3's `</think>` is not special, so it stays)."""
  return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
  """EOS plus the chat end-of-turn tokens that exist in this vocabulary."""
  ids = set()
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  vocab = tokenizer.get_vocab()
  for tok in END_OF_TURN_TOKENS:
    if tok in vocab:
      ids.add(int(vocab[tok]))
  return tuple(sorted(ids))


def pad_token_id(tokenizer: Any) -> int:
  for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if cand is not None:
      return int(cand)
  return 0
