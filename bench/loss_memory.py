"""Peak memory of the distillation loss (value + gradient) alone: chunked scan vs naive dense logits.

  python bench/loss_memory.py [--vocab 151936] [--response 8192] [--hidden 2560] [--chunk 128] [--top_k 100]

Both variants compute the same loss (top-k + tail, reverse KL, eps_min floor) and its gradient with respect
to the student hidden states and the output projection; the naive one builds [B, R, V] logits for student and
teacher at once, the chunked one scans over `--chunk` positions with remat, and the fused one (what the train
step uses) takes each chunk's gradient in the forward pass (`losses.fused_weighted_loss`). Nothing runs: each function is
lowered and compiled with abstract inputs and XLA's `memory_analysis()` gives its temporary memory.
Goal: chunked (and fused) <= 10% of naive.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from resd_jax.distill import losses as L  # noqa: E402

_GB = 1e9


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--vocab", type=int, default=151936)
  ap.add_argument("--response", type=int, default=8192)
  ap.add_argument("--hidden", type=int, default=2560)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--top_k", type=int, default=100)
  args = ap.parse_args()
  b, r, d, v = args.batch, args.response, args.hidden, args.vocab
  cfg = L.DistillConfig(top_k=args.top_k, chunk_size=args.chunk, alpha=1.0)

  def finish(terms, mask):
    m, w = L.token_weights(terms["logp"], mask, jnp.ones(b), jnp.ones(b), None, cfg)
    total, count = L.aggregate(terms["loss"], m, w, cfg.aggregation)
    return total / jnp.maximum(count, 1.0)

  def chunked(h_s, h_t, w, tokens, mask):
    head = lambda h: jnp.einsum("btd,dv->btv", h, w)  # noqa: E731
    return finish(L.chunked_token_terms(head, head, h_s, h_t, tokens, cfg), mask)

  def fused(h_s, h_t, w, tokens, mask):
    scale, count = L.aggregation_scale(mask, cfg.aggregation)
    total, _ = L.fused_weighted_loss(lambda wt, h: jnp.einsum("btd,dv->btv", h, wt), w, h_s,
                                     lambda h: jnp.einsum("btd,dv->btv", h, w), h_t, tokens, scale, None, cfg)
    return total / jnp.maximum(count, 1.0)

  def naive(h_s, h_t, w, tokens, mask):
    s = jnp.einsum("btd,dv->btv", h_s, w)                                     # [B, R, V]
    t = jax.lax.stop_gradient(jnp.einsum("btd,dv->btv", h_t, w))
    return finish(L.token_terms(s, t, tokens, cfg), mask)

  sds = jax.ShapeDtypeStruct
  args_ = (sds((b, r, d), jnp.float32), sds((b, r, d), jnp.float32), sds((d, v), jnp.float32),
           sds((b, r), jnp.int32), sds((b, r), jnp.float32))
  one_logits = b * r * v * 4 / _GB
  print(f"loss memory: B={b} R={r} V={v} D={d}, top_k={args.top_k}, chunk={args.chunk}; one [B, R, V] float32 "
        f"array = {one_logits:.2f} GB")
  out = {}
  for name, fn in (("chunked", chunked), ("fused", fused), ("naive", naive)):
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 2))).lower(*args_).compile()
    mem = compiled.memory_analysis()
    out[name] = mem.temp_size_in_bytes / _GB
    print(f"  {name:8s} temporaries {out[name]:8.2f} GB  (arguments {mem.argument_size_in_bytes / _GB:.2f} GB, "
          f"outputs {mem.output_size_in_bytes / _GB:.2f} GB)")
  for name in ("chunked", "fused"):
    ratio = out[name] / out["naive"]
    print(f"  {name} / naive = {ratio:.1%}  (goal <= 10%: {'met' if ratio <= 0.10 else 'not met'})")


if __name__ == "__main__":
  main()
