"""The sandbox battery: hostile programs are contained and reported, and this test process is unharmed.

Every hostile test runs with small limits (short timeout, few processes, little memory) so that a sandbox bug
cannot take the machine down.
"""
import dataclasses
import os
import pathlib
import shutil
import socket
import tempfile

import pytest

from resd_jax.tasks import sandbox
from resd_jax.tasks.sandbox import Request, SandboxLimits

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="strict isolation (namespaces, uid drop) needs root")
SMALL = SandboxLimits(timeout_s=1.0, cpu_s=2, memory_mb=256, nproc=8, fsize_mb=1, tmpfs_mb=4)


def _uid_of(result) -> int | None:
  for item in result.isolation:
    if item.startswith("uid="):
      return int(item[4:])
  return None


def test_call_returns_value_and_output():
  program = "def f(t, k):\n  print('log line')\n  return [[round(t * k, 2), -1.5]]\n"
  r = sandbox.run(Request(program=program, func="f", args=(0.25, 3)), SMALL)
  assert r.status == "ok" and not r.timed_out
  assert r.value == [[0.75, -1.5]]
  assert r.stdout_tail == "log line\n"
  assert r.call_time_s >= 0.0


def test_errors_are_reported_by_stage():
  r = sandbox.run(Request(program="x = 1 / 0\n", func="f"), SMALL)
  assert (r.status, r.stage, r.error_type) == ("error", "definition", "ZeroDivisionError")
  r = sandbox.run(Request(program="def f(t):\n  return [1][t]\n", func="f", args=(5,)), SMALL)
  assert (r.status, r.stage, r.error_type) == ("error", "call", "IndexError")
  assert "<solution>" in r.traceback and "return [1][t]" in r.traceback
  r = sandbox.run(Request(program="y = 2\n", func="f"), SMALL)
  assert (r.status, r.error_type) == ("error", "NameError")


def test_non_json_return_value_is_reported_as_repr():
  r = sandbox.run(Request(program="def f():\n  return {1, 2}\n", func="f"), SMALL)
  assert r.status == "ok" and r.value is None and r.value_repr == "{1, 2}"


def test_system_exit_gives_no_result():
  r = sandbox.run(Request(program="raise SystemExit(3)\n", mode="exec"), SMALL)
  assert r.status == "no_result" and r.exit_code == 3 and not r.timed_out


def test_assert_mode():
  prog = "def g(t):\n  return [[t, t]]\n"
  ok = sandbox.run(Request(program=prog, mode="assert", statement="assert check_distance(g(1), [[1, 2]]) <= 1"),
                   SMALL)
  assert ok.status == "ok" and ok.passed
  bad = sandbox.run(Request(program=prog, mode="assert", statement="assert check_distance(g(1), [[1, 5]]) <= 1"),
                    SMALL)
  assert bad.status == "error" and bad.error_type == "AssertionError" and not bad.passed


def test_infinite_loop_is_killed_at_the_wall_clock_budget():
  limits = SandboxLimits(timeout_s=0.5, cpu_s=5, memory_mb=256, nproc=8)
  r = sandbox.run(Request(program="while True:\n  pass\n", mode="exec"), limits)
  assert r.status == "timeout" and r.timed_out
  assert 0.45 <= r.runtime_s < 3.0


def test_cpu_limit_ends_a_busy_program_even_with_a_long_wall_budget():
  limits = SandboxLimits(timeout_s=20.0, cpu_s=1, memory_mb=256, nproc=8)
  r = sandbox.run(Request(program="while True:\n  pass\n", mode="exec"), limits)
  assert r.status == "no_result" and not r.timed_out and r.runtime_s < 10.0


@needs_root
def test_fork_bomb_is_bounded_and_fully_killed():
  program = ("import os\n"
             "def f():\n"
             "  n = 0\n"
             "  while True:\n"
             "    try:\n"
             "      if os.fork() == 0:\n"
             "        while True: pass\n"
             "      n += 1\n"
             "    except OSError:\n"
             "      return n\n")
  r = sandbox.run(Request(program=program, func="f"), SMALL)
  assert r.status == "ok"
  assert 0 <= r.value < SMALL.nproc  # the runner itself counts against the limit
  uid = _uid_of(r)
  assert uid is not None and sandbox._pids_of_uid(uid) == []


