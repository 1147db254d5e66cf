"""launch/generate.py: bad sampling flags end with a one-line error before any model is loaded."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bad_flag_value_is_a_one_line_error():
  r = subprocess.run([sys.executable, str(ROOT / "launch" / "generate.py"), "--top_p=2", "--prompt=hi"],
                     capture_output=True, text=True, timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: SamplingParams: top_p must be in (0, 1]"), r.stderr[-500:]
