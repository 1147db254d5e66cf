"""On an NVIDIA GPU: the model with attn_impl="cudnn" (fused flash kernel) against our blocked attention.

  python bench/gpu_attention_parity.py     # exits 1 when the check fails

The CPU test suite checks the rotate-to-right-padding logic with jax.nn's "xla" implementation
(tests/models/test_attention_impl.py); this runs the cuDNN kernel itself, which only exists on a GPU. A small
Qwen3-shaped model, bf16 compute, rows with left and right padding, an unpadded row, an all-padding row. Both
bf16 variants are compared with the float32 blocked model at the real positions (hidden states with and
without out_start, and the parameter gradients of a loss on them): cuDNN's error must be of the order of
blocked bf16's own (at most 2x + 1e-3).
"""
from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from resd_jax.models import ModelConfig, Transformer  # noqa: E402


IMPL = "cudnn" if jax.default_backend() == "gpu" else "xla"  # "xla" lets the script itself be tried on CPU


def main() -> int:
  t = 300
  mask = np.zeros((4, t), bool)
  mask[0, 37:250], mask[1], mask[3, :120] = True, True, True
  toks = jnp.asarray(np.random.default_rng(0).integers(1, 4096, mask.shape), jnp.int32)
  jmask = jnp.asarray(mask)
  base = dict(vocab_size=4096, hidden_size=256, num_heads=4, num_kv_heads=2, head_dim=64, intermediate_size=512,
              num_layers=3, attn_block=64)
  models = {name: Transformer(ModelConfig.preset("tiny", **base, **kw), rngs=nnx.Rngs(0)) for name, kw in (
      ("float32 blocked", dict(attn_impl="blocked")),
      ("bf16 blocked", dict(attn_impl="blocked", compute_dtype="bfloat16")),
      (f"bf16 {IMPL}", dict(attn_impl=IMPL, compute_dtype="bfloat16")))}
  w = jnp.asarray(np.random.default_rng(1).standard_normal((*mask.shape, 256)), jnp.float32) * jmask[..., None]
  ok = True
  for start in (0, 200):
    real = mask[:, start:]
    outs, grads = {}, {}
    for name, m in models.items():
      fwd = nnx.jit(lambda m, s=start: m(toks, None, jmask, out_start=s)[0])
      outs[name] = np.asarray(fwd(m))[real]
      loss = nnx.jit(nnx.grad(lambda m, s=start: jnp.sum(m(toks, None, jmask, out_start=s)[0] * w[:, s:])))
      grads[name] = np.concatenate([np.asarray(g).ravel() for g in jax.tree.leaves(loss(m))])
    ref_o, ref_g = outs["float32 blocked"], grads["float32 blocked"]
    err = {name: (np.abs(outs[name] - ref_o).max() / np.abs(ref_o).max(),
                  np.abs(grads[name] - ref_g).max() / np.abs(ref_g).max()) for name in ("bf16 blocked", f"bf16 {IMPL}")}
    for name, (eo, eg) in err.items():
      print(f"out_start={start}: {name} vs float32 blocked: hidden max rel err {eo:.2e}, gradient max rel err {eg:.2e}")
    for i in range(2):
      ok &= bool(err[f"bf16 {IMPL}"][i] <= 2 * err["bf16 blocked"][i] + 1e-3)
    ok &= all(np.isfinite(o).all() for o in outs.values())
  print(f"{IMPL} parity:", "PASS" if ok else "FAIL", "on", jax.devices()[0].device_kind)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
