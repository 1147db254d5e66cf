"""ALFWorld environment throughput: engine steps/s and episodes/s for a batch of generated games played with
random admissible commands (no model: sampling time is measured separately by the rollout benchmark).

Also times game generation (planner-checked) and `reset`.

  python bench/alfworld_env.py [--batch 16] [--max-steps 50] [--episodes-per-slot 2] [--root DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

from resd_jax.tasks.alfworld import data, generator
from resd_jax.tasks.alfworld.env import AlfworldEnvConfig, AlfworldEnvs


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--max-steps", type=int, default=50)
  p.add_argument("--episodes-per-slot", type=int, default=2)
  p.add_argument("--root", default="", help="generated-games folder (default: a fresh temporary one)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()

  root = args.root or tempfile.mkdtemp(prefix="alfworld_bench_")
  n_per_type = -(-args.batch // len(generator.TASK_TYPES))  # enough train games for one per slot
  t0 = time.perf_counter()
  generator.ensure_generated_games(root, n_per_type=n_per_type, seed=args.seed, splits=("train",))
  gen_s = time.perf_counter() - t0
  games = data.list_games(root, "train")[: args.batch]
  print(f"generation: {len(games)} games in {gen_s:.1f} s ({gen_s / max(len(games), 1):.2f} s/game, "
        f"planner-checked; 0 s when reused)")

  rng = random.Random(args.seed)
  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=args.max_steps))
  reset_s = step_s = 0.0
  steps = episodes = 0
  for _ in range(args.episodes_per_slot):
    t0 = time.perf_counter()
    states = envs.reset(games)
    reset_s += time.perf_counter() - t0
    while envs.live():
      replies = {i: f"Action: {rng.choice(states[i].admissible)}" for i in envs.live()}
      t0 = time.perf_counter()
      states = envs.step(replies)
      step_s += time.perf_counter() - t0
      steps += len(replies)
    episodes += len(games)
  m = envs.metrics()
  total = reset_s + step_s
  print(f"batch {len(games)}, max_steps {args.max_steps}, {episodes} episodes, {steps} engine steps "
        f"(random admissible commands)")
  print(f"reset: {reset_s / args.episodes_per_slot:.2f} s per batch ({reset_s / episodes * 1e3:.1f} ms/game)")
  print(f"step:  {steps / step_s:.1f} env steps/s ({step_s / steps * 1e3:.2f} ms/step, one process)")
  print(f"episodes/s (env only, reset included): {episodes / total:.2f}")
  print(f"random-policy success: {m['success'][0]:.0f}/{m['success'][1]:.0f}, crashed {m['crashed'][0]:.0f}")


if __name__ == "__main__":
  main()
