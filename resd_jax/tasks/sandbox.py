"""Isolated execution of model-written Python: one fresh, confined process per test.

Model code is hostile input. `run` starts `sandbox_runner.py` in a new session (its own process group) and the
runner confines itself before the program runs:

* root (our usual case, "strict"): private mount namespace with every mount read-only and a fresh size-capped
  tmpfs as working directory; a new network namespace (no interface up, so even 127.0.0.1 is unreachable);
  rlimits on CPU time, address space, process count, file size, open files, no core files; then a drop to an
  unprivileged uid/gid (one per concurrent run, so runs cannot signal each other) with no groups and
  no_new_privs. Root ignores RLIMIT_NPROC, so the drop is what makes that limit hold. Any failed step aborts
  the run before the program starts ("sandbox_error").
* root without the right to create mount namespaces, e.g. a default Docker container ("uid_only", chosen by
  "auto" after a failed probe, with a warning): the rlimits and the uid drop, a network namespace if allowed;
  the program can then write where any user may (/tmp) and read what any user may.
* not root ("best_effort"): a user + network namespace if the kernel allows unprivileged ones, and the rlimits;
  the filesystem stays writable where the user can write. Documented best effort.

The parent measures a wall-clock budget from the moment the runner reports ready (interpreter start-up is not
charged to the program), reads stdout / stderr / result through pipes with bounded buffers (output beyond the
cap is drained and dropped, so 100 MB of prints cost no memory), and afterwards SIGKILLs the whole process group
and, in strict mode, every process still owned by the run's uid (programs that `setsid` away from their
group). The temporary directory is removed. `SandboxPool` runs many requests in parallel on threads.

The runner sends back only what the program returned (`value`); judging it against expected answers is the
caller's job, in the trusted process, so the program can neither see nor forge the verdict.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Iterable, Sequence

RUNNER = pathlib.Path(__file__).with_name("sandbox_runner.py")
DEFAULT_PRELOAD = ("math", "cmath", "itertools", "functools", "collections", "fractions", "decimal", "heapq",
                   "bisect", "random")
ISOLATION_MODES = ("auto", "strict", "uid_only", "best_effort")
_UID_BASE = 200_000  # unmapped uids used for strict runs: base + (pid % 5000) * 128 + slot
_SLOTS = 128


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Per-run limits. Validated at construction."""
  timeout_s: float = 1.0         # wall clock from "ready" to exit (the paper's per-test budget)
  startup_timeout_s: float = 10.0  # interpreter start + confinement, before any untrusted code runs
  cpu_s: int = 2                 # RLIMIT_CPU, whole seconds
  memory_mb: int = 1024          # RLIMIT_AS
  nproc: int = 16                # RLIMIT_NPROC for the run's uid (threads count too)
  fsize_mb: int = 8              # RLIMIT_FSIZE: largest file the program may write
  tmpfs_mb: int = 32             # size of the writable working directory (strict mode)
  output_cap: int = 4096         # bytes of stdout / stderr tail kept
  result_cap: int = 1 << 20      # bytes of result JSON accepted
  program_cap: int = 1 << 20     # longest program accepted (characters)
  isolation: str = "auto"        # see ISOLATION_MODES and the module docstring
  preload: tuple[str, ...] = DEFAULT_PRELOAD  # modules importable by the program (others fail in strict mode)
  hide_paths: tuple[str, ...] = ()  # strict mode: files / folders made invisible (e.g. the dataset with answers)

  def __post_init__(self):
    for name in ("timeout_s", "startup_timeout_s"):
      if not getattr(self, name) > 0:
        raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)}")
    for name in ("cpu_s", "memory_mb", "nproc", "fsize_mb", "tmpfs_mb", "output_cap", "result_cap",
                 "program_cap"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"SandboxLimits.{name} must be a positive int, got {value!r}")
    if not all(isinstance(p, str) and os.path.isabs(p) for p in self.hide_paths):
      raise ValueError(f"SandboxLimits.hide_paths must be absolute paths, got {self.hide_paths!r}")
    if self.isolation not in ISOLATION_MODES:
      raise ValueError(f"SandboxLimits.isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}")

  def resolved_isolation(self) -> str:
    if self.isolation != "auto":
      return self.isolation
    if os.geteuid() != 0:
      return "best_effort"
    return _probe_root_isolation()


