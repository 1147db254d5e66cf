"""Configs: every file and variant loads and validates; bad configs fail with one line that names the fix."""
import importlib.util
import pathlib

import pytest

from resd_jax import config_schema as cs

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = {"base": ["", "tiny"], "manufactoria": ["", "tiny"], "finer": ["", "tiny"],
         "bouncingsim": ["", "easy", "medium", "tiny", "medium_tiny"]}


def load(name, variant=""):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  return m.get_config(variant)


def _with_model(c, tmp_path):
  """Real-model configs name a local HF directory: give them a fake one with config.json."""
  if c.model.source == "hf":
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.json").write_text("{}")
    c.model.path = str(tmp_path / "m")
  for split in ("train", "test"):
    if c.task.name == "finer" and not (c.data[f"{split}_path"] and pathlib.Path(c.data[f"{split}_path"]).exists()):
      p = tmp_path / f"{split}.jsonl"
      p.write_text("")
      c.data[f"{split}_path"] = str(p)
  return c


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in FILES.items() for v in vs])
def test_every_config_loads_and_validates(name, variant, tmp_path):
  c = _with_model(load(name, variant), tmp_path)
  run = cs.validate(c, n_devices=8)
  turns = c.env.max_steps if name == "alfworld" else 1
  assert cs.rows_per_step(run) == c.rollout.batch_prompts * c.rollout.samples_per_prompt * turns
  assert run.step_config().distill.top_k == c.distill.top_k


def test_paper_settings():
  m, e, md, f = load("manufactoria"), load("bouncingsim", "easy"), load("bouncingsim", "medium"), load("finer")
  assert [c.context.max_entries for c in (m, e, md, f)] == [200, 120, 150, 120]
  assert [c.distill.alpha for c in (m, e, md, f)] == [1.0, 0.5, 1.0, 0.5]
  assert [c.distill.success_weights for c in (m, e, md, f)] == [False, True, False, True]
  assert [c.distill.teacher_rate for c in (m, e, md, f)] == [1e-4, 1e-4, 1e-2, 1e-4]
  assert [c.rollout.max_response_len for c in (m, e, md, f)] == [20480, 25600, 25600, 20480]
  for c in (m, e, md, f):
    assert (c.rollout.batch_prompts, c.rollout.samples_per_prompt, c.rollout.inner_updates) == (32, 1, 4)
    assert (c.train.learning_rate, c.train.warmup_steps, c.distill.top_k, c.distill.eps_min) == (1e-6, 10, 100, 0.2)
    assert (c.eval.num_samples, c.eval.temperature, c.eval.top_p, c.context.prune_every) == (4, 0.6, 0.95, 4)
  with pytest.raises(ValueError, match="variants"):
    load("finer", "huge")


def _one_line_error(c, match, n=8):
  with pytest.raises(cs.ConfigError, match=match) as info:
    cs.validate(c, n_devices=n)
  msg = str(info.value)
  assert "\n" not in msg
  return msg


def test_unknown_key(tmp_path):
  c = load("manufactoria", "tiny")
  c.unlock()
  c.train.learnin_rate = 1e-5
  msg = _one_line_error(c, "unknown config key 'train.learnin_rate'")
  assert "did you mean 'train.learning_rate'" in msg


def test_batch_not_divisible_by_data_axes():
  c = load("manufactoria", "tiny")
  c.rollout.batch_prompts = 3
  c.mesh.fsdp, c.mesh.tensor = -1, 1
  msg = _one_line_error(c, "not divisible by the data-parallel axes")
  assert "--config.rollout.batch_prompts" in msg and "multiple of 8" in msg
  c.mesh.fsdp, c.mesh.tensor = 1, 8
  cs.validate(c, n_devices=8)  # 3 rows over 1 data shard is fine


def test_missing_model_and_data_paths(tmp_path):
  c = load("manufactoria")
  msg = _one_line_error(c, "model.path is empty")
  assert "--config.model.path" in msg and "huggingface-cli download" in msg
  c.model.path = str(tmp_path / "nope")
  _one_line_error(c, "not a Hugging Face model directory")
  c = load("manufactoria", "tiny")
  c.data.train_path = str(tmp_path / "missing.parquet")
  _one_line_error(c, r"data.train_path=.*does not exist.*--config.data.train_path")
  c = load("finer", "tiny")
  c.data.test_path = ""
  _one_line_error(c, "has no generator")
  c = load("manufactoria", "tiny")
  c.init_from = str(tmp_path / "no_run")
  _one_line_error(c, "init_from")
  c = load("manufactoria", "tiny")
  c.model.source, c.model.preset = "preset", "huge"
  _one_line_error(c, "model.preset='huge' is unknown")
  for key, bad in (("remat", "fast"), ("attn_impl", "flash"), ("attn_head_loop", "yes"), ("compute_dtype", "fp8")):
    c = load("manufactoria", "tiny")
    c.model[key] = bad
    _one_line_error(c, rf"model.{key}='{bad}'; expected one of .*fix --config.model.{key}")
  c = load("manufactoria", "tiny")
  c.model.attn_impl, c.model.compute_dtype = "cudnn", "float32"
  _one_line_error(c, "model.attn_impl='cudnn' needs compute_dtype bfloat16 or float16.*--config.model.compute_dtype")
  c = load("manufactoria", "tiny")
  c.model.attn_impl, c.model.compute_dtype = "cpu_fused", "float32"
  _one_line_error(c, "model.attn_impl='cpu_fused' needs compute_dtype bfloat16.*--config.model.attn_impl")


