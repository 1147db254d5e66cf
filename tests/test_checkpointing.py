"""Checkpoints: exact round trip (sharded arrays + JSON), keep latest k + best, unreadable latest -> previous
with a warning and nothing overwritten, read-only init_from, SIGTERM flag."""
import hashlib
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from resd_jax import checkpointing as ck


def _state(seed):
  mesh = jax.make_mesh((4, 2), ("data", "tensor"))
  k = jax.random.PRNGKey(seed)
  w = jax.device_put(jax.random.normal(k, (8, 6), jnp.float32), NamedSharding(mesh, P("data", "tensor")))
  return {"params": {"w": w, "b": jnp.arange(3, dtype=jnp.bfloat16) + seed},
          "opt": {"mu": jnp.full((8, 6), 0.5 + seed, jnp.float32), "count": jnp.asarray(seed, jnp.int32)},
          "rng": jax.random.PRNGKey(seed + 100), "step": jnp.asarray(seed, jnp.int32)}


def _side(step):
  big = np.random.default_rng(step).bit_generator.state  # 128-bit ints survive JSON
  return {"playbook": {"entries": [{"id": "str-00001", "content": "check the tape ü", "helpful": step}]},
          "buffer": {"ex-1": "```\nSTART start:\n```"}, "cursor": {"batch": step, "inner": 0},
          "np_rng": big, "config": {"lr": 1e-6, "name": "x"}}


def _tree_digest(path):
  h = hashlib.sha256()
  for p in sorted(pathlib.Path(path).rglob("*")):
    h.update(str(p.relative_to(path)).encode())
    if p.is_file():
      h.update(p.read_bytes())
  return h.hexdigest()


def test_round_trip_is_exact_and_keeps_shardings(tmp_path):
  c = ck.Checkpointer(tmp_path / "ckpt", every=2, keep=2)
  s = _state(3)
  assert c.save(4, s, _side(4))
  assert not c.save(4, _state(5), _side(5))  # never overwrites an existing step
  got_step, arrays, side = c.restore_latest(ck.abstract_like(s))
  assert got_step == 4 and side == _side(4)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(arrays)):
    assert a.dtype == b.dtype and a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert c.should_save(4) and not c.should_save(3) and not c.should_save(0)
  c.close()


def test_keeps_latest_k_and_the_best(tmp_path):
  c = ck.Checkpointer(tmp_path / "ckpt", keep=2, best_metric="val")
  vals = {1: 0.2, 2: 0.9, 3: 0.1, 4: None, 5: 0.3, 6: 0.4}
  for step, v in vals.items():
    c.save(step, _state(step), _side(step), metrics=None if v is None else {"val": v})
  assert c.steps() == [2, 5, 6]
  assert c.best_step() == 2
  c.close()


def test_unreadable_latest_falls_back_with_warning(tmp_path):
  c = ck.Checkpointer(tmp_path / "ckpt", keep=3)
  for step in (1, 2):
    c.save(step, _state(step), _side(step))
  c.close()
  # Corrupt step 2's arrays: overwrite every array data file (the JSON side state stays intact).
  files = [f for f in (tmp_path / "ckpt" / "2" / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  assert files
  for f in files:
    f.write_bytes(b"garbage")
  c = ck.Checkpointer(tmp_path / "ckpt", keep=3)
  with pytest.warns(RuntimeWarning, match="step 2 .* unreadable.*previous"):
    step, arrays, side = c.restore_latest(ck.abstract_like(_state(0)))
  assert step == 1 and side == _side(1)
  np.testing.assert_array_equal(np.asarray(arrays["params"]["w"]), np.asarray(_state(1)["params"]["w"]))
  aside = list((tmp_path / "checkpoints_unreadable").iterdir())
  assert len(aside) == 1 and aside[0].name.startswith("2.")  # kept, not deleted
  assert c.save(2, _state(7), _side(7))  # the resumed run writes its own step 2
  c.close()


def test_readonly_init_from_does_not_touch_the_source(tmp_path):
  src = tmp_path / "run" / "checkpoints"
  c = ck.Checkpointer(src, keep=3)
  for step in (1, 2):
    c.save(step, _state(step), _side(step))
  c.close()
  before = _tree_digest(tmp_path / "run")
  step, arrays, side = ck.restore_readonly(tmp_path / "run", ck.abstract_like(_state(0)))
  assert step == 2 and side["cursor"] == {"batch": 2, "inner": 0}
  step, arrays, _ = ck.restore_readonly(f"{src}@1", ck.abstract_like(_state(0)))
  assert step == 1 and int(arrays["step"]) == 1
  assert _tree_digest(tmp_path / "run") == before
  with pytest.raises(ck.CheckpointError, match="step 9 not found"):
    ck.restore_readonly(f"{src}@9", ck.abstract_like(_state(0)))
  with pytest.raises(ck.CheckpointError, match="no checkpoint directory"):
    ck.restore_readonly(tmp_path / "nowhere", ck.abstract_like(_state(0)))


def test_sigterm_sets_the_flag():
  with ck.PreemptionFlag() as flag:
    assert not flag.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.requested
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
