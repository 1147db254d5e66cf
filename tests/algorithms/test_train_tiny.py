"""End-to-end runs on the tiny random-weight model and a short-prompt task (tiny_run.py), each in its own
process: RESD / SDPO / GRPO for 2 outer batches x 2 inner updates; exact resume after SIGKILL and SIGTERM
(bitwise-identical params, optimizer, teacher, playbook, solution buffer, cursor); init_from with reflection
off leaves the source untouched; an unreadable latest checkpoint falls back to the previous one."""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resd_jax import metrics as mx

pytestmark = pytest.mark.slow
DRIVER = pathlib.Path(__file__).with_name("tiny_run.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  e = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu",
           XLA_FLAGS="--xla_force_host_platform_device_count=8", TINY_PAUSE_S="3")
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


def run(env, workdir, algorithm="resd", overrides=None, pause=None, timeout=900):
  args = [sys.executable, str(DRIVER), str(workdir), algorithm, json.dumps(overrides or {})]
  if pause is not None:
    args.append(str(pause))
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=900):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err


def run_until_saved(env, workdir, step, sig, overrides=None):
  """Start a run, wait until checkpoint `step` is written and step + 1 has begun, send `sig`; returns
  (stdout, stderr, returncode)."""
  proc = run(env, workdir, overrides=overrides, pause=step)
  for line in proc.stdout:
    if line.strip() == f"SAVED {step}":
      proc.send_signal(sig)
      break
  out, err = proc.communicate(timeout=900)
  return out, err, proc.returncode


def read_checkpoint(workdir, step):
  m = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints",
                            options=ocp.CheckpointManagerOptions(read_only=True), item_names=("state", "side"))
  out = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), side=ocp.args.JsonRestore()))
  m.close()
  return out["state"], out["side"]


def _bytes(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x).tobytes()


def assert_same_checkpoint(run_a, run_b, step):
  a, side_a = read_checkpoint(run_a, step)
  b, side_b = read_checkpoint(run_b, step)
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert _bytes(x) == _bytes(y), f"leaf {jax.tree_util.keystr(path)} differs"
  for key in ("cursor", "context", "history", "host_rng"):
    assert side_a[key] == side_b[key], key


def digest(path):
  h = hashlib.sha256()
  for p in sorted(pathlib.Path(path).rglob("*")):
    h.update(str(p).encode())
    if p.is_file():
      h.update(p.read_bytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def straight(env, tmp_path_factory):
  """The reference: RESD, 4 steps (2 outer x 2 inner) without interruption."""
  wd = tmp_path_factory.mktemp("straight")
  finish(run(env, wd))
  return wd


def test_resd_run_writes_checkpoints_playbooks_metrics_and_validation(straight):
  assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
  assert [p.name for p in sorted((straight / "playbooks").iterdir())] == ["playbook_00000002.txt",
                                                                          "playbook_00000004.txt"]
  rows = mx.read_jsonl(straight / "metrics.jsonl")
  train = [r for r in rows if "train/loss" in r]
  val = [r for r in rows if "val/per_task/mean@n" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert [r["step"] for r in val] == [0, 2, 4]  # before training and after each outer batch
  for r in train:
    assert np.isfinite(r["train/loss"]) and r["train/loss/count"] > 0
    for phase in ("rollout", "grade", "context", "batch", "step"):
      assert r[f"time/{phase}"] >= 0
    assert r["throughput/rollout_tokens_per_s"] > 0
    assert r["train/teacher_context_frac"] == 1.0  # every failed sample has feedback for the teacher
  assert {r["cursor/outer"] for r in train} == {0, 1, 2}
  _, side = read_checkpoint(straight, 4)
  assert side["cursor"] == {"epoch": 0, "outer": 2, "inner": 0, "step": 4}
  assert set(side["history"]) == {"0", "2", "4"}


def test_exact_resume_after_sigkill(env, straight, tmp_path):
  wd = tmp_path / "killed"
  out, err, rc = run_until_saved(env, wd, 2, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  finish(run(env, wd))
  assert_same_checkpoint(straight, wd, 4)
  # The metrics of the resumed run continue the killed one without duplicates.
  steps = [r["step"] for r in mx.read_jsonl(wd / "metrics.jsonl") if "train/loss" in r]
  assert steps == [1, 2, 3, 4]


def test_exact_resume_after_sigterm(env, straight, tmp_path):
  wd = tmp_path / "terminated"
  out, err, rc = run_until_saved(env, wd, 2, signal.SIGTERM)
  assert rc == 0 and "DONE preempted 3" in out  # it finished step 3, saved it and stopped cleanly
  assert (wd / "checkpoints" / "3").is_dir()
  finish(run(env, wd))
  assert_same_checkpoint(straight, wd, 4)


def test_unreadable_latest_checkpoint_falls_back_to_previous(env, straight, tmp_path):
  wd = tmp_path / "corrupt"
  shutil.copytree(straight, wd)
  for f in (wd / "checkpoints" / "4" / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"not an array")
  out, err = finish(run(env, wd))
  assert "checkpoint step 4" in err and "unreadable" in err and "falling back to the previous step" in err
  aside = list((wd / "checkpoints_unreadable").iterdir())
  assert [p.name.split(".")[0] for p in aside] == ["4"]
  assert_same_checkpoint(straight, wd, 4)  # resumed at 2 and recomputed 3, 4 exactly


def test_init_from_with_reflection_off_leaves_source_untouched(env, straight, tmp_path):
  before = digest(straight)
  wd = tmp_path / "ablation"
  finish(run(env, wd, overrides={"init_from": str(straight), "context.reflection": False,
                                 "train.max_steps": 2}))
  assert digest(straight) == before
  assert (wd / "checkpoints" / "2").is_dir()
  _, side = read_checkpoint(wd, 2)
  assert side["cursor"]["step"] == 2
  assert side["context"]["playbook"]["update_count"] == 2  # a fresh playbook (init_playbook is off)
  # No reflection calls: the context engine generated nothing (the source run did).
  calls = lambda run: sum(r.get("context/generate/non_text_outputs/count", 0)  # noqa: E731
                          for r in mx.read_jsonl(run / "metrics.jsonl"))
  assert calls(wd) == 0 and calls(straight) > 0


@pytest.mark.parametrize("algorithm,overrides", [("sdpo", {}), ("sdpo_ss", {}), ("grpo", {"grpo.group_size": 2})])
def test_baselines_run(env, tmp_path, algorithm, overrides):
  wd = tmp_path / algorithm
  out, _ = finish(run(env, wd, algorithm, overrides))
  assert "DONE finished 4" in out
  rows = mx.read_jsonl(wd / "metrics.jsonl")
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert [r["step"] for r in rows if "val/per_task/mean@n" in r] == [0, 2, 4]
  _, side = read_checkpoint(wd, 4)
  assert side["algorithm"] == algorithm and side["context"]["playbook"]["entries"] == []
  if algorithm == "grpo":
    assert all("train/clip_frac" in r for r in rows if "train/loss" in r)


def test_evaluate_checkpoint_reads_without_writing(env, straight):
  before = digest(straight)
  out, _ = finish(run(env, straight, "eval", {"eval.num_samples": 3}))
  result = json.loads(next(line for line in out.splitlines() if line.startswith("EVAL "))[5:])
  assert result["step"] == 4 and result["num_samples"] == 3 and result["num_problems"] == 2
  assert 0 <= result["per_task/mean@n"] <= result["per_task/best@n"] <= 1
  assert digest(straight) == before
