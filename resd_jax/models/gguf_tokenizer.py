"""A GGUF file's tokenizer, built from its metadata with `gguf` + `tokenizers` (no torch on the path).

transformers' own GGUF tokenizer reader imports torch (it lives next to its GGUF weight loader), which only the
test extra installs; this module reads the same metadata keys itself and hands a `tokenizers.Tokenizer` to
`transformers.PreTrainedTokenizerFast`, so callers get the object API they use elsewhere (`apply_chat_template`,
`decode`, `eos_token_id`, `get_vocab`, `len()`, ...).

What a GGUF stores (llama.cpp's names) and what we build from it:
  tokenizer.ggml.model = "gpt2"      byte-level BPE: vocabulary + merges, ByteLevel decoder, no normalizer.
  tokenizer.ggml.pre                 how text is split before BPE (`_SPLITS`, from llama.cpp's table of the same
                                     names). SmolLM2 says "smollm": every digit on its own, then GPT-2's split --
                                     the Digits + ByteLevel chain of SmolLM2's own tokenizer.json.
  tokenizer.ggml.model = "llama"     sentencepiece BPE (Llama 2, Mistral, TinyLlama; architecture "llama" only):
                                     U+2581 for spaces, <0xXX> byte fallback, merges ranked by tokenizer.ggml.scores.
  tokenizer.ggml.token_type          3 (control) -> special added token, 4 (user defined) -> added token.
  tokenizer.ggml.{bos,eos,unknown,padding}_token_id, add_{bos,eos}_token, tokenizer.chat_template[s].
  tokenizer.huggingface.json         when a file carries a whole tokenizer.json, that is used as is.
Other kinds, sentencepiece files of other architectures (Gemma, Phi-3) and `pre` names missing from `_SPLITS` are
not built here (`UnsupportedGGUFTokenizer`): `tokenizer.load_gguf_tokenizer` falls back to transformers for
them, which needs torch.

Divergence from transformers (5.x) `AutoTokenizer.from_pretrained(dir, gguf_file=...)`: transformers ignores
`pre = "smollm"` (and the other starcoder-family names) and splits with GPT-2's rule alone, so a digit after
whitespace or another digit can tokenize differently there ("x  12": ours and SmolLM2's tokenizer.json give
`x|ĠĠ|1|2`, transformers `x|Ġ|Ġ|1|2`). We follow the model's own tokenizer (and llama.cpp), so the model sees
what it was trained on. For sentencepiece files we honour `add_space_prefix = false` (transformers always
prepends the space).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

# llama.cpp token types (gguf.TokenType; repeated so that reading them needs no enum lookups).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer splits by `tokenizer.ggml.pre`, as llama.cpp applies them (its llama-vocab.cpp table):
#   "gpt2"     GPT-2's rule (ByteLevel's built-in regex).
#   "digits"   each \p{N} on its own first, then GPT-2's rule (starcoder family, SmolLM).
#   a regex    one split (isolated pieces), then bytes -> the byte alphabet without a second split.
_GPT2 = "gpt2"
_DIGITS_THEN_GPT2 = "digits"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS: dict[str, str] = {
    **dict.fromkeys(("default", "gpt2", "mpt", "olmo", "jais", "trillion"), _GPT2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
                    _DIGITS_THEN_GPT2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2"), _QWEN2),
}
# llama.cpp merges whole-vocabulary words first for these (HF's `ignore_merges=True` in their tokenizer.json).
_IGNORE_MERGES = frozenset(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"))


class GGUFTokenizerError(ValueError):
  """A GGUF whose tokenizer cannot be built; the message names the file and what is missing."""


class UnsupportedGGUFTokenizer(GGUFTokenizerError):
  """The file describes a tokenizer kind this module does not build (e.g. sentencepiece)."""


@dataclasses.dataclass(frozen=True)
class GGUFTokenizerSpec:
  """The tokenizer metadata of one GGUF file (llama.cpp's keys, decoded)."""
  path: str
  architecture: str               # general.architecture: "llama", "qwen3", ...
  model: str                      # tokenizer.ggml.model: "gpt2", "llama", ...
  pre: str                        # tokenizer.ggml.pre ("default" when absent)
  tokens: tuple[str, ...]         # id -> token, as stored (byte alphabet for gpt2 vocabularies)
  token_types: tuple[int, ...]    # id -> llama.cpp token type; all NORMAL when absent
  merges: tuple[str, ...]         # "left right", best first
  scores: tuple[float, ...]       # id -> sentencepiece score (sentencepiece vocabularies; may be empty)
  special_ids: dict[str, int]     # bos / eos / unk / pad -> id (only those the file names, in range)
  add_bos: bool
  add_eos: bool
  add_space_prefix: bool          # sentencepiece: a space is put before the text ("tokenizer.ggml.add_space_prefix")
  chat_template: str | dict[str, str] | None
  hf_json: str | None             # tokenizer.huggingface.json, when present


def _scalar(field: Any) -> Any:
  part = field.parts[field.data[0]]
  if field.types[0].name == "STRING":
    return bytes(part).decode("utf-8")
  value = part[0]
  return bool(value) if field.types[0].name == "BOOL" else int(value)


def _strings(field: Any) -> tuple[str, ...]:
  return tuple(bytes(field.parts[i]).decode("utf-8") for i in field.data)


def _ints(field: Any) -> tuple[int, ...]:
  return tuple(int(field.parts[i][0]) for i in field.data)


def _floats(field: Any) -> tuple[float, ...]:
  return tuple(float(field.parts[i][0]) for i in field.data)


def read_spec(path: str | os.PathLike) -> GGUFTokenizerSpec:
  """The tokenizer metadata of `path`; one-line `GGUFTokenizerError`s for missing files and missing keys."""
  import gguf  # noqa: PLC0415
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise GGUFTokenizerError(f"{p}: GGUF file does not exist")
  try:
    fields = gguf.GGUFReader(str(p)).fields
  except (ValueError, OSError) as e:
    raise GGUFTokenizerError(f"{p}: not a readable GGUF file ({str(e).splitlines()[0] if str(e) else e!r})") from e
  key = ""

  def get(name: str, read: Any = _scalar, default: Any = None) -> Any:
    nonlocal key
    key = name
    return read(fields[name]) if name in fields else default

  try:
    hf_json = get("tokenizer.huggingface.json")
    missing = [k for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens") if k not in fields]
    if missing and hf_json is None:
      raise GGUFTokenizerError(f"{p}: no tokenizer in this GGUF (missing {', '.join(missing)}); point "
                               "model.tokenizer at the model's tokenizer directory instead")
    tokens = get("tokenizer.ggml.tokens", _strings, ())
    types = get("tokenizer.ggml.token_type", _ints, ())
    if types and len(types) != len(tokens):
      raise GGUFTokenizerError(f"{p}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    special_ids = {}
    for name, k in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                    ("pad", "padding_token_id")):
      i = get(f"tokenizer.ggml.{k}")
      if i is not None and 0 <= i < len(tokens):
        special_ids[name] = i
    template: str | dict[str, str] | None = get("tokenizer.chat_template")
    names = get("tokenizer.chat_templates", _strings, ())  # named extra templates (tool use, RAG, ...)
    named = {n: t for n in names if (t := get(f"tokenizer.chat_template.{n}")) is not None}
    if named:
      template = {**({"default": template} if template else {}), **named}
    model = get("tokenizer.ggml.model", default="")
    scores = get("tokenizer.ggml.scores", _floats, ())
    if scores and len(scores) != len(tokens):
      raise GGUFTokenizerError(f"{p}: tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
    return GGUFTokenizerSpec(
        path=str(p), architecture=get("general.architecture", default=""), model=model,
        pre=get("tokenizer.ggml.pre", default="default"),
        tokens=tokens, token_types=types or (NORMAL,) * len(tokens),
        merges=get("tokenizer.ggml.merges", _strings, ()), scores=scores, special_ids=special_ids,
        # llama.cpp adds BOS to a sentencepiece vocabulary whose file does not say otherwise
        add_bos=bool(get("tokenizer.ggml.add_bos_token", default=model == "llama")),
        add_eos=bool(get("tokenizer.ggml.add_eos_token", default=False)),
        add_space_prefix=bool(get("tokenizer.ggml.add_space_prefix", default=True)),
        chat_template=template, hf_json=hf_json)
  except UnicodeDecodeError as e:
    raise GGUFTokenizerError(f"{p}: {key} is not valid UTF-8 ({e.reason} at byte {e.start})") from e
  except (IndexError, TypeError, AttributeError, ValueError) as e:
    if isinstance(e, GGUFTokenizerError):
      raise
    raise GGUFTokenizerError(f"{p}: {key} has an unexpected type or shape ({e.__class__.__name__})") from e


def byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves, the other 68 bytes
  (controls, space, soft hyphen, ...) take the characters from U+0100 on, in byte order."""
  keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  kept = set(keep)
  moved = [b for b in range(256) if b not in kept]
  return {**{b: chr(b) for b in keep}, **{b: chr(0x100 + n) for n, b in enumerate(moved)}}


def _byte_level_spelling(token: str, alphabet: frozenset[str], spell: dict[int, str]) -> str:
  """Vocabulary tokens are stored in the byte alphabet; a stray raw one is respelled from its UTF-8 bytes."""
  return token if set(token) <= alphabet else "".join(spell[b] for b in token.encode("utf-8"))


def _merge_pairs(spec: GGUFTokenizerSpec) -> list[tuple[str, str]]:
  pairs = []
  for n, m in enumerate(spec.merges):
    left, sep, right = m.partition(" ")
    if not sep or not left or not right:
      raise GGUFTokenizerError(f"{spec.path}: tokenizer.ggml.merges[{n}]={m!r} is not two tokens separated by a space")
    pairs.append((left, right))
  return pairs


def _merges_from_scores(vocab: dict[str, int], spec: GGUFTokenizerSpec) -> list[tuple[str, str]]:
  """Sentencepiece files carry scores, not merges: every split of a token into two vocabulary tokens is a merge,
  ranked by the merged token's score (higher first); ties: longer left piece, longer right piece, file order."""
  ranked = []
  for i, tok in enumerate(spec.tokens):
    if vocab.get(tok) != i:  # a repeated token: its first id is the one in the vocabulary
      continue
    score = spec.scores[i] if spec.scores else -float(i)
    ranked += [(-score, -k, k - len(tok), i, tok[:k], tok[k:]) for k in range(1, len(tok))
               if tok[:k] in vocab and tok[k:] in vocab]
  ranked.sort()
  return [(left, right) for *_, left, right in ranked]


def _byte_level(spec: GGUFTokenizerSpec) -> Any:
  """Byte-level BPE (`model = "gpt2"`): GPT-2's byte alphabet, the file's merges, the split `pre` names."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
  split = _SPLITS.get(spec.pre)
  if split is None:
    raise UnsupportedGGUFTokenizer(
        f"{spec.path}: tokenizer.ggml.pre={spec.pre!r} is not a split rule built here (known: "
        f"{', '.join(sorted(_SPLITS))}); only transformers' GGUF reader reads it (with GPT-2's rule)")
  spell = byte_alphabet()
  alphabet = frozenset(spell.values())
  vocab: dict[str, int] = {}
  for i, (tok, kind) in enumerate(zip(spec.tokens, spec.token_types)):
    # Control / user-defined tokens keep their text (they are matched whole, before BPE); the rest are BPE units.
    key = tok if kind in (CONTROL, USER_DEFINED) else _byte_level_spelling(tok, alphabet, spell)
    vocab.setdefault(key, i)  # a repeated token keeps its first id
  bpe = models.BPE(vocab=vocab, merges=_merge_pairs(spec), unk_token=None, fuse_unk=False, byte_fallback=False,
                   ignore_merges=spec.pre in _IGNORE_MERGES)
  tok = Tokenizer(bpe)
  tok.normalizer = None
  if split == _GPT2:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  elif split == _DIGITS_THEN_GPT2:
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  return tok


def _sentencepiece(spec: GGUFTokenizerSpec) -> Any:
  """Sentencepiece BPE (`model = "llama"`: Llama 2, Mistral, TinyLlama): spaces as U+2581, a space before the text
  when the file says so, characters outside the vocabulary as <0xXX> byte tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
  vocab: dict[str, int] = {}
  for i, tok in enumerate(spec.tokens):
    vocab.setdefault(tok, i)
  merges = _merge_pairs(spec) if spec.merges else _merges_from_scores(vocab, spec)
  unk = spec.tokens[spec.special_ids["unk"]] if "unk" in spec.special_ids else None
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
  tok.normalizer = None
  tok.pre_tokenizer = pre_tokenizers.Metaspace(
      replacement="\u2581", prepend_scheme="first" if spec.add_space_prefix else "never", split=False)
  steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
  tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if spec.add_space_prefix else []))
  return tok


_BUILDERS = {"gpt2": _byte_level, "llama": _sentencepiece}
# Sentencepiece files are built here for these architectures only: Gemma (token spelling, merges in file order)
# and Phi-3 (prefix space from a normalizer) need their own rules, which transformers' reader has.
_SENTENCEPIECE_ARCHS = frozenset(("llama",))


def build_backend(spec: GGUFTokenizerSpec) -> Any:
  """The `tokenizers.Tokenizer` the spec describes (byte-level or sentencepiece BPE, or the file's tokenizer.json)."""
  from tokenizers import AddedToken, Tokenizer, processors  # noqa: PLC0415
  if spec.hf_json is not None:
    return Tokenizer.from_str(spec.hf_json)
  if spec.model not in _BUILDERS or (spec.model == "llama" and spec.architecture not in _SENTENCEPIECE_ARCHS):
    raise UnsupportedGGUFTokenizer(
        f"{spec.path}: tokenizer.ggml.model={spec.model!r} (architecture {spec.architecture!r}) is read by "
        "transformers' GGUF reader only (built here: 'gpt2' byte-level BPE, 'llama' sentencepiece for "
        f"architecture {', '.join(sorted(_SENTENCEPIECE_ARCHS))})")
  tok = _BUILDERS[spec.model](spec)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, kind in zip(spec.tokens, spec.token_types) if kind == CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, kind in zip(spec.tokens, spec.token_types) if kind == USER_DEFINED])
  tok.post_processor = _post_processor(spec, processors)
  return tok


