"""Multi-host: host data onto a mesh of several processes, and two CPU processes running one training run.

Fast (in this process): `placement` on one process is `device_put` / `device_get`; the environment of
`maybe_initialize_distributed` is checked with one-line errors before anything starts.

Slow (subprocesses, each with a hard timeout and killed on failure): two JAX processes with 4 simulated CPU
devices each (gloo collectives over 127.0.0.1) run the tiny RESD trainer of tests/algorithms/tiny_run.py for
2 steps in two launches (checkpoint and stop at step 1, resume to step 2), next to one process with 8 devices
running the same config straight. Checked: the final parameters agree with the single-process run, the
playbook and solution buffer agree on both processes (and with the single process), only process 0 writes
files in the workdir, a process killed with SIGKILL takes the other one down within a bounded time, and an
unreachable coordinator gives one line of what to check after a bounded wait.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from resd_jax import metrics as mx
from resd_jax.parallel import make_mesh, placement
from resd_jax.parallel import mesh as mesh_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "algorithms" / "multihost_run.py"
HARD_TIMEOUT_S = 600          # any one subprocess
# 2 steps of one outer batch each, a checkpoint after every step; the batch (2 rows) over the data axis, so
# each process holds one row (the sampler's outputs are really gathered across processes).
OVERRIDES = {"task.name": "tiny_parity", "rollout.inner_updates": 1, "checkpoint.every": 1, "mesh.data": 2, "mesh.fsdp": 1,
             "mesh.tensor": -1, "eval.num_samples": 1, "train.learning_rate": 3e-5}


# ------------------------------------------------------------------------------------------ fast: placement
def test_put_and_to_host_on_one_process_are_device_put_and_get():
  mesh = make_mesh(data=2, fsdp=4)
  x = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
  sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
  a = placement.put(x, sharding)
  assert a.sharding == sharding and len(a.addressable_shards) == 8
  np.testing.assert_array_equal(placement.to_host(a), x)
  assert placement.put(a, sharding) is a  # already there: unchanged
  b = placement.put(a, NamedSharding(mesh, P(None, None)))
  assert b.is_fully_replicated
  np.testing.assert_array_equal(placement.to_host(b), x)


def test_put_tree_takes_a_prefix_tree_of_shardings_and_typed_keys():
  mesh = make_mesh(fsdp=8)
  tree = {"w": np.ones((8, 2), np.float32), "nested": (np.zeros(8, np.int32), np.ones(8, np.int32)),
          "key": jax.random.key(3)}
  rows, rep = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P())
  out = placement.put_tree(tree, {"w": rows, "nested": rows, "key": rep})
  assert out["w"].sharding == rows and all(x.sharding == rows for x in out["nested"])
  assert jax.dtypes.issubdtype(out["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(jax.random.key(3)))
  host = placement.to_host({"w": out["w"], "nested": out["nested"]})
  np.testing.assert_array_equal(host["w"], tree["w"])
  np.testing.assert_array_equal(host["nested"][1], tree["nested"][1])


# ------------------------------------------------------------------------------- fast: environment checks
@pytest.mark.parametrize("env,message", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost"}, "must be HOST:PORT"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:99999"}, "must be HOST:PORT"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_NUM_PROCESSES is not"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID is not"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2 must be in [0, 1]"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' is not an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
      "RESD_DIST_INIT_TIMEOUT_S": "0"}, "RESD_DIST_INIT_TIMEOUT_S=0 must be >= 1"),
])
def test_bad_environment_is_one_line_before_initialising(monkeypatch, env, message):
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "RESD_DIST_INIT_TIMEOUT_S"):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("initialize must not be called"))
  with pytest.raises(mesh_lib.DistributedInitError) as e:
    mesh_lib.maybe_initialize_distributed()
  assert message in str(e.value) and "\n" not in str(e.value)


def test_single_process_environment_does_not_initialise(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "RESD_MULTIHOST", "SLURM_NTASKS"):
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("initialize must not be called"))
  assert mesh_lib.maybe_initialize_distributed() is False


# ------------------------------------------------------------------------------ slow: several processes
def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Proc:
  """A subprocess with its output in files (no pipe can fill up) and a hard deadline."""

  def __init__(self, args, env, log_prefix: pathlib.Path):
    self.out_path, self.err_path = log_prefix.with_suffix(".out"), log_prefix.with_suffix(".err")
    self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
    self.started = time.monotonic()
    self.deadline = self.started + HARD_TIMEOUT_S
    self.popen = subprocess.Popen(args, env=env, stdout=self._out, stderr=self._err, cwd=str(ROOT))

  def wait(self) -> int:
    try:
      return self.popen.wait(timeout=max(1.0, self.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"{self.popen.args} ran past {HARD_TIMEOUT_S} s; stderr tail: {self.stderr()[-2000:]}")

  def kill(self) -> None:
    if self.popen.poll() is None:
      self.popen.kill()
      self.popen.wait(timeout=30)

  def stdout(self) -> str:
    self._out.flush()
    return self.out_path.read_text(errors="replace")

  def stderr(self) -> str:
    self._err.flush()
    return self.err_path.read_text(errors="replace")

  def wait_for_line(self, line: str, timeout: float) -> None:
    end = min(self.deadline, time.monotonic() + timeout)
    while time.monotonic() < end:
      if line in self.stdout().splitlines():
        return
      if self.popen.poll() is not None:
        pytest.fail(f"process exited ({self.popen.returncode}) before printing {line!r}: {self.stderr()[-2000:]}")
      time.sleep(0.2)
    pytest.fail(f"no {line!r} within {timeout} s")


def base_env(tmp: pathlib.Path, devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS", "RESD_DIST", "SLURM_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  return env


def launch(tmp: pathlib.Path, name: str, workdir: pathlib.Path, overrides: dict, *, port: int,
           heartbeat_s: int = 300) -> list[Proc]:
  """Two processes of one run. They get different PYTHONHASHSEEDs: nothing may depend on str hashing.
  A short heartbeat timeout fails healthy runs on an overloaded machine (a process starved for that long
  during a compile counts as dead), so only the run that loses a process on purpose gets one."""
  procs = []
  for i in range(2):
    env = base_env(tmp, 4)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
               PYTHONHASHSEED=str(11 + i), RESD_DIST_INIT_TIMEOUT_S="120",
               RESD_DIST_HEARTBEAT_TIMEOUT_S=str(heartbeat_s), RESD_DIST_SHUTDOWN_TIMEOUT_S="30")
    procs.append(Proc([sys.executable, str(DRIVER), str(workdir), str(tmp / f"{name}_dump"), json.dumps(overrides)],
                      env, tmp / f"{name}_p{i}"))
  return procs


def finish(procs: list[Proc]) -> None:
  try:
    codes = [p.wait() for p in procs]
    for p, rc in zip(procs, codes):
      assert rc == 0, f"process exited with {rc}; stderr tail:\n{p.stderr()[-3000:]}"
  finally:
    for p in procs:
      p.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Everything the slow tests read, started together (the machine is shared; the runs overlap)."""
  tmp = tmp_path_factory.mktemp("multihost")
  started: list[Proc] = []
  try:
    # The single-process reference (8 devices, 2 steps straight), the first launch of the two-process run
    # (stops at step 1 after its checkpoint), and a process whose coordinator never answers.
    ref = Proc([sys.executable, str(DRIVER), str(tmp / "ref"), str(tmp / "ref_dump"),
                json.dumps({**OVERRIDES, "train.max_steps": 2})], base_env(tmp, 8), tmp / "ref")
    started.append(ref)
    first = launch(tmp, "first", tmp / "multi", {**OVERRIDES, "train.max_steps": 1}, port=free_port())
    started += first
    env = base_env(tmp, 4)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1",
               RESD_DIST_INIT_TIMEOUT_S="5")
    lonely = Proc([sys.executable, "launch/train.py", "--config=configs/manufactoria.py:tiny",
                   "--config.model.source=preset", "--config.model.preset=tiny", f"--workdir={tmp / 'lonely'}"],
                  env, tmp / "lonely")
    started.append(lonely)
    finish(first)
    first_files = sorted(str(p.relative_to(tmp / "multi")) for p in (tmp / "multi").rglob("*"))
    first_dumps = [json.loads((tmp / "first_dump" / f"process_{i}.json").read_text()) for i in range(2)]
    # The second launch resumes from step 1; meanwhile a third run loses its process 1 to SIGKILL.
    second = launch(tmp, "second", tmp / "multi", {**OVERRIDES, "train.max_steps": 2}, port=free_port())
    started += second
    doomed = launch(tmp, "doomed", tmp / "doomed", {**OVERRIDES, "eval.before_training": False},
                    port=free_port(), heartbeat_s=20)
    started += doomed
    doomed[1].wait_for_line("STEP 0", timeout=HARD_TIMEOUT_S)
    doomed[1].popen.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    doomed[0].wait()
    survivor_s = time.monotonic() - killed_at
    finish(second)
    assert ref.wait() == 0, ref.stderr()[-3000:]
    lonely.wait()
    yield {"tmp": tmp, "first_files": first_files, "first_dumps": first_dumps, "survivor": doomed[0],
           "survivor_s": survivor_s, "lonely": lonely}
  finally:
    for p in started:
      p.kill()


