"""Multi-turn rollout throughput on ALFWorld: episodes/s and engine steps/s for a batch of generated games
played by the embedded SmolLM2-135M policy on CPU, split into sampling time and environment time.

One warm-up round (compiles the sampler's length buckets and loads the engines) is run and not counted; then
`--rounds` timed rounds of `--batch` episodes each (`rollout.multi_turn.run_episodes`: one sampler call per
turn for all live episodes).

  python bench/alfworld_rollout.py [--batch 16] [--max-steps 8] [--max-new-tokens 48] [--rounds 1]
"""
from __future__ import annotations

import argparse
import os
import time

import jax

from resd_jax.models import hf_io
from resd_jax.models import tokenizer as tk
from resd_jax.rollout.multi_turn import MultiTurnConfig, RolloutTimes, run_episodes
from resd_jax.sampling import SamplingParams, generate_rollouts
from resd_jax.tasks.alfworld import data, generator
from resd_jax.tasks.alfworld.env import AlfworldEnvConfig, AlfworldEnvs


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=16, help="episodes played together")
  p.add_argument("--max-steps", type=int, default=8, help="engine steps per episode")
  p.add_argument("--max-new-tokens", type=int, default=48, help="reply length cap per turn")
  p.add_argument("--max-prompt-len", type=int, default=1024)
  p.add_argument("--history-turns", type=int, default=2)
  p.add_argument("--rounds", type=int, default=1, help="timed rounds after the warm-up")
  p.add_argument("--root", default="~/.cache/resd_jax/alfworld_generated/n3_s0")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()

  n_per_type = -(-args.batch // len(generator.TASK_TYPES))
  root = generator.ensure_generated_games(os.path.expanduser(args.root), n_per_type=n_per_type, seed=args.seed,
                                          splits=("train",))
  games = data.list_games(root, "train")[: args.batch]
  if len(games) < args.batch:
    raise SystemExit(f"only {len(games)} solvable train games were generated in {root}; pass another --root "
                     f"or --seed, or a smaller --batch")
  tokenizer = tk.load_embedded_tokenizer()
  model, _ = hf_io.load_embedded()
  params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)
  mt = MultiTurnConfig(max_prompt_len=args.max_prompt_len, history_turns=args.history_turns)
  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=args.max_steps))

  def play(key_id: int) -> tuple[list, RolloutTimes, float]:
    key = jax.random.PRNGKey(args.seed + key_id)
    sample = lambda convs, turn: generate_rollouts(model, tokenizer, convs, params, jax.random.fold_in(key, turn),
                                                   batch_size=args.batch)
    times = RolloutTimes()
    t0 = time.perf_counter()
    eps = run_episodes(envs, games, sample, tokenizer, mt, times)
    return eps, times, time.perf_counter() - t0

  _, warm, warm_s = play(0)
  print(f"warm-up (compiles + engine loads, not counted): {warm_s:.1f} s, sampling {warm.sample_s:.1f} s, "
        f"env {warm.env_s:.1f} s")
  total = RolloutTimes()
  wall = 0.0
  episodes = won = tokens = 0
  for r in range(args.rounds):
    eps, t, s = play(1 + r)
    wall += s
    episodes += len(eps)
    won += sum(e.won for e in eps)
    tokens += sum(len(tr.response_tokens) for e in eps for tr in e.turns)
    for f in ("sample_s", "env_s", "other_s", "sampler_calls", "env_steps"):
      setattr(total, f, getattr(total, f) + getattr(t, f))
  envs.close()
  print(f"device: {jax.devices()[0].platform} x{jax.device_count()}; {len(games)} games, max {args.max_steps} steps, "
        f"<= {args.max_new_tokens} new tokens per turn, {args.rounds} timed round(s)")
  print(f"episodes/s        {episodes / wall:.3f}  ({episodes} episodes, {won} won, {wall:.1f} s)")
  print(f"env steps/s       {total.env_steps / wall:.2f}  ({total.env_steps} steps, {total.sampler_calls} sampler calls)")
  print(f"sampling          {total.sample_s:.1f} s  ({100 * total.sample_s / wall:.0f}%, "
        f"{tokens / max(total.sample_s, 1e-9):.1f} response tokens/s)")
  print(f"environment       {total.env_s:.1f} s  ({100 * total.env_s / wall:.0f}%, "
        f"{total.env_steps / max(total.env_s, 1e-9):.1f} engine steps/s alone)")
  print(f"prompt building   {total.other_s:.1f} s  ({100 * total.other_s / wall:.0f}%)")


if __name__ == "__main__":
  main()
