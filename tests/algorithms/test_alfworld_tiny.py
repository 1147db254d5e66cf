"""`launch/train.py --config=configs/alfworld.py:tiny` end to end on CPU: 2 optimizer steps of multi-turn RESD on
generated games with the tiny random-weight model (embedded tokenizer), in its own process. Checks the run
writes a checkpoint, a playbook and metrics with per-turn distillation rows and per-split validation."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from resd_jax import metrics as mx

pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 textworld==1.7.0")
pytest.importorskip("textworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 textworld==1.7.0")

pytestmark = pytest.mark.slow  # ~50 s of CPU (two compiles of the train step and sampler)
ROOT = pathlib.Path(__file__).resolve().parents[2]
OVERRIDES = {
  "model.source": "preset", "model.preset": "tiny", "train.max_steps": 2, "env.max_steps": 3,
  "rollout.batch_prompts": 1, "rollout.max_response_len": 16, "eval.max_response_len": 16,
  "roles.reflector.max_new_tokens": 32, "roles.tagger.max_new_tokens": 32, "roles.curator.max_new_tokens": 32,
  "data.test_limit": 1, "eval.before_training": False, "metrics.progress": False,
}


def test_tiny_alfworld_run_writes_checkpoint_playbook_and_metrics(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device: the :tiny mesh is a single replica
  cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "--config=" + str(ROOT / "configs" / "alfworld.py") + ":tiny",
         f"--workdir={tmp_path}"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "max_steps at step 2" in proc.stdout or "finished at step 2" in proc.stdout, proc.stdout[-2000:]
  # What a first run shows: a line per step (phase times) and per validation; no library INFO chatter.
  assert "step 1: rollout " in proc.stdout and "step 2: rollout " in proc.stdout, proc.stdout[-2000:]
  assert "validation at step 2: per_task mean@n" in proc.stdout, proc.stdout[-2000:]
  info = [line for line in proc.stderr.splitlines() if re.match(r"I\d{4} ", line)]
  assert not info, info[:5]
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert (tmp_path / "playbooks" / "playbook_00000002.txt").is_file()
  rows = mx.read_jsonl(tmp_path / "metrics.jsonl")
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2]
  for r in train:
    # 1 game x 3 steps: every row is an assistant turn of the episode (3 turns unless it was won earlier).
    turns = r["rollout/response_tokens/count"]
    assert 1 <= turns <= 3 and r["batch/turn_rows/sum"] == turns and r["batch/turn_rows/count"] == 3
    assert r["train/tokens/sum"] == r["rollout/response_tokens/sum"]  # exactly the assistant tokens are trained
    assert r["time/rollout_sampling"] > 0 and r["time/rollout_env"] > 0
    assert r["train/loss/count"] > 0
  val = [r for r in rows if "val/valid_seen/success" in r]
  assert [r["step"] for r in val] == [2] and "val/valid_unseen/success" in val[0]
  assert any(k.startswith("val/valid_unseen/success/") for k in val[0])  # per task type
