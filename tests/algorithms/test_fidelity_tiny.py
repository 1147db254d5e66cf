"""End to end with the reference behaviour (base.paper_settings) on the tiny model and task: the run drops the
last partial outer batch, logs the sampler-vs-trainer log-prob check each step, validates with bootstrap
best@n and keeps its best checkpoint by the rank rule."""
import json
import os
import subprocess
import sys

import pytest

from resd_jax import metrics as mx
from resd_jax.configs import base

pytestmark = pytest.mark.slow
DRIVER = os.path.join(os.path.dirname(__file__), "tiny_run.py")


def _paper_overrides() -> dict:
  ref = base.paper_settings(base.get_base()).to_dict()
  lib = base.get_base().to_dict()
  out = {}
  for section, values in ref.items():
    if isinstance(values, dict):
      out.update({f"{section}.{k}": v for k, v in values.items() if lib[section][k] != v})
  return out


def test_resd_with_the_reference_behaviour(tmp_path):
  overrides = {**_paper_overrides(), "data.train_limit": 5}  # 5 prompts, batches of 2: the last one is dropped
  assert overrides["distill.is_level"] == "token" and overrides["data.drop_last"] is True
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, DRIVER, str(tmp_path), "resd", json.dumps(overrides)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "DONE finished 4" in proc.stdout  # 2 full outer batches x 2 inner updates; without drop_last: 6 > max 4
  rows = mx.read_jsonl(tmp_path / "metrics.jsonl")
  train = [r for r in rows if "train/loss" in r]
  assert len(train) == 4
  for r in train:
    assert r["train/logprob_diff_max/count"] == 1.0
    assert 0.0 <= r["train/logprob_diff_mean"] <= r["train/logprob_diff_max"]
    assert r["train/logprob_diff_mean/count"] > 0
  # Step 1 samples with the very weights it trains: only numerical noise between sampler and trainer.
  assert train[0]["train/logprob_diff_max"] < 1e-3
  assert [r["step"] for r in rows if "val/per_task/best@n" in r] == [0, 2, 4]