def _post_processor(spec: GGUFTokenizerSpec, processors: Any) -> Any:
  """BOS / EOS around an encoded text when the file asks for them (llama.cpp's add_bos / add_eos)."""
  bos = spec.tokens[spec.special_ids["bos"]] if spec.add_bos and "bos" in spec.special_ids else None
  eos = spec.tokens[spec.special_ids["eos"]] if spec.add_eos and "eos" in spec.special_ids else None
  ends = [(t, spec.special_ids[k]) for t, k in ((bos, "bos"), (eos, "eos")) if t is not None]
  pre, post = ([bos] if bos else []), ([eos] if eos else [])
  single = [*pre, "$A:0", *post]
  pair = [*pre, "$A:0", *post, *pre, "$B:1", *post]
  return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair), special_tokens=ends)


def wrap(backend: Any, spec: GGUFTokenizerSpec) -> Any:
  """`transformers.PreTrainedTokenizerFast` around `backend` with the file's special tokens and chat template."""
  from transformers import PreTrainedTokenizerFast  # noqa: PLC0415  (tokenizers backend: no torch)
  names = {k: spec.tokens[i] for k, i in spec.special_ids.items()}
  kwargs: dict[str, Any] = {f"{k}_token": t for k, t in names.items()}
  if spec.chat_template is not None:
    kwargs["chat_template"] = spec.chat_template
  return PreTrainedTokenizerFast(tokenizer_object=backend, add_bos_token=spec.add_bos, add_eos_token=spec.add_eos,
                                 **kwargs)


def load(path: str | os.PathLike) -> Any:
  """The tokenizer (with chat template and special tokens) stored in the GGUF file at `path`."""
  spec = read_spec(path)
  return wrap(build_backend(spec), spec)