@dataclasses.dataclass(frozen=True)
class Request:
  """What to run. mode "call": exec `program`, then `func(*args)` (args must be JSON values); "assert": exec
  `program`, then `statement` (pass = no exception; judged inside the sandbox, so forgeable by the program);
  "exec": only exec `program`."""
  program: str
  mode: str = "call"
  func: str = ""
  args: tuple = ()
  statement: str = ""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  """status: "ok" (program ran; see value / passed), "error" (the program raised; see stage, error_type),
  "timeout" (wall-clock budget exceeded), "no_result" (the runner died without reporting: exit, signal, CPU or
  memory limit), "sandbox_error" (confinement failed; the program never ran)."""
  status: str
  value: Any = None            # mode "call": the decoded JSON return value (None if not JSON-serialisable)
  value_repr: str = ""         # mode "call": repr of a non-JSON return value
  passed: bool = False         # mode "assert": statement ran without exception
  stage: str = ""              # "definition" / "call" / "assert" for errors
  error_type: str = ""
  error: str = ""
  traceback: str = ""
  timed_out: bool = False
  exit_code: int | None = None
  stdout_tail: str = ""
  stderr_tail: str = ""
  runtime_s: float = 0.0       # wall clock from ready to exit
  call_time_s: float = -1.0    # time spent inside func(*args), measured in the child
  isolation: tuple[str, ...] = ()


class _SlotPool:
  """Hands out distinct uids to concurrent strict runs."""

  def __init__(self):
    self._lock = threading.Lock()
    self._free = list(range(_SLOTS))

  def acquire(self) -> int:
    with self._lock:
      if not self._free:
        raise RuntimeError(f"more than {_SLOTS} concurrent sandbox runs in one process")
      slot = self._free.pop(0)
    return _UID_BASE + (os.getpid() % 5000) * _SLOTS + slot

  def release(self, uid: int) -> None:
    with self._lock:
      self._free.append((uid - _UID_BASE) % _SLOTS)


_SLOT_POOL = _SlotPool()


class _Tail:
  """Keeps the last `cap` bytes written to it."""

  def __init__(self, cap: int):
    self.cap, self.buf, self.total = cap, bytearray(), 0

  def add(self, data: bytes) -> None:
    self.total += len(data)
    self.buf += data
    if len(self.buf) > 2 * self.cap:
      del self.buf[:-self.cap]

  def text(self) -> str:
    data = bytes(self.buf[-self.cap:])
    prefix = f"...[{self.total - len(data)} bytes dropped]\n" if self.total > len(data) else ""
    return prefix + data.decode("utf-8", errors="replace")


def _pids_of_uid(uid: int) -> list[int]:
  """Live (non-zombie) processes whose real uid is `uid`."""
  pids = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
      if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
        pids.append(int(entry))
    except (OSError, ValueError, KeyError):
      continue
  return pids


