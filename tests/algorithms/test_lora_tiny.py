"""End-to-end LoRA run on the tiny model (tiny_run.py, own process): the base stays bit-identical across the
run while the adapters move, the checkpoint holds optimizer moments and teacher for the adapters only, and a
run killed after its step-2 checkpoint resumes to the same step-4 checkpoint bit for bit."""
import signal

import jax
import numpy as np
import pytest

from tests.algorithms.test_train_tiny import (assert_same_checkpoint, env, finish, read_checkpoint,  # noqa: F401
                                              run, run_until_saved)

pytestmark = pytest.mark.slow
LORA = {"lora.enabled": True, "lora.rank": 4, "lora.base_dtype": "bfloat16"}


def _leaves(tree):
  """{path string: array} of a restored (nested dict / list) tree."""
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


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
  moved = [k for k in adapters if "_lora_b" in k and not np.array_equal(p2[k], p4[k])]
  assert len(moved) == len(adapters) // 2              # every B moved from step 2 to 4
  moments = [k for k in _leaves(s4["opt_state"]) if "layers" in k]
  assert len(moments) == 2 * len(adapters) and all("_lora_" in k for k in moments)   # Adam mu, nu of adapters
  assert set(_leaves(s4["teacher"])) == adapters       # the EMA teacher: adapters only


def test_lora_exact_resume_after_sigkill(env, lora_straight, tmp_path):  # noqa: F811
  wd = tmp_path / "killed"
  out, err, rc = run_until_saved(env, wd, 2, signal.SIGKILL, overrides=LORA)
  assert rc == -signal.SIGKILL
  finish(run(env, wd, overrides=LORA))
  assert_same_checkpoint(lora_straight, wd, 4)
