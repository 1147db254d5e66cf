#!/usr/bin/env bash
# A second GPU check for issue 3, in one command (NVIDIA GPU, JAX with CUDA, PyTorch + transformers):
#   bash bench/gpu_profile_step.sh            # log in $OUT/profile_step_gpu.txt (or /tmp/out)
# 1. Where the Qwen3-1.7B-shaped SD step's GPU time goes (bench/profile_step.py: kernel time per named scope),
#    B = 1, student 4096 + 4096, teacher 6144 + 4096 tokens, cuDNN attention, remat full.
# 2. The same step at B = 1 and B = 2, next to PyTorch `transformers` (bf16 autocast, SDPA) on the same GPU.
# 3. The loss's two-stage top-k ids (losses.top_k_ids) against jax.lax.top_k on the GPU: equality and time.
log=profile_step_gpu.txt
source "$(dirname "$0")/gpu_common.sh"
big=(--preset qwen3_1p7b --prompt 4096 --teacher_prompt 6144 --response 4096 --layers scan --remat full)
timeout 60 $py - <<'PY' 2>&1 | tee -a "$log"
import sys, time; sys.path.insert(0, "."); import jax, jax.numpy as jnp, numpy as np
from resd_jax.distill.losses import top_k_ids
def med(f, x):
  jax.block_until_ready(f(x)); ts = []
  for _ in range(9):
    t = time.perf_counter(); jax.block_until_ready(f(x)); ts.append(time.perf_counter() - t)
  return float(np.median(ts)) * 1e3
for v in (32768, 151936):
  x = jax.random.normal(jax.random.key(0), (2, 128, v), jnp.float32) * 4
  ref, two = jax.jit(lambda x: jax.lax.top_k(x, 100)[1]), jax.jit(lambda x: top_k_ids(x, 100))
  same = bool((ref(x) == two(x)).all())
  print(f"top-100 ids of [2, 128, {v}] f32: jax.lax.top_k {med(ref, x):.2f} ms, top_k_ids {med(two, x):.2f} ms, "
        f"equal: {same}")
PY
timeout 240 $py bench/profile_step.py "${big[@]}" --batch 1 --steps 2 --top 25 2>&1 | tee -a "$log"
for b in 1 2; do
  timeout 150 $py bench/train_step.py "${big[@]}" --batch $b --iters 5 2>&1 | tee -a "$log"
done
