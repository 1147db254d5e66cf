"""The self-distillation step with LoRA against full fine-tuning, in one run: step time and memory.

  python bench/lora_step.py [--iters 3] [--rank 16] [--compute_dtype bfloat16] [--base_dtype bfloat16]

Setup as bench/train_step.py (the `small` preset, B = 4, student prompt 256, teacher prompt 768, response 512,
top-100 + tail, reverse KL, AdamW), with an EMA teacher: the teacher kind whose kept copy LoRA shrinks most.
Variants, each compiled once and timed interleaved (median of --iters after a warm-up):
- full: every weight trained; optimizer moments and the EMA teacher over all weights;
- lora: rank --rank adapters on q, k, v, o, gate, up, down; base frozen in param_dtype;
- lora_bf16: the same with the frozen base held in --base_dtype.
Memory per variant: the train state's bytes (params, optimizer, teacher) and XLA's temporaries of the
compiled step (`memory_analysis().temp_size_in_bytes`): what the step needs besides its state.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from resd_jax.distill.losses import DistillConfig  # noqa: E402
from resd_jax.distill.teacher import TeacherConfig  # noqa: E402
from resd_jax.models import ModelConfig, Transformer, lora  # noqa: E402
from resd_jax.train import state as st  # noqa: E402
from resd_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402
from resd_jax.train.step import StepConfig, make_sd_step  # noqa: E402

from train_step import make_batch  # noqa: E402  (bench/train_step.py)

_MB = 2 ** 20


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def build(variant: str, args, batch):
  cfg = ModelConfig.preset(args.preset, compute_dtype=args.compute_dtype)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  if variant != "full":
    lcfg = lora.LoRAConfig(enabled=True, rank=args.rank, alpha=2.0 * args.rank,
                           base_dtype=args.base_dtype if variant == "lora_bf16" else "")
    model = lora.attach(model, lcfg, seed=1)
  graphdef, params = st.split_model(model)
  if variant == "lora_bf16":
    params = lora.cast_base(params, args.base_dtype)
  step_cfg = StepConfig(distill=DistillConfig(top_k=100, alpha=1.0, chunk_size=args.chunk),
                        teacher=TeacherConfig("ema", 0.05), optim=OptimConfig(learning_rate=1e-5, warmup_steps=0))
  state = st.init_train_state(params, make_optimizer(step_cfg.optim), step_cfg.teacher)
  step = make_sd_step(graphdef, step_cfg)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  return dict(step=step, state=state, compile_s=compile_s, temp=mem.temp_size_in_bytes,
              params=nbytes(state.params), opt=nbytes(state.opt_state), teacher=nbytes(state.teacher),
              trainable=nbytes(lora.trainable(state.params)), times=[])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="small")
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--compute_dtype", default="bfloat16")
  ap.add_argument("--base_dtype", default="bfloat16")
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--prompt", type=int, default=256)
  ap.add_argument("--teacher_prompt", type=int, default=768)
  ap.add_argument("--response", type=int, default=512)
  args = ap.parse_args()
  vocab = ModelConfig.preset(args.preset).vocab_size
  batch = jax.tree.map(jnp.asarray, make_batch(args.batch, args.prompt, args.teacher_prompt, args.response, vocab))
  variants = ("full", "lora", "lora_bf16")
  runs = {v: build(v, args, batch) for v in variants}
  for v in variants:                                       # warm-up
    r = runs[v]
    r["state"], m = r["step"](r["state"], batch)
    jax.block_until_ready(m)
  for _ in range(args.iters):                              # interleaved
    for v in variants:
      r = runs[v]
      t0 = time.perf_counter()
      r["state"], m = r["step"](r["state"], batch)
      jax.block_until_ready(m)
      r["times"].append(time.perf_counter() - t0)
  print(f"{args.preset}, B={args.batch}, prompt {args.prompt} / teacher {args.teacher_prompt} / response "
        f"{args.response}, compute {args.compute_dtype}, EMA teacher, LoRA rank {args.rank} on q,k,v,o,gate,up,down; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), median of {args.iters}")
  print(f"{'variant':10s} {'step s':>7s} {'compile s':>9s} {'trainable MB':>12s} {'params MB':>9s} {'optim MB':>8s} "
        f"{'teacher MB':>10s} {'XLA temp MB':>11s} {'state+temp MB':>13s}")
  for v in variants:
    r = runs[v]
    state_b = r["params"] + r["opt"] + r["teacher"]
    print(f"{v:10s} {np.median(r['times']):7.3f} {r['compile_s']:9.1f} {r['trainable'] / _MB:12.1f} "
          f"{r['params'] / _MB:9.1f} {r['opt'] / _MB:8.1f} {r['teacher'] / _MB:10.1f} {r['temp'] / _MB:11.1f} "
          f"{(state_b + r['temp']) / _MB:13.1f}")


if __name__ == "__main__":
  main()
