"""RESD end to end (tiny_run.py) with every role played by a stub chat-completions endpoint on 127.0.0.1
(deterministic answers, one request in eight failing with HTTP 500 or a malformed body): the run finishes,
the roles' counters and bindings are recorded, resume after SIGKILL is exact, and the API key (a unique
marker in an environment variable) appears in no file of the workdir and in no captured log."""
import importlib.util
import os
import pathlib
import signal
import sys

import pytest

from resd_jax import metrics as mx

pytestmark = pytest.mark.slow  # three tiny runs (~20 s each on a quiet machine)
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stub_endpoint import StubEndpoint, scripted_reply  # noqa: E402

_spec = importlib.util.spec_from_file_location("train_tiny_helpers", HERE.parent / "algorithms" / "test_train_tiny.py")
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)

KEY = "sk-RESD-ROLE-KEY-MARKER-5d2e81b0"


@pytest.fixture(scope="module")
def stub():
  with StubEndpoint(scripted_reply) as s:
    yield s


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")), JAX_PLATFORMS="cpu",
           XLA_FLAGS="--xla_force_host_platform_device_count=8", TINY_PAUSE_S="2",
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", RESD_ROLE_KEY=KEY)
  return e


def overrides(stub):
  out = {"eval.before_training": False, "eval.every_outer": 0}
  for role in ("reflector", "tagger", "curator"):
    out.update({f"roles.{role}.backend": "endpoint", f"roles.{role}.base_url": stub.base_url,
                f"roles.{role}.model": "stub-model", f"roles.{role}.api_key_env": "RESD_ROLE_KEY",
                f"roles.{role}.timeout_s": 10.0, f"roles.{role}.max_retries": 0})
  return out


@pytest.fixture(scope="module")
def straight(env, stub, tmp_path_factory):
  wd = tmp_path_factory.mktemp("endpoint_straight")
  out, err = tt.finish(tt.run(env, wd, overrides=overrides(stub)))
  return wd, out + err


def assert_no_key(workdir, logs):
  assert KEY not in logs
  for p in pathlib.Path(workdir).rglob("*"):
    if p.is_file():
      assert KEY.encode() not in p.read_bytes(), f"the API key was written to {p}"


def test_endpoint_roles_run_records_bindings_and_counters(straight, stub):
  wd, logs = straight
  rows = [r for r in mx.read_jsonl(wd / "metrics.jsonl") if "train/loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  calls = sum(r.get("context/role/reflector/calls/sum", 0) for r in rows)
  assert calls == sum(r["rollout/success/count"] - r["rollout/success/sum"] for r in rows) > 0  # one per failure
  assert sum(r.get("context/role/curator/calls/sum", 0) for r in rows) > 0
  assert all(r["context/role/reflector/failures/count"] > 0 for r in rows)
  roles = __import__("json").loads((wd / "roles.json").read_text())
  assert {n: (roles[n]["backend"], roles[n]["model"], roles[n]["api_key_env"]) for n in roles} == {
    n: ("endpoint", "stub-model", "RESD_ROLE_KEY") for n in ("reflector", "tagger", "curator")}
  _, side = tt.read_checkpoint(wd, 4)
  assert side["roles"] == roles and side["config"]["roles"]["curator"]["base_url"] == stub.base_url
  assert side["context"]["playbook"]["entries"]  # the stub's lessons reached the playbook
  assert all(q["auth"] == f"Bearer {KEY}" for q in stub.requests)  # the key was sent, only in the header
  assert_no_key(wd, logs)


def test_exact_resume_with_endpoint_roles_after_sigkill(env, stub, straight, tmp_path):
  wd = tmp_path / "killed"
  out, err, rc = tt.run_until_saved(env, wd, 2, signal.SIGKILL, overrides=overrides(stub))
  assert rc == -signal.SIGKILL
  out2, err2 = tt.finish(tt.run(env, wd, overrides=overrides(stub)))
  tt.assert_same_checkpoint(straight[0], wd, 4)
  assert_no_key(wd, out + err + out2 + err2)