def test_typed_config_errors_are_one_line():
  c = load("manufactoria", "tiny")
  c.distill.alpha = 1.5
  _one_line_error(c, r"config: alpha must be in \[0, 1\]")
  c = load("manufactoria", "tiny")
  c.algorithm = "ppo"
  _one_line_error(c, "algorithm='ppo'")


def test_lora_config_errors_are_one_line(tmp_path):
  c = load("manufactoria", "tiny")
  c.lora.enabled, c.lora.targets = True, ("q", "gate_proj")
  _one_line_error(c, r"config lora: LoRAConfig: targets=.*--config.lora")
  c = load("manufactoria", "tiny")
  c.lora.enabled, c.lora.dropout = True, 0.05
  _one_line_error(c, "only 0.0 is implemented")
  c = load("manufactoria", "tiny")
  c.lora.enabled, c.lora.adapter_path = True, str(tmp_path)
  _one_line_error(c, "is not a PEFT adapter directory")
  c = load("manufactoria", "tiny")
  c.lora.enabled, c.lora.rank = True, 8
  from resd_jax.config_schema import validate
  assert validate(c, 8).lora.rank == 8


def _launch(*args):
  import subprocess
  import sys
  env = dict(__import__("os").environ, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), *args], capture_output=True, text=True,
                     env=env, timeout=300)
  lines = [l for l in p.stderr.splitlines() if l.startswith("config error")]
  return p.returncode, lines


def test_launch_reports_bad_overrides_in_one_line(tmp_path):
  rc, lines = _launch("--config=configs/manufactoria.py:tiny", "--config.train.learnin_rate=1e-5",
                      f"--workdir={tmp_path}")
  assert rc != 0 and lines == ["config error: unknown config key 'train.learnin_rate' in "
                               "--config.train.learnin_rate=1e-5; did you mean 'train.learning_rate'?"]
  rc, lines = _launch("--config=configs/manufactoria.py", f"--workdir={tmp_path}")
  assert rc != 0 and len(lines) == 1 and "--config.model.path" in lines[0]
  assert not any(tmp_path.iterdir())  # nothing written for a bad config


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in FILES.items() for v in vs])
def test_packaged_configs_equal_the_checkout_files(name, variant):
  from resd_jax import configs
  spec = f"{name}:{variant}" if variant else name
  assert configs.load(spec).to_dict() == load(name, variant).to_dict()
  assert configs.load(f"{ROOT / 'configs' / name}.py" + (f":{variant}" if variant else "")).to_dict() == \
      load(name, variant).to_dict()


def test_config_names_resolve_to_packaged_files_and_bad_names_say_so():
  from resd_jax import configs
  from resd_jax.cli.common import resolve_config_args
  args = resolve_config_args(["prog", "--config=manufactoria:tiny", "--config=configs/finer.py:tiny", "--workdir=x"])
  assert args[1] == f"--config={configs.module_path('manufactoria')}:tiny"
  assert args[1].endswith("resd_jax/configs/manufactoria.py:tiny")
  assert args[2:] == ["--config=configs/finer.py:tiny", "--workdir=x"]
  with pytest.raises(ValueError, match="unknown config 'manufactory'; the packaged configs are base, manufactoria"):
    configs.load("manufactory:tiny")
  with pytest.raises(ValueError, match="config file 'nope.py' does not exist"):
    configs.load("nope.py")


def test_workdir_that_is_a_file_is_one_line_before_any_work(tmp_path):
  f = tmp_path / "not_a_dir"
  f.write_text("keep me")
  rc, lines = _launch("--config=configs/manufactoria.py:tiny", f"--workdir={f}")
  assert rc != 0 and len(lines) == 1 and "is an existing file, not a directory" in lines[0], lines
  assert f.read_text() == "keep me"
  rc, lines = _launch("--config=configs/manufactoria.py:tiny", f"--workdir={f}/run")
  assert rc != 0 and len(lines) == 1 and "cannot be created" in lines[0], lines
  c = load("manufactoria", "tiny")
  c.workdir = str(f)
  _one_line_error(c, "is an existing file")
