"""The parts of the SD train step timed alone (each jitted separately; medians), to see where a step's time goes.

  python bench/train_step_parts.py [--layers loop|scan] [--attn_impl auto] [--preset small] [--batch 4
      --prompt 256 --teacher_prompt 768 --response 512] [--iters 5]

Printed: student forward, teacher forward, student forward + backward (a linear read-out of the response hidden
states stands in for the loss), and the fused loss with its gradients into the parameters and the student's
hidden states, each with its analytic matmul FLOPs and the share of a jitted 2048^3 matmul's rate (same run).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from resd_jax.distill import losses  # noqa: E402
from resd_jax.models import ModelConfig, Transformer  # noqa: E402
from resd_jax.train import state as st  # noqa: E402
from resd_jax.train.step import head_in_compute_dtype, response_hidden, teacher_head_fn  # noqa: E402

from forward import _time as _median_time  # noqa: E402
from train_step import make_batch, matmul_rate, model_flops  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="small")
  ap.add_argument("--layers", default="loop", choices=("loop", "scan"))
  ap.add_argument("--compute_dtype", default="bfloat16", choices=("float32", "bfloat16"))
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--prompt", type=int, default=256)
  ap.add_argument("--teacher_prompt", type=int, default=768)
  ap.add_argument("--response", type=int, default=512)
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--attn_impl", default="auto", choices=("auto", "blocked", "cpu_fused", "cudnn", "xla"))
  args = ap.parse_args()
  b, r = args.batch, args.response
  cfg = ModelConfig.preset(args.preset, compute_dtype=args.compute_dtype, scan_layers=args.layers == "scan",
                           attn_impl=args.attn_impl)
  graphdef, params = st.split_model(Transformer(cfg, rngs=nnx.Rngs(0)))
  batch = jax.tree.map(jnp.asarray, make_batch(b, args.prompt, args.teacher_prompt, r, cfg.vocab_size))
  readout = jax.random.normal(jax.random.key(0), (b, r, cfg.hidden_size))           # [B, R, D]

  def hidden(p, tokens, mask):
    return response_hidden(nnx.merge(graphdef, p), tokens, mask, r)                 # [B, R, D]

  student = jax.jit(lambda p: hidden(p, batch.student_tokens, batch.student_mask))
  teacher = jax.jit(lambda p: hidden(p, batch.teacher_tokens, batch.teacher_mask))
  student_grad = jax.jit(jax.grad(lambda p: jnp.sum(hidden(p, batch.student_tokens, batch.student_mask) * readout)))
  h_s, h_t = student(params), teacher(params)
  dcfg = losses.DistillConfig(top_k=100, alpha=1.0, chunk_size=args.chunk)
  coef = jnp.full((b, r), 1.0 / (b * r), jnp.float32)

  def loss(p, h_s, h_t):  # as in train.step.sd_loss: weights cast to the compute dtype once, not per chunk
    m, teacher_head = nnx.merge(graphdef, p), teacher_head_fn(graphdef, p)
    total, _ = losses.fused_weighted_loss(m.logits_with, m.head_weight(), h_s, lambda hs: teacher_head(hs[0]),
                                          [h_t], batch.response_tokens, coef, batch.rollout_logprobs, dcfg,
                                          head_cast=jax.lax.stop_gradient(head_in_compute_dtype(m)))
    return total

  loss_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

  mm = matmul_rate(args.compute_dtype)
  print(f"{args.preset} preset, B={b}, student {args.prompt}+{r}, teacher {args.teacher_prompt}+{r}, layers in a "
        f"{'lax.scan' if args.layers == 'scan' else 'Python loop'}; jitted 2048^3 matmul {mm:.1f} GFLOP/s")
  student_flops, teacher_flops = model_flops(cfg, b, args.prompt + r), model_flops(cfg, b, args.teacher_prompt + r)
  parts = (("student forward", lambda: student(params), student_flops),
           ("teacher forward", lambda: teacher(params), teacher_flops),
           ("student forward + backward", lambda: student_grad(params), 3 * student_flops),
           ("fused loss + gradients", lambda: loss_grad(params, h_s, h_t), 4 * 2 * b * r * cfg.hidden_size * cfg.vocab_size))
  for name, fn, flops in parts:
    sec = _median_time(lambda fn=fn: jax.block_until_ready(fn()), args.iters)
    print(f"{name}: {sec:.3f} s, {flops / sec / 1e9:.1f} GFLOP/s = {flops / sec / 1e9 / mm:.0%} of the matmul rate")


if __name__ == "__main__":
  main()