@needs_root
def test_detached_grandchild_does_not_survive():
  program = ("import os, time\n"
             "if os.fork() == 0:\n"
             "  os.setsid()\n"
             "  time.sleep(30)\n")
  r = sandbox.run(Request(program=program, mode="exec"), SMALL)
  assert r.status == "ok" and r.runtime_s < 2.0
  assert sandbox._pids_of_uid(_uid_of(r)) == []


def test_ten_gigabyte_allocation_fails_inside_the_sandbox():
  r = sandbox.run(Request(program="def f():\n  return len(bytearray(10 * 2**30))\n", func="f"), SMALL)
  assert r.status == "error" and r.error_type == "MemoryError"


@needs_root
def test_writing_outside_the_working_directory_is_refused(tmp_path):
  repo_file = pathlib.Path(__file__).resolve().parents[2] / "sandbox_escape.txt"
  tmp_file = pathlib.Path("/tmp/resd_sandbox_escape.txt")
  program = ("def f(path):\n"
             "  with open(path, 'w') as fh:\n"
             "    fh.write('pwned')\n"
             "  return 'written'\n")
  for target in (tmp_file, repo_file, tmp_path / "x.txt"):
    r = sandbox.run(Request(program=program, func="f", args=(str(target),)), SMALL)
    assert r.status == "error" and r.error_type in ("OSError", "PermissionError"), (target, r)
    assert not target.exists()
  inside = sandbox.run(Request(program=program, func="f", args=("local.txt",)), SMALL)
  assert inside.status == "ok" and inside.value == "written"


def test_file_size_limit():
  program = "def f():\n  open('big.bin', 'wb').write(b'x' * (4 << 20))\n  return 'done'\n"
  r = sandbox.run(Request(program=program, func="f"), SMALL)  # fsize_mb=1
  assert r.status != "ok"


@needs_root
def test_no_network_even_to_localhost():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  server.setblocking(False)
  port = server.getsockname()[1]
  program = ("import socket\n"
             "def f(port):\n"
             "  s = socket.socket()\n"
             "  s.settimeout(0.5)\n"
             "  s.connect(('127.0.0.1', port))\n"
             "  return 'connected'\n")
  # socket is preloaded here so that the network namespace, not the import allow-list, is what stops it.
  limits = dataclasses.replace(SMALL, preload=SMALL.preload + ("socket",))
  try:
    r = sandbox.run(Request(program=program, func="f", args=(port,)), limits)
    assert r.status == "error" and r.error_type in ("OSError", "ConnectionRefusedError", "TimeoutError"), r
    with pytest.raises(BlockingIOError):
      server.accept()
  finally:
    server.close()


def test_hundred_megabytes_of_output_are_drained_and_capped():
  program = ("import sys\n"
             "chunk = 'y' * (1 << 20)\n"
             "for _ in range(100):\n"
             "  sys.stdout.write(chunk)\n"
             "def f():\n"
             "  return 'still here'\n")
  limits = SandboxLimits(timeout_s=10.0, memory_mb=256, nproc=8, output_cap=1000)
  r = sandbox.run(Request(program=program, func="f"), limits)
  assert r.status == "ok" and r.value == "still here"
  assert r.stdout_tail.startswith(f"...[{100 * (1 << 20) - 1000} bytes dropped]\n")
  assert r.stdout_tail.endswith("y" * 1000)


def test_killing_the_parent_is_refused():
  program = "import os\ndef f():\n  os.kill(os.getppid(), 9)\n  return 'killed'\n"
  r = sandbox.run(Request(program=program, func="f"), SMALL)
  if ROOT:
    assert r.status == "error" and r.error_type == "PermissionError"
  # Reaching this line is the real assertion: the test process survived.
  assert os.getpid() > 0


@needs_root
def test_imports_outside_the_preload_list_fail():
  r = sandbox.run(Request(program="import numpy\n", mode="exec"), SMALL)
  assert r.status == "error" and r.error_type == "ModuleNotFoundError"
  ok = sandbox.run(Request(program="import math, collections\ndef f():\n  return math.pi\n", func="f"), SMALL)
  assert ok.status == "ok" and abs(ok.value - 3.141592653589793) < 1e-12


