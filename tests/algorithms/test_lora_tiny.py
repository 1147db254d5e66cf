"""End-to-end LoRA run on the tiny model (tiny_run.py, own process): the base stays bit-identical across the
run while the adapters move, the checkpoint holds optimizer moments and teacher for the adapters only, and a
run killed after its step-2 checkpoint resumes to the same step-4 checkpoint bit for bit."""
import signal

import numpy as np
import pytest

from tests.algorithms.test_train_tiny import (assert_same_checkpoint, env, finish, read_checkpoint,  # noqa: F401
                                              run, run_until_saved)

pytestmark = pytest.mark.slow
LORA = {"lora.enabled": True, "lora.rank": 4, "lora.base_dtype": "bfloat16"}


def _leaves(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_leaves(v, f"{prefix}{k}/"))
    else:
      out[prefix + str(k)] = np.asarray(v)
  return out


@pytest.fixture(scope="module")
def lora_straight(env, tmp_path_factory):  # noqa: F811
  wd = tmp_path_factory.mktemp("lora_straight")
  finish(run(env, wd, overrides=LORA))
  return wd


def test_lora_run_trains_adapters_only(lora_straight):
  s2, _ = read_checkpoint(lora_straight, 2)
  s4, _ = read_checkpoint(lora_straight, 4)
  p2, p4 = _leaves(s2["params"]), _leaves(s4["params"])
  adapters = {k for k in p4 if "_lora_" in k}
  assert adapters
  for k in p4:
    if k in adapters:
      assert p4[k].dtype == np.float32
    else:
      assert p4[k].dtype.name == "bfloat16", k         # lora.base_dtype
      assert p2[k].tobytes() == p4[k].tobytes(), k      # frozen
  assert any(not np.array_equal(p2[k], p4[k]) for k in adapters if k.endswith("_lora_b"))
  moments = {k.split("/", 3)[-1] for k in _leaves(s4["opt_state"]) if "_lora_" in k or "layers" in k}
  assert moments and all("_lora_" in k for k in moments)
  assert set(_leaves(s4["teacher"])) == adapters       # the EMA teacher: adapters only


def test_lora_exact_resume_after_sigkill(env, lora_straight, tmp_path):  # noqa: F811
  wd = tmp_path / "killed"
  out, err, rc = run_until_saved(env, wd, 2, signal.SIGKILL, overrides=LORA)
  assert rc == -signal.SIGKILL
  finish(run(env, wd, overrides=LORA))
  assert_same_checkpoint(lora_straight, wd, 4)