def _kill_everything(proc: subprocess.Popen, uid: int | None) -> None:
  """SIGKILL the run's process group, then (strict) every process still owned by its uid, until none is left."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  if uid is None:
    return
  for _ in range(200):
    pids = _pids_of_uid(uid)
    if not pids:
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
    time.sleep(0.002)


_PROBE: dict[str, str] = {}
_PROBE_LOCK = threading.Lock()


def _probe_root_isolation() -> str:
  """As root: "strict" if a trivial strict run works here, else "uid_only" (warned once). Cached per process."""
  with _PROBE_LOCK:
    if "mode" not in _PROBE:
      res = run(Request(program="", mode="exec"), SandboxLimits(isolation="strict", preload=()))
      _PROBE["mode"] = "strict" if res.status == "ok" else "uid_only"
      if _PROBE["mode"] == "uid_only":
        warnings.warn(f"sandbox: mount/network namespaces unavailable ({res.error_type}: {res.error}); running "
                      "with rlimits and an unprivileged uid only (the filesystem is not read-only)")
    return _PROBE["mode"]


def run(request: Request, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
  """Run one request in a fresh confined process and report what happened. Never raises on program behaviour."""
  if len(request.program) > limits.program_cap:
    return SandboxResult(status="error", stage="definition", error_type="ProgramTooLong",
                         error=f"program has {len(request.program)} characters (limit {limits.program_cap})")
  mode = limits.resolved_isolation()
  if mode in ("strict", "uid_only") and os.geteuid() != 0:
    raise PermissionError(f"SandboxLimits.isolation={mode!r} needs root; use 'auto' or 'best_effort'")
  uid = _SLOT_POOL.acquire() if mode in ("strict", "uid_only") else None
  workdir = tempfile.mkdtemp(prefix="resd-sandbox-")
  if mode == "uid_only":
    os.chown(workdir, uid, uid)  # strict mounts its own tmpfs instead
  r_fd = w_fd = -1
  try:
    request_path = os.path.join(workdir, "request.json")
    with open(request_path, "w") as f:
      json.dump({"program": request.program, "mode": request.mode, "func": request.func,
                 "args": list(request.args), "statement": request.statement}, f)
    r_fd, w_fd = os.pipe()
    setup = {"isolation": mode, "uid": uid, "workdir": workdir, "request_path": request_path,
             "result_fd": w_fd, "result_cap": limits.result_cap, "parent_pid": os.getpid(),
             "preload": list(limits.preload), "limits": dataclasses.asdict(limits)}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(RUNNER), json.dumps(setup)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=(w_fd,), cwd=workdir, env=env, start_new_session=True)
    os.close(w_fd)
    w_fd = -1
    try:
      return _supervise(proc, r_fd, uid, limits)
    finally:
      _kill_everything(proc, uid)
      proc.wait()
  finally:
    for fd in (r_fd, w_fd):
      if fd >= 0:
        os.close(fd)
    if uid is not None:
      _SLOT_POOL.release(uid)
    shutil.rmtree(workdir, ignore_errors=True)


def _supervise(proc: subprocess.Popen, r_fd: int, uid: int | None, limits: SandboxLimits) -> SandboxResult:
  """Pump the three pipes until the runner exits or a budget runs out; then interpret what came back."""
  out, err = _Tail(limits.output_cap), _Tail(limits.output_cap)
  result = bytearray()
  sel = selectors.DefaultSelector()
  sel.register(proc.stdout, selectors.EVENT_READ, out)
  sel.register(proc.stderr, selectors.EVENT_READ, err)
  sel.register(r_fd, selectors.EVENT_READ, None)
  t_start = time.monotonic()
  t_ready: float | None = None
  timed_out = exited = False
  t_end = 0.0
  while True:
    now = time.monotonic()
    deadline = (t_ready + limits.timeout_s) if t_ready is not None else (t_start + limits.startup_timeout_s)
    if not exited and proc.poll() is not None:
      exited, t_end = True, now
      _kill_everything(proc, uid)  # stragglers would otherwise hold the pipes open
    if exited and (not sel.get_map() or now >= t_end + 0.5):  # 0.5 s grace to drain the pipes
      break
    if not exited and now >= deadline:
      timed_out = True
      break
    wait = 0.01 if exited else max(0.0, min(deadline - now, 0.05))
    if not sel.get_map():
      time.sleep(wait)  # the program closed its pipes but still runs
      continue
    for key, _ in sel.select(timeout=wait):
      data = os.read(key.fd, 65536)
      if not data:
        sel.unregister(key.fileobj)
      elif key.data is not None:
        key.data.add(data)
      else:
        if t_ready is None and data[:1] == b"R":
          t_ready, data = time.monotonic(), data[1:]
        if len(result) < limits.result_cap:
          result += data[: limits.result_cap - len(result)]
  sel.close()
  if not exited:
    t_end = time.monotonic()
  runtime = t_end - (t_ready if t_ready is not None else t_start)
  common = dict(timed_out=timed_out, exit_code=proc.poll(), stdout_tail=out.text(), stderr_tail=err.text(),
                runtime_s=runtime)
  if timed_out:
    return SandboxResult(status="timeout", error_type="TimeLimitExceeded",
                         error=f"killed after {limits.timeout_s}s", **common)
  try:
    payload = json.loads(bytes(result)) if result else None
  except (ValueError, RecursionError):
    payload = None
  if not isinstance(payload, dict):
    return SandboxResult(status="no_result", error_type="NoResult",
                         error=f"the program ended without a result (exit code {proc.poll()})", **common)
  return _from_payload(payload, common)


def _from_payload(p: dict, common: dict) -> SandboxResult:
  s = lambda key, cap=4000: str(p.get(key, ""))[:cap]
  status = p.get("status")
  if status not in ("ok", "error", "sandbox_error"):
    return SandboxResult(status="no_result", error_type="BadResult", error="malformed result", **common)
  value = None
  if "value_json" in p:
    try:
      value = json.loads(str(p["value_json"]))
    except (ValueError, RecursionError):
      value = None
  call_time = p.get("call_time_s", -1.0)
  return SandboxResult(
      status=status, value=value, value_repr=s("value_repr"), passed=p.get("passed") is True, stage=s("stage"),
      error_type=s("error_type", 200), error=s("error"), traceback=s("traceback"),
      call_time_s=float(call_time) if isinstance(call_time, (int, float)) else -1.0,
      isolation=tuple(str(x) for x in p.get("isolation", []))[:10], **common)


class SandboxPool:
  """Runs many requests in parallel, each in its own fresh sandboxed process. Results keep the input order."""

  def __init__(self, workers: int = 2, limits: SandboxLimits = SandboxLimits()):
    if not isinstance(workers, int) or not 1 <= workers <= _SLOTS:
      raise ValueError(f"SandboxPool.workers must be an int in [1, {_SLOTS}], got {workers!r}")
    self.limits = limits
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

  def map(self, requests: Iterable[Request]) -> list[SandboxResult]:
    return list(self._executor.map(lambda r: run(r, self.limits), requests))

  def submit(self, request: Request) -> concurrent.futures.Future:
    return self._executor.submit(run, request, self.limits)

  def close(self) -> None:
    self._executor.shutdown(wait=True)

  def __enter__(self) -> "SandboxPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def run_many(requests: Sequence[Request], limits: SandboxLimits = SandboxLimits(),
             workers: int = 1) -> list[SandboxResult]:
  """Serial when workers == 1 (the paper's setting), else through a temporary `SandboxPool`."""
  if workers == 1:
    return [run(r, limits) for r in requests]
  with SandboxPool(workers, limits) as pool:
    return pool.map(requests)
