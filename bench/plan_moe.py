"""Per-device memory of ONE Qwen3-MoE sparse layer (forward + backward) at long sequence lengths.

  python bench/plan_moe.py [--model qwen3_30b_a3b] [--tokens 83968] [--rows 8] [--fsdp 8] [--expert 1]

Compiles value_and_grad of sum(moe_mlp(h)) for abstract h [rows, tokens, D] and one layer's router/expert
weights on a simulated CPU mesh, and prints XLA's per-device temporaries: the MoE's share of a train step's
activation memory per layer (the whole step, attention included, is `launch/plan.py`). Nothing is allocated.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="qwen3_30b_a3b")
  ap.add_argument("--tokens", type=int, default=58368 + 25600)
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--fsdp", type=int, default=8)
  ap.add_argument("--expert", type=int, default=1)
  ap.add_argument("--tensor", type=int, default=1)
  ap.add_argument("--group", type=int, default=4096, help="moe_group_size")
  ap.add_argument("--capacity_factor", type=float, default=2.0)
  ap.add_argument("--remat", default="full")
  args = ap.parse_args()
  devices = args.fsdp * args.expert * args.tensor
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # noqa: PLC0415  (after XLA_FLAGS)
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from resd_jax.models import ModelConfig, Transformer, moe  # noqa: PLC0415
  from resd_jax.parallel import make_mesh, spec_for, state_shardings  # noqa: PLC0415
  from jax.sharding import NamedSharding  # noqa: PLC0415

  cfg = ModelConfig.preset(args.model, num_layers=1, compute_dtype="bfloat16", remat=args.remat,
                           moe_group_size=args.group, moe_capacity_factor=args.capacity_factor)
  mesh = make_mesh(fsdp=args.fsdp, expert=args.expert, tensor=args.tensor)
  layers = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))).layers
  state = nnx.state(layers)
  names = ("router", "expert_gate", "expert_up", "expert_down")
  sh = state_shardings(state, mesh)
  p = {n: jax.ShapeDtypeStruct(state[n].get_value().shape[1:], jnp.float32,
                               sharding=NamedSharding(mesh, jax.sharding.PartitionSpec(*sh[n].spec[1:])))
       for n in names}
  b, t, d = args.rows, args.tokens, cfg.hidden_size
  h = jax.ShapeDtypeStruct((b, t, d), jnp.float32, sharding=NamedSharding(mesh, spec_for((b, t, d), ("batch", None, None), mesh)))
  m = jax.ShapeDtypeStruct((b, t), jnp.bool_, sharding=NamedSharding(mesh, spec_for((b, t), ("batch", None), mesh)))

  def loss(p, h, m):
    y, aux = moe.moe_mlp(cfg, p, h, m)
    return jnp.sum(y) + aux["moe_load_balance_loss"]

  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(p, h, m).compile()
  mem = compiled.memory_analysis()
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  print(f"{args.model}: one MoE layer fwd+bwd, h [{b}, {t}, {d}] float32, E={cfg.num_experts} k={cfg.num_experts_per_tok}"
        f" F={cfg.moe_intermediate_size}, group {args.group}, capacity {moe.capacity(cfg, min(args.group, t))}"
        f" (cf {args.capacity_factor}), remat={args.remat}, mesh {sizes}; compiled in {time.time() - t0:.0f} s")
  print(f"per device: arguments {mem.argument_size_in_bytes / 1e9:.2f} GB, outputs {mem.output_size_in_bytes / 1e9:.2f} GB,"
        f" temporaries {mem.temp_size_in_bytes / 1e9:.2f} GB")


if __name__ == "__main__":
  main()