def _dumps(tmp, name):
  return ([json.loads((tmp / f"{name}_dump" / f"process_{i}.json").read_text()) for i in range(2)],
          [dict(np.load(tmp / f"{name}_dump" / f"params_{i}.npz")) for i in range(2)])


@pytest.mark.slow
def test_two_processes_resume_to_the_single_process_parameters(runs):
  tmp = runs["tmp"]
  (a, b), (pa, pb) = _dumps(tmp, "second")
  ref = json.loads((tmp / "ref_dump" / "process_0.json").read_text())
  p_ref = dict(np.load(tmp / "ref_dump" / "params_0.npz"))
  assert [a["process_count"], a["device_count"], ref["process_count"], ref["device_count"]] == [2, 8, 1, 8]
  assert [d["status"] for d in runs["first_dumps"]] == ["max_steps", "max_steps"]
  assert a["cursor"]["step"] == b["cursor"]["step"] == ref["cursor"]["step"] == 2
  assert sorted(pa) == sorted(p_ref) and len(pa) > 5
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k])  # the same gathered values on both processes
    np.testing.assert_allclose(pa[k], p_ref[k], rtol=0, atol=1e-6, err_msg=k)
  # The second step moved the weights by far more than the tolerance (a run that trained nothing, or drew
  # different samples, would not match). The tolerance is met with a margin only for small learning rates:
  # Adam divides near-zero gradients by their own size, so reduction-order differences in them (across
  # processes vs. within one) reach ~5e-3 of the learning rate (seen: 4.6e-6 at 1e-3, 34 of 3.1M weights).
  p_first = dict(np.load(tmp / "first_dump" / "params_0.npz"))
  assert max(float(np.max(np.abs(pa[k] - p_first[k]))) for k in pa) > 1e-5
  assert (tmp / "multi" / "checkpoints" / "1").is_dir() and (tmp / "multi" / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_playbook_and_solution_buffer_identical_on_both_processes(runs):
  tmp = runs["tmp"]
  for dumps in (runs["first_dumps"], _dumps(tmp, "second")[0]):
    assert dumps[0]["context"] == dumps[1]["context"]
  (a, _), _ = _dumps(tmp, "second")
  ref = json.loads((tmp / "ref_dump" / "process_0.json").read_text())
  assert a["context"] == ref["context"]  # and the same as one process running the whole mesh
  assert a["context"]["playbook"]["update_count"] == 2
  assert a["context"]["solution_buffer"]["solutions"], "no successes: the buffer comparison would be empty"


@pytest.mark.slow
def test_only_process_zero_writes_files_in_the_workdir(runs):
  tmp = runs["tmp"]
  for name in ("first", "second"):
    (d0, d1), _ = _dumps(tmp, name) if name == "second" else (runs["first_dumps"], None)
    assert d1["writes"] == [], d1["writes"]
    assert any(w.endswith("metrics.jsonl") for w in d0["writes"])  # the audit hook does see writes
  assert any("playbook_00000001" in w for w in runs["first_dumps"][0]["writes"])
  rows = mx.read_jsonl(tmp / "multi" / "metrics.jsonl")
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]  # one writer: no duplicated lines
  names = sorted(p.name for p in (tmp / "multi" / "playbooks").iterdir())
  assert names == ["playbook_00000001.txt", "playbook_00000002.txt"]


@pytest.mark.slow
def test_a_killed_process_takes_the_other_down(runs):
  survivor = runs["survivor"]
  assert survivor.popen.returncode != 0
  assert runs["survivor_s"] < 150, runs["survivor_s"]  # heartbeat timeout 20 s, plus a loaded machine
  err = survivor.stderr()
  assert "another task died" in err or "heartbeat" in err.lower(), err[-3000:]


@pytest.mark.slow
def test_unreachable_coordinator_is_one_line_after_a_bounded_wait(runs):
  lonely = runs["lonely"]
  assert lonely.popen.returncode == 1
  err = lonely.stderr().strip().splitlines()
  assert err[-1].startswith("error: process 1 of 2 could not join the run through the coordinator at 127.0.0.1:")
  assert "within 5 s" in err[-1] and "process 0 is running" in err[-1] and "JAX_PROCESS_ID" in err[-1]
  assert "Traceback" not in lonely.stderr() and "Check failure" not in lonely.stderr()
  assert not (runs["tmp"] / "lonely").exists()  # nothing was written
