"""Forward throughput of the `small` preset: ours (JAX) vs transformers (PyTorch), same config, same run.

  python bench/forward.py [--batch 4] [--seq 1024] [--iters 5]

Prints tokens/s for each and the ratio. Random weights; the compute is what is measured.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resd_jax.models import ModelConfig, Transformer


def _time(fn, iters):
  fn()  # compile / warm up
  out = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return statistics.median(out)


def torch_peer(preset: str = "small"):
  """The `transformers` (PyTorch, float32) model with the same shapes as our preset, random weights (seed 0)."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  torch.manual_seed(0)
  hf = ModelConfig.preset(preset).to_hf_dict()
  config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
  return transformers.AutoModelForCausalLM.from_config(config).float()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--skip_torch", action="store_true")
  args = ap.parse_args()
  b, t = args.batch, args.seq
  tokens = np.random.default_rng(0).integers(0, 32768, (b, t)).astype(np.int32)
  print(f"machine: {jax.devices()[0].platform} x{jax.device_count()}, batch {b} x {t} tokens, small preset")
  results = {}
  for cd in ("float32", "bfloat16"):
    cfg = ModelConfig.preset("small", compute_dtype=cd)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, toks):
      m = nnx.merge(graphdef, state)
      h, _ = m(toks)
      return m.logits(h[:, -1])  # next-token logits of the last position (what a forward is used for)

    toks = jnp.asarray(tokens)
    sec = _time(lambda: jax.block_until_ready(fwd(state, toks)), args.iters)
    results[f"ours ({cd} compute)"] = b * t / sec
  if not args.skip_torch:
    import torch  # noqa: PLC0415
    ref = torch_peer().eval()
    tt = torch.tensor(tokens, dtype=torch.long)

    def run_torch():
      with torch.inference_mode():
        ref(input_ids=tt, logits_to_keep=1)
    results["transformers (PyTorch fp32)"] = b * t / _time(run_torch, args.iters)
  for k, v in results.items():
    print(f"{k:32s} {v:10.0f} tokens/s")
  if "transformers (PyTorch fp32)" in results:
    base = results["transformers (PyTorch fp32)"]
    for k, v in results.items():
      if k.startswith("ours"):
        print(f"ratio {k} / PyTorch: {v / base:.2f}x")


if __name__ == "__main__":
  main()
