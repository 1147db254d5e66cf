"""host_memory: when the launchers re-run themselves with glibc's huge-page malloc, and that the re-run keeps the
command line and happens once."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from resd_jax import host_memory as hm


def test_hugepage_env_decisions():
  new = hm.hugepage_env({"PATH": "/bin"}, (2, 36), "madvise")
  assert new == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Appended to tunables the user set, never replacing them.
  new = hm.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "always")
  assert new["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hm.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "always") is None  # user's choice
  assert hm.hugepage_env({"RESD_JAX_HUGEPAGES": "0"}, (2, 36), "always") is None                  # opt-out
  assert hm.hugepage_env({}, (2, 34), "always") is None       # glibc without the tunable
  assert hm.hugepage_env({}, None, "always") is None          # not glibc
  assert hm.hugepage_env({}, (2, 36), "never") is None        # THP off
  assert hm.hugepage_env({}, (2, 36), None) is None           # unknown kernel setting


@pytest.mark.skipif(hm.hugepage_env({}, hm.glibc_version(), hm._thp_mode()) is None,
                    reason="glibc < 2.35 or transparent huge pages off here")
def test_reexec_runs_the_same_command_once(tmp_path):
  script = tmp_path / "launcher.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {str(pathlib.Path(hm.__file__).parents[1])!r})
      print("start", flush=True)
      from resd_jax.host_memory import reexec_with_hugepage_malloc
      reexec_with_hugepage_malloc()
      print("args", sys.argv[1:], os.environ["GLIBC_TUNABLES"])
  """))
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RESD_JAX_HUGEPAGES")}
  out = subprocess.run([sys.executable, str(script), "--flag=1", "x y"], env=env, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines == ["start", "start", "args ['--flag=1', 'x y'] glibc.malloc.hugetlb=1"]
  env["RESD_JAX_HUGEPAGES"] = "0"
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "KeyError: 'GLIBC_TUNABLES'" in out.stderr  # not re-run
