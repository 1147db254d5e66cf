"""Grading throughput: sandboxed BouncingSim tests/s (serial and pooled) and Manufactoria tests/s.

  python bench/grading_sandbox.py [--responses 4] [--workers 1 2 4]

BouncingSim: each assert is one fresh confined process (the paper's per-test semantic), so throughput is
bounded by process start-up; a pool runs several at once. Manufactoria is a pure-Python interpreter, no sandbox.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resd_jax.tasks import bouncingsim  # noqa: E402
from resd_jax.tasks.sandbox import SandboxLimits  # noqa: E402

# One ball moving in a straight line; a correct and a wrong (frozen) answer.
TIMES = [round(0.1 * k, 2) for k in range(1, 16)]
ASSERTS = [f"assert check_distance(predict_position({t:.2f}), [[{100 + 300 * t:.2f}, {200 + 400 * t:.2f}]]) <= 50.0"
           for t in TIMES]
GOOD = "```python\ndef predict_position(t):\n  return [[round(100 + 300 * t, 2), round(200 + 400 * t, 2)]]\n```"
WRONG = "```python\ndef predict_position(t):\n  return [[100.0, 200.0]]\n```"


def bench_bouncingsim(responses: int, workers: int) -> float:
  limits = SandboxLimits()
  t0 = time.perf_counter()
  for k in range(responses):
    bouncingsim.grade_response(GOOD if k % 2 == 0 else WRONG, ASSERTS, limits=limits, workers=workers)
  return responses * len(ASSERTS) / (time.perf_counter() - t0)


def bench_manufactoria(seconds: float = 3.0) -> float | None:
  try:
    from resd_jax.tasks.manufactoria import generator, grade_response
    from resd_jax.tasks.manufactoria import reference
  except ImportError:
    return None
  problems = generator.generate(0)[:50]
  jobs = [(f"```manufactoria\n{reference.reference_program(p)}\n```", list(p.tests)) for p in problems]
  n_tests, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    for code, tests in jobs:
      grade_response(code, tests)
      n_tests += len(tests)
  return n_tests / (time.perf_counter() - t0)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--responses", type=int, default=4, help="responses per setting (15 asserts each)")
  ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
  args = ap.parse_args()
  print(f"cpus={os.cpu_count()} euid={os.geteuid()} isolation={SandboxLimits().resolved_isolation()}")
  for w in args.workers:
    rate = bench_bouncingsim(args.responses, w)
    print(f"bouncingsim sandboxed tests/s  workers={w}: {rate:7.1f}  ({1000 / rate:.0f} ms/test)")
  rate = bench_manufactoria()
  print("manufactoria tests/s: " + (f"{rate:,.0f}" if rate is not None else "n/a (manufactoria package not importable)"))


if __name__ == "__main__":
  main()
