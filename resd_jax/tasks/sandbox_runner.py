"""The child side of `sandbox.py`: confine this process, then run one untrusted program.

Run as `python -I -S sandbox_runner.py <setup-json>` by `sandbox.run`; never imported by the library. It must not
import anything from `resd_jax` (it runs before and after privileges are dropped, with a minimal sys.path).

Order matters, every step runs before any untrusted code:
  1. read the request file (program + what to call) and pre-import the allowed modules while still privileged
     (after the drop /root and site-packages may be unreadable, which makes every other import fail: a de-facto
     import allow-list);
  2. new mount + network namespaces (root only): every mount re-bound read-only, a fresh tmpfs as the working
     directory, no network interfaces up (even 127.0.0.1 is unreachable);
  3. rlimits (CPU, address space, processes, file size, no core files);
  4. drop to an unprivileged uid/gid with no supplementary groups (root only) and set no_new_privs;
  5. write b"R" (ready) to the result pipe: the parent starts the wall-clock budget here;
  6. exec the program and call the requested function / run the requested statement;
  7. write one JSON result to the result pipe and `os._exit` (no atexit hooks of the program run).

The untrusted program shares this process, so it could forge what this runner writes. The parent therefore
only asks for the *value* the program returns (mode "call") and judges it itself; expected answers are never
sent here. Mode "assert" (a raw statement judged in here) exists for test strings that do not follow the
`check_distance(...)` shape and is forgeable by the program: see `sandbox.py`.
"""
import ctypes
import json
import math
import os
import resource
import sys
import traceback

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_FLAG_BITS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
  if rc != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data) -> None:
  enc = lambda s: None if s is None else s.encode()
  _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _unescape(path: str) -> str:
  """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
  out, i = [], 0
  while i < len(path):
    if path[i] == "\\" and i + 4 <= len(path) and path[i + 1:i + 4].isdigit():
      out.append(chr(int(path[i + 1:i + 4], 8)))
      i += 4
    else:
      out.append(path[i])
      i += 1
  return "".join(out)


def _readonly_filesystem(workdir: str, uid: int, tmpfs_mb: int, hide: list) -> list:
  """Private mount namespace: every mount read-only, the `hide` paths covered, a fresh writable tmpfs on
  `workdir`."""
  _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
  _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)
  failed = []
  with open("/proc/self/mountinfo") as f:
    entries = [line.split() for line in f]
  for fields in entries:
    point, opts = _unescape(fields[4]), fields[5].split(",")
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
    for name in opts:
      flags |= _FLAG_BITS.get(name, 0)
    try:
      _mount(None, point, None, flags, None)
    except OSError:
      if point == "/":
        raise
      failed.append(point)  # e.g. a mount hidden under another one; not writable by the dropped uid anyway
  for path in hide:  # e.g. the dataset with the expected answers: an empty read-only tmpfs / /dev/null on top
    if os.path.isdir(path):
      _mount("tmpfs", path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=4k,mode=0555")
    elif os.path.exists(path):
      _mount("/dev/null", path, None, _MS_BIND, None)
  _mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV,
         f"size={tmpfs_mb}m,mode=0700,uid={uid},gid={uid}")
  return failed


def _set_limits(lim: dict) -> None:
  mb = 1 << 20
  resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"]))
  resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] * mb, lim["memory_mb"] * mb))
  resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
  resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_mb"] * mb, lim["fsize_mb"] * mb))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _confine(setup: dict) -> list:
  """Steps 2-4. Returns the isolation measures that are in force; raises if a required one fails."""
  applied = []
  mode, uid = setup["isolation"], setup["uid"]
  if mode == "strict":  # we are root: namespaces + privilege drop; every step must succeed
    failed = _readonly_filesystem(setup["workdir"], uid, setup["limits"]["tmpfs_mb"], setup["limits"]["hide_paths"])
    applied.append("readonly_fs" + (f"(skipped {len(failed)})" if failed else ""))
    _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    applied.append("no_network")
  elif mode == "uid_only":  # root without CAP_SYS_ADMIN (e.g. a default container): no mount namespace
    if _libc.unshare(_CLONE_NEWNET) == 0:
      applied.append("no_network")
  elif mode == "best_effort":  # unprivileged: a user + network namespace if the kernel allows it
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
      applied.append("no_network")
  os.chdir(setup["workdir"])
  _set_limits(setup["limits"])
  applied.append("rlimits")
  if mode in ("strict", "uid_only"):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # real, effective and saved: no way back to root
    if os.getuid() == 0 or os.geteuid() == 0:
      raise OSError("privilege drop failed")
    applied.append(f"uid={uid}")
  _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
  _libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # after setuid, which clears it
  if os.getppid() != setup["parent_pid"]:  # the parent died before PDEATHSIG was armed
    os._exit(70)
  return applied


def _preload(names: list) -> None:
  if any(n.split(".")[0] not in sys.stdlib_module_names for n in names):
    import site  # third-party preloads (numpy) need site-packages on sys.path
    site.main()
  for name in names:
    __import__(name)


def check_distance(a, b) -> float:
  """Mean Euclidean distance between matching points of two lists of [x, y] (3 decimals)."""
  if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or not a or not b:
    raise TypeError("Input lists must be lists")
  if len(a) != len(b):
    raise ValueError(f"Lists must have same length: {len(a)} vs {len(b)}")
  total = 0.0
  for p, q in zip(a, b):
    if len(p) != 2 or len(q) != 2:
      raise ValueError("Each point must be [x, y]")
    total += math.hypot(float(p[0]) - float(q[0]), float(p[1]) - float(q[1]))
  return round(total / len(a), 3)


def _error(stage: str, exc: BaseException, with_tb: bool) -> dict:
  out = {"status": "error", "stage": stage, "error_type": type(exc).__name__, "error": str(exc)[:2000]}
  if with_tb:
    out["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
  return out


def _execute(request: dict) -> dict:
  program = request["program"]
  namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__, "check_distance": check_distance}
  import linecache  # so tracebacks can quote the program's lines
  linecache.cache["<solution>"] = (len(program), None, program.splitlines(True), "<solution>")
  try:
    exec(compile(program, "<solution>", "exec"), namespace)
  except Exception as e:  # SystemExit / KeyboardInterrupt end the runner without a result, on purpose
    return _error("definition", e, with_tb=False)
  if request["mode"] == "exec":
    return {"status": "ok"}
  if request["mode"] == "assert":
    try:
      exec(compile(request["statement"], "<test>", "exec"), namespace)
    except Exception as e:
      return _error("assert", e, with_tb=True)
    return {"status": "ok", "passed": True}
  fn = namespace.get(request["func"])
  if not callable(fn):
    return {"status": "error", "stage": "call", "error_type": "NameError",
            "error": f"name '{request['func']}' is not defined"}
  import time
  t0 = time.perf_counter()
  try:
    value = fn(*request["args"])
  except Exception as e:
    return _error("call", e, with_tb=True)
  elapsed = time.perf_counter() - t0
  try:
    text = json.dumps(value)
  except (TypeError, ValueError, RecursionError):
    return {"status": "ok", "call_time_s": elapsed, "value_repr": repr(value)[:2000]}
  return {"status": "ok", "call_time_s": elapsed, "value_json": text}


def main() -> None:
  setup = json.loads(sys.argv[1])
  result_fd = setup["result_fd"]
  with open(setup["request_path"]) as f:
    request = json.load(f)
  try:
    _preload(setup["preload"])  # trusted modules, imported while their files are still readable
    applied = _confine(setup)
  except Exception as e:  # confinement failed: never run the program
    os.write(result_fd, b"R" + json.dumps({"status": "sandbox_error", "error_type": type(e).__name__,
                                            "error": str(e)[:500]}).encode())
    os._exit(71)
  os.write(result_fd, b"R")
  result = _execute(request)
  result["isolation"] = applied
  data = json.dumps(result).encode()[: setup["result_cap"]]
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  except Exception:
    pass
  view = memoryview(data)
  while view:
    view = view[os.write(result_fd, view):]
  os._exit(0)


if __name__ == "__main__":
  main()
