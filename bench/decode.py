"""Decode throughput of the sampler on the `small` preset: ours (JAX) vs transformers `generate` (PyTorch).

  python bench/decode.py [--batches 8,32] [--prompt 128] [--new 128] [--iters 3] [--dtypes float32,bfloat16]

Random weights, random prompts, greedy, exactly `--new` tokens per row on both sides (no stop tokens for
ours, `min_new_tokens=max_new_tokens` for transformers, which uses its KV cache). Reported: generated
tokens/s of the whole call (prefill + decode, batch * new / seconds, median of `--iters` timed runs after
a warm-up that compiles) and, for ours, of the decode loop alone. The machine is shared: medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from resd_jax.models import ModelConfig, Transformer
from resd_jax.sampling import SamplingParams, generate
from resd_jax.sampling import sampler as smp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import _time as _median_seconds, torch_peer  # noqa: E402  (median of timed runs after a warm-up)


def ours(compute_dtype: str, prompts: np.ndarray, new: int, iters: int) -> tuple[float, float]:
  """(tokens/s of generate(), tokens/s of the decode loop alone)."""
  model = Transformer(ModelConfig.preset("small", compute_dtype=compute_dtype), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  sp = SamplingParams(temperature=0, max_new_tokens=new)
  rows = prompts.tolist()
  b = len(rows)

  def full():
    out = generate((graphdef, state), rows, sp)
    assert min(out.lengths) == new
  total = _median_seconds(full, iters)
  # Decode loop alone: prefill once per run (untimed), then time decode_fn.
  knobs = smp._knobs(sp, model.config.vocab_size)
  toks, mask = np.asarray(prompts, np.int32), np.ones(prompts.shape, bool)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(0), np.arange(b, dtype=np.int32))
  times = []
  for i in range(iters + 1):
    cache = smp.empty_cache(model.config, b, toks.shape[1] + smp.bucket(new, smp.MIN_NEW_BUCKET))
    st = smp.prefill_fn(graphdef, state, cache, toks, mask, np.ones(b, bool), keys, knobs, k_cap=0)
    jax.block_until_ready(st)
    t = time.perf_counter()
    jax.block_until_ready(smp.decode_fn(graphdef, state, st, knobs, k_cap=0))
    if i:
      times.append(time.perf_counter() - t)
  return b * new / total, b * (new - 1) / statistics.median(times)


def torch_generate(prompts: np.ndarray, new: int, iters: int) -> float:
  import torch  # noqa: PLC0415
  ref = torch_peer().eval()
  ids = torch.tensor(prompts, dtype=torch.long)

  def run():
    with torch.inference_mode():
      out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + new
  return len(prompts) * new / _median_seconds(run, iters)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", default="8,32")
  ap.add_argument("--prompt", type=int, default=128)
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--skip_torch", action="store_true")
  args = ap.parse_args()
  print(f"machine: {jax.devices()[0].platform} x{jax.device_count()}; small preset, prompt {args.prompt}, "
        f"{args.new} new tokens, greedy")
  for b in map(int, args.batches.split(",")):
    prompts = np.random.default_rng(b).integers(3, 32768, (b, args.prompt))
    base = None if args.skip_torch else torch_generate(prompts, args.new, args.iters)
    if base is not None:
      print(f"batch {b:3d}  transformers generate (PyTorch fp32)   {base:9.0f} tok/s")
    for cd in args.dtypes.split(","):
      total, dec = ours(cd, prompts, args.new, args.iters)
      ratio = f"  ratio vs PyTorch {total / base:5.2f}x" if base else ""
      print(f"batch {b:3d}  ours generate ({cd:8s} compute)     {total:9.0f} tok/s  (decode loop alone "
            f"{dec:.0f} tok/s){ratio}", flush=True)


if __name__ == "__main__":
  main()
