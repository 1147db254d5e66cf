"""Manufactoria grading throughput: tests/s for full responses (extraction + parse + every test + feedback).

Grades all tests of N generated problems three ways: with their reference factories (all pass, no feedback),
with a wrong factory (accepts everything: wrong answers + feedback rendering), and with a looping factory (every
expected-accept test runs the full 1,000 visits, the worst case per test).

  python bench/grading_manufactoria.py [--problems 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import random
import time

from resd_jax.tasks.manufactoria import generator
from resd_jax.tasks.manufactoria.grader import grade_response
from resd_jax.tasks.manufactoria.reference import reference_program

WRONG = "START start:\n    NEXT end\nEND end"
LOOP = "START start:\n    NEXT a\nPAINTER_RED a:\n    NEXT b\nPULLER_RB b:\n    [R] a\n    [B] a\n    [EMPTY] a\nEND end"


def _fenced(code: str) -> str:
  return f"Reasoning about the factory...\n\n```manufactoria\n{code}\n```\n"


def _measure(problems, responses, repeats: int) -> tuple[float, float, float]:
  """(tests/s, responses/s, mean reward), best of `repeats`."""
  n_tests = sum(len(p.tests) for p in problems)
  best, rewards = float("inf"), []
  for _ in range(repeats):
    t0 = time.perf_counter()
    rewards = [grade_response(r, list(p.tests)).reward for p, r in zip(problems, responses)]
    best = min(best, time.perf_counter() - t0)
  return n_tests / best, len(problems) / best, sum(rewards) / len(rewards)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--problems", type=int, default=200)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  problems = random.Random(0).sample(generator.generate(seed=0), args.problems)
  n_tests = sum(len(p.tests) for p in problems)
  print(f"{len(problems)} problems, {n_tests} tests")
  cases = {"reference": [_fenced(reference_program(p)) for p in problems],
           "wrong (accept all)": [_fenced(WRONG)] * len(problems),
           "looping (1000 visits)": [_fenced(LOOP)] * len(problems)}
  for label, responses in cases.items():
    tps, rps, reward = _measure(problems, responses, args.repeats)
    print(f"{label:>22}: {tps:10.0f} tests/s  {rps:8.1f} responses/s  mean reward {reward:.2f}")


if __name__ == "__main__":
  main()
