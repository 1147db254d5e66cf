"""Transparent huge pages for the host's malloc, set by re-running the launcher once.

On the CPU, every train step allocates XLA's large temporary buffers afresh; glibc serves them with new mmaps of
4 KiB pages and unmaps them at the end of the step, so each step paid ~500,000 page faults for the `small`
benchmark step (bench/RESULTS.md). glibc 2.35+ can ask the kernel for 2 MiB pages instead
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, honoured where transparent huge pages are `always` or `madvise`):
faults fell 14x and the step ran ~10% faster. glibc reads tunables only at process start, so the launchers
(launch/train.py, bench/train_step.py) call `reexec_with_hugepage_malloc()` first, which re-runs the same
command with the tunable added, once. `RESD_JAX_HUGEPAGES=0` turns it off; in a notebook, set the variable
before starting the kernel.
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
_VAR = "GLIBC_TUNABLES"
OPT_OUT = "RESD_JAX_HUGEPAGES"
_THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> Optional[tuple[int, int]]:
  """(major, minor) of the running glibc, None elsewhere (musl, macOS, Windows)."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _thp_mode() -> Optional[str]:
  """The kernel's transparent huge page mode (`always`, `madvise`, `never`), None when unknown."""
  try:
    text = _THP.read_text()
  except OSError:
    return None
  return text[text.find("[") + 1: text.find("]")] if "[" in text else None


def hugepage_env(environ: Mapping[str, str], glibc: Optional[tuple[int, int]],
                 thp_mode: Optional[str]) -> Optional[dict[str, str]]:
  """The environment to re-run with, or None when there is nothing to do: turned off (RESD_JAX_HUGEPAGES=0),
  already set, glibc older than 2.35 or absent, or the kernel has transparent huge pages off or unknown."""
  if environ.get(OPT_OUT, "1") == "0" or "glibc.malloc.hugetlb" in environ.get(_VAR, ""):
    return None
  if glibc is None or glibc < (2, 35) or thp_mode not in ("always", "madvise"):
    return None
  env = dict(environ)
  env[_VAR] = ":".join(x for x in (environ.get(_VAR), TUNABLE) if x)
  return env


def reexec_with_hugepage_malloc() -> None:
  """Re-run this process (same interpreter and arguments) with glibc's huge-page malloc, when it applies (see
  `hugepage_env`); returns without doing anything otherwise. Call it first thing in a launcher."""
  env = hugepage_env(os.environ, glibc_version(), _thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
