"""Logit parity with `transformers` (PyTorch, float32) on random tiny configs, export round trip, bad input."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from resd_jax.models import ModelConfig, hf_io  # noqa: E402

TOL = 1e-4


def _hf_configs():
  common = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512)
  return {
      "qwen3": transformers.Qwen3Config(head_dim=24, tie_word_embeddings=False, rope_theta=10000.0, **common),
      "qwen2_bias": transformers.Qwen2Config(tie_word_embeddings=True, rope_theta=10000.0, **common),
      "llama3_scaled_tied": transformers.LlamaConfig(
          tie_word_embeddings=True, rope_theta=500000.0,
          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}, **common),
      "llama3_untied": transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=10000.0, **common),
  }


@pytest.fixture(scope="module", params=sorted(_hf_configs()))
def hf_dir(request, tmp_path_factory):
  cfg = _hf_configs()[request.param]
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
  with torch.no_grad():  # random non-trivial norms and biases so every parameter matters
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
      if name.endswith("bias"):
        p.normal_(0, 0.05)
  d = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(d, safe_serialization=True)
  return d, model


def _batch():
  rng = np.random.default_rng(0)
  lens = [11, 6, 1]
  L = max(lens)
  toks = np.zeros((3, L), np.int64)
  mask = np.zeros((3, L), bool)
  for b, n in enumerate(lens):
    toks[b, L - n:] = rng.integers(1, 160, n)
    mask[b, L - n:] = True
  return toks, mask


def _torch_logits(model, toks, mask):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(toks), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(pos))
  return out.logits.numpy()


def _ours(model, toks, mask):
  h, _ = model(jnp.asarray(toks, jnp.int32), None, jnp.asarray(mask))
  return np.asarray(model.logits(h))


def test_logits_match_transformers_on_left_padded_batch(hf_dir):
  d, ref = hf_dir
  ours, cfg = hf_io.load_hf(d)
  toks, mask = _batch()
  want = _torch_logits(ref, toks, mask)
  got = _ours(ours, toks, mask)
  assert np.abs(got - want)[mask].max() <= TOL
  # Padding must not change any real token's logits: each row alone, unpadded.
  for b in range(toks.shape[0]):
    row = toks[b:b + 1, mask[b]]
    alone = _ours(ours, row, np.ones_like(row, bool))
    assert np.abs(alone[0] - got[b, mask[b]]).max() <= TOL


def test_export_round_trip_through_transformers(hf_dir, tmp_path):
  d, _ = hf_dir
  ours, _ = hf_io.load_hf(d)
  out = hf_io.save_hf(ours, tmp_path / "export")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).float().eval()
  toks, mask = _batch()
  assert np.abs(_torch_logits(reloaded, toks, mask) - _ours(ours, toks, mask))[mask].max() <= TOL
  # And back into ours: identical parameters.
  again, _ = hf_io.load_hf(out)
  a, b = hf_io.hf_tensors(ours), hf_io.hf_tensors(again)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_export_refuses_to_overwrite(hf_dir, tmp_path):
  d, _ = hf_dir
  ours, _ = hf_io.load_hf(d)
  (tmp_path / "keep.txt").write_text("precious")
  with pytest.raises(hf_io.WeightsError, match="not empty"):
    hf_io.save_hf(ours, tmp_path)
  assert (tmp_path / "keep.txt").read_text() == "precious"


def test_config_round_trip(hf_dir):
  d, _ = hf_dir
  cfg = ModelConfig.from_hf(json.loads((d / "config.json").read_text()))
  assert ModelConfig.from_hf(cfg.to_hf_dict()) == cfg


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_directory_error(tmp_path):
  with pytest.raises(hf_io.WeightsError, match="does not exist"):
    hf_io.load_hf(tmp_path / "nope")


def test_unsupported_architecture_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "num_attention_heads": 2}))
  with pytest.raises(ValueError, match="unsupported architecture model_type='gpt2'"):
    hf_io.load_hf(tmp_path)


def test_shape_mismatch_names_file_and_key(hf_dir, tmp_path):
  d, _ = hf_dir
  cfg = json.loads((d / "config.json").read_text())
  cfg["intermediate_size"] = 128  # the checkpoint has 96
  import shutil
  shutil.copy(d / "model.safetensors", tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf_io.WeightsError) as e:
    hf_io.load_hf(tmp_path)
  msg = str(e.value)
  assert "model.safetensors" in msg and re.search(r"key model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight", msg)
  assert "\n" not in msg


def test_missing_key_error(hf_dir, tmp_path):
  from safetensors.numpy import load_file, save_file
  d, _ = hf_dir
  tensors = load_file(str(d / "model.safetensors"))
  tensors.pop("model.layers.1.input_layernorm.weight")
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text((d / "config.json").read_text())
  with pytest.raises(hf_io.WeightsError, match=r"missing key model\.layers\.1\.input_layernorm\.weight"):
    hf_io.load_hf(tmp_path)


def test_config_validation_errors():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    ModelConfig.preset("tiny", num_kv_heads=3)
  with pytest.raises(ValueError, match="unknown model preset"):
    ModelConfig.preset("gpt5")
  with pytest.raises(ValueError, match="compute_dtype"):
    ModelConfig.preset("tiny", compute_dtype="int8")
