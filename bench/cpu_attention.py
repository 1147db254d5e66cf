"""One layer's causal attention on the CPU: our C++ kernel (attn_impl="cpu_fused") against blocked attention
(XLA, one (sequence, KV head) pair at a time), in the same run.

  python bench/cpu_attention.py [--batch 4 --heads 8 --kv_heads 4 --head_dim 64 --teacher_len 1280
                                 --student_len 768 --iters 10]

The `small` benchmark step's shapes by default: the teacher's forward at 768 + 512 tokens and the student's
forward + backward at 256 + 512, bf16 inputs with float32 accumulation, left-padded rows. Printed: median
milliseconds and GFLOP/s (causal: half the [T, T] products; forward 2 matmuls, forward + backward 6) for
both, and the largest difference between their outputs on rows that see a key.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from resd_jax.kernels import cpu_attention  # noqa: E402
from resd_jax.models.attention import causal_attention  # noqa: E402


def _median_ms(fn, args, iters: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--kv_heads", type=int, default=4)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--teacher_len", type=int, default=1280)
  ap.add_argument("--student_len", type=int, default=768)
  ap.add_argument("--iters", type=int, default=10)
  args = ap.parse_args()
  if not cpu_attention.available():
    sys.exit("the CPU attention kernel did not build here (see the warning above)")
  b, h, kvh, dh = args.batch, args.heads, args.kv_heads, args.head_dim
  rng = np.random.default_rng(0)
  blocked = lambda q, k, v, m: causal_attention(q, k, v, m, block=256, dtype=jnp.bfloat16, head_loop=True)
  fused = lambda q, k, v, m: cpu_attention.cpu_causal_attention(q, k, v, m)
  print(f"B={b}, heads {h}/{kvh} (q/kv), head_dim {dh}; {jax.device_count()} device(s), bf16 inputs")
  for name, t, grad in (("forward", args.teacher_len, False), ("forward + backward", args.student_len, True)):
    q = jnp.asarray(rng.standard_normal((b, t, h, dh)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, t, kvh, dh)), jnp.float32) for _ in range(2))
    mask = np.ones((b, t), bool)
    mask[1:, : t // 8] = False  # left padding
    seen = jnp.asarray(mask)[:, :, None, None]
    mask = jnp.asarray(mask)
    flops = (6 if grad else 2) * 2 * b * h * (t * t / 2) * dh
    results = {}
    for impl, attn in (("blocked", blocked), ("cpu_fused", fused)):
      if grad:
        fn = jax.jit(jax.grad(lambda q, k, v, attn=attn: jnp.sum(attn(q, k, v, mask) * seen), argnums=(0, 1, 2)))
      else:
        fn = jax.jit(lambda q, k, v, attn=attn: attn(q, k, v, mask))
      results[impl] = (fn(q, k, v), _median_ms(fn, (q, k, v), args.iters))
    for impl, (_, ms) in results.items():
      print(f"{name} at {t} tokens, {impl:9s}: {ms:7.2f} ms, {flops / ms / 1e6:6.1f} GFLOP/s")
    a, c = (jax.tree.leaves(results[i][0]) for i in ("blocked", "cpu_fused"))
    rows = 1 if grad else seen  # outputs of rows that see no key differ (blocked: a mean, fused: 0); unused
    diff = max(float(jnp.max(jnp.abs((x - y) * rows)) / jnp.max(jnp.abs(x))) for x, y in zip(a, c))
    print(f"  speed-up {results['blocked'][1] / results['cpu_fused'][1]:.2f}x; largest difference {diff:.1e} "
          f"of the largest {'gradient' if grad else 'output'}")


if __name__ == "__main__":
  main()