def test_working_directory_is_removed(monkeypatch, tmp_path):
  made = []
  real = sandbox.tempfile.mkdtemp
  monkeypatch.setattr(sandbox.tempfile, "mkdtemp", lambda **kw: made.append(real(dir=tmp_path, **kw)) or made[-1])
  sandbox.run(Request(program="open('a.txt', 'w').write('a')\n", mode="exec"), SMALL)
  assert len(made) == 1 and not os.path.exists(made[0])


def test_pool_keeps_order_and_runs_every_request():
  reqs = [Request(program=f"def f():\n  return {i}\n", func="f") for i in range(6)]
  reqs.append(Request(program="while True: pass\n", mode="exec"))
  results = sandbox.run_many(reqs, SandboxLimits(timeout_s=0.5, memory_mb=256, nproc=8), workers=2)
  assert [r.value for r in results[:6]] == list(range(6))
  assert results[6].status == "timeout"


def test_program_too_long_and_bad_limits():
  r = sandbox.run(Request(program="x" * 200, mode="exec"), SandboxLimits(program_cap=100))
  assert r.status == "error" and r.error_type == "ProgramTooLong"
  with pytest.raises(ValueError, match="SandboxLimits.nproc"):
    SandboxLimits(nproc=0)
  with pytest.raises(ValueError, match="isolation"):
    SandboxLimits(isolation="docker")
  with pytest.raises(ValueError, match="workers"):
    sandbox.SandboxPool(workers=0)


@needs_root
def test_uid_only_mode_drops_privileges_and_still_bounds_processes():
  limits = dataclasses.replace(SMALL, isolation="uid_only")
  r = sandbox.run(Request(program="import os\ndef f():\n  return [os.getuid(), os.getgid(), os.getgroups()]\n",
                          func="f"), limits)
  assert r.status == "ok" and r.value[0] != 0 and r.value[1] != 0 and r.value[2] == []
  assert r.value[0] == _uid_of(r) and "readonly_fs" not in r.isolation
  bomb = ("import os\n"
          "while True:\n"
          "  try:\n"
          "    if os.fork() == 0:\n"
          "      while True: pass\n"
          "  except OSError:\n"
          "    break\n")
  r = sandbox.run(Request(program=bomb, mode="exec"), limits)
  uid = _uid_of(r)
  assert r.status == "ok" and uid is not None and r.runtime_s < 3.0
  assert sandbox._pids_of_uid(uid) == []


@needs_root
def test_auto_resolves_to_strict_where_namespaces_work():
  assert SandboxLimits().resolved_isolation() == "strict"


def test_uid_sweep_sees_live_processes():
  assert os.getpid() in sandbox._pids_of_uid(os.getuid())


@needs_root
def test_hidden_paths_are_invisible():
  base_dir = pathlib.Path(tempfile.mkdtemp(prefix="resd-hide-test-"))  # pytest's tmp_path is not world-readable
  os.chmod(base_dir, 0o755)
  secret_dir = base_dir / "data"
  secret_dir.mkdir(mode=0o755)
  (secret_dir / "answers.jsonl").write_text("the expected positions")
  lone = base_dir / "lone.txt"
  lone.write_text("also secret")
  program = "def f(p):\n  try:\n    return open(p).read()\n  except OSError as e:\n    return type(e).__name__\n"
  open_limits = SMALL
  hidden = dataclasses.replace(SMALL, hide_paths=(str(secret_dir), str(lone)))
  try:
    seen = sandbox.run(Request(program=program, func="f", args=(str(lone),)), open_limits)
    assert seen.value == "also secret"  # world-readable files are readable unless hidden
    for path in (secret_dir / "answers.jsonl", lone):
      r = sandbox.run(Request(program=program, func="f", args=(str(path),)), hidden)
      assert r.status == "ok" and r.value in ("", "FileNotFoundError"), r.value
  finally:
    shutil.rmtree(base_dir)
  with pytest.raises(ValueError, match="hide_paths"):
    SandboxLimits(hide_paths=("relative/path",))
