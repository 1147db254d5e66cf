"""Memory plan of the self-distillation train step: lower + compile with abstract shapes on a simulated mesh.

  python launch/plan.py --model=qwen3_4b --prompt_len=49152 --response_len=20480 --fsdp=8
  python launch/plan.py --config=configs/manufactoria.py --model=qwen3_4b --batch=8
  python launch/plan.py --model=qwen3_1p7b --devices=1 --lora_rank=16 --base_dtype=bfloat16 \
      --fit=T4=16,A100=40,v5e-1=16,H100=80

With --lora_rank the model trains LoRA adapters on a frozen base (optimizer and teacher hold adapters only).
With --fit=NAME=GB,... the largest equal prompt and response length n (teacher prompt = prompt) whose total
fits 90% of each accelerator's memory is estimated: the step is compiled at the two lengths of --fit_points
(both long enough that attention runs its scanned blocks, where memory grows linearly with n), and the line
through them gives the largest multiple of --fit_step under the limit. --fit_check then compiles that length
to confirm it (stepping down while it does not fit, and up while the next one fits): exact, but a compile
per accelerator. Use --devices=1 for one accelerator (attention is then `blocked`: the CPU kernel does not
stand for an accelerator's). XLA:CPU has no bf16 matmul: with a bf16 base it converts whole stacked weights
to float32 (seen in the compiled HLO), which an accelerator with bf16 matmuls need not do, so these figures
are pessimistic there (by up to about 4 bytes per base parameter).

Nothing is allocated: the model, optimizer and batch are ShapeDtypeStructs, the step is compiled for
`--devices` simulated CPU devices, and `compiled.memory_analysis()` gives the per-device temporary memory.
Printed per device: params, optimizer, teacher (from the shardings of the state), activations (XLA's
temporaries of the step), and the total against 141 GB (H200) and 95 GB (TPU v5p). CPU compilation stands
in for the accelerator's: the split is indicative (the accelerator compiler fuses and schedules differently).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import pathlib
import sys
import time

_GB = 1e9


def _parse() -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="", help="an ml_collections config file, optionally file.py:variant")
  ap.add_argument("--model", default="", help="ModelConfig preset (default: qwen3_4b, or the config's preset)")
  ap.add_argument("--prompt_len", type=int, default=0, help="student prompt tokens (default 49152)")
  ap.add_argument("--teacher_prompt_len", type=int, default=0, help="teacher prompt tokens (default = prompt_len)")
  ap.add_argument("--response_len", type=int, default=0, help="response tokens (default 20480)")
  ap.add_argument("--batch", type=int, default=0, help="rows per optimizer step (default: one per batch shard)")
  ap.add_argument("--micro_batches", type=int, default=0)
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--data", type=int, default=1)
  ap.add_argument("--fsdp", type=int, default=-1)
  ap.add_argument("--tensor", type=int, default=1)
  ap.add_argument("--expert", type=int, default=1, help="expert-parallel axis (MoE models)")
  ap.add_argument("--remat", default="full", choices=("none", "full", "dots"))
  ap.add_argument("--compute_dtype", default="bfloat16")
  ap.add_argument("--param_dtype", default="float32", help="master weights, optimizer and teacher copies")
  ap.add_argument("--attn_block", type=int, default=0, help="query block of causal attention (model default)")
  ap.add_argument("--teacher", default="", help="frozen | ema | current | trust_region (default: config or ema)")
  ap.add_argument("--lora_rank", type=int, default=0, help="train LoRA adapters of this rank (0: all weights)")
  ap.add_argument("--lora_alpha", type=float, default=32.0)
  ap.add_argument("--lora_targets", default="q,k,v,o,gate,up,down")
  ap.add_argument("--base_dtype", default="", help="LoRA: dtype of the frozen base ('' = --param_dtype)")
  ap.add_argument("--fit", default="", help="NAME=GB,...: largest prompt = response length fitting 90%% of each")
  ap.add_argument("--fit_step", type=int, default=512, help="--fit: lengths are multiples of this")
  ap.add_argument("--fit_points", default="4096,8192", help="--fit: the two lengths n the line goes through")
  ap.add_argument("--fit_check", action="store_true", help="--fit: confirm each estimate by compiling it")
  return ap.parse_args()


def _load_config(spec: str):
  path, _, variant = spec.partition(":")
  p = pathlib.Path(path)
  if not p.is_file():
    raise SystemExit(f"--config: no such file {path!r}; pass e.g. --config=configs/manufactoria.py:tiny")
  mod_spec = importlib.util.spec_from_file_location("_plan_config", p)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(variant) if variant else mod.get_config()


def main() -> None:
  args = _parse()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  import jax  # noqa: PLC0415  (after XLA_FLAGS)
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from resd_jax.train.batch import Batch  # noqa: PLC0415
  from resd_jax.distill.teacher import TeacherConfig  # noqa: PLC0415
  from resd_jax.models import ModelConfig, Transformer  # noqa: PLC0415
  from resd_jax.parallel import make_mesh  # noqa: PLC0415
  from resd_jax.train import state as st  # noqa: PLC0415
  from resd_jax.train.optim import make_optimizer  # noqa: PLC0415
  from resd_jax.train.step import StepConfig, make_sd_step, state_shardings  # noqa: PLC0415

  step_cfg, model_name = StepConfig(), args.model or "qwen3_4b"
  ps, pt, r = args.prompt_len or 49152, args.teacher_prompt_len, args.response_len or 20480
  if args.config:
    from resd_jax import config_schema  # noqa: PLC0415
    cfg = _load_config(args.config)
    run = config_schema.as_run(cfg)
    step_cfg = run.step_config()
    shape = run.batch_shape(config_schema.rows_per_step(run))
    ps = args.prompt_len or shape.max_prompt_len
    pt = args.teacher_prompt_len or shape.max_teacher_prompt_len
    r = args.response_len or shape.max_response_len
    model_name = args.model or (cfg.model.preset if cfg.model.preset else "qwen3_4b")
  pt = pt or ps
  if args.teacher:
    step_cfg = StepConfig(**{**step_cfg.__dict__, "teacher": TeacherConfig(args.teacher, step_cfg.teacher.rate)})
  if args.micro_batches:
    step_cfg = StepConfig(**{**step_cfg.__dict__, "micro_batches": args.micro_batches})

  mesh = make_mesh(data=args.data, fsdp=args.fsdp, tensor=args.tensor, expert=args.expert)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  rows = args.batch or sizes["data"] * sizes["fsdp"]
  overrides = dict(remat=args.remat, compute_dtype=args.compute_dtype, param_dtype=args.param_dtype)
  if args.attn_block:
    overrides["attn_block"] = args.attn_block

  if args.devices == 1 or args.fit:
    # One simulated device stands for one accelerator: the CPU-only attention paths would not apply there.
    overrides.update(attn_impl="blocked", attn_head_loop="off")
  mcfg = ModelConfig.preset(model_name, **overrides)
  lcfg = None
  if args.lora_rank:
    from resd_jax.models import lora  # noqa: PLC0415
    lcfg = lora.LoRAConfig(enabled=True, rank=args.lora_rank, alpha=args.lora_alpha,
                           targets=tuple(args.lora_targets.split(",")), base_dtype=args.base_dtype)
    mcfg = mcfg.replace(**lcfg.model_overrides())

  abstract_model = nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0)))
  graphdef, params = st.split_model(abstract_model)
  if lcfg is not None:
    params = jax.eval_shape(lambda p: lora.cast_base(p, lcfg.base_dtype), params)
  optimizer = make_optimizer(step_cfg.optim)
  state = jax.eval_shape(lambda p: st.init_train_state(p, optimizer, step_cfg.teacher), params)
  shardings = state_shardings(state, mesh)
  step = make_sd_step(graphdef, step_cfg, mesh)
  i32, b8, f32 = jnp.int32, jnp.bool_, jnp.float32
  sds = jax.ShapeDtypeStruct

  def per_device(tree, sh_tree) -> float:
    total = 0
    for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(sh_tree)):
      shard = sh.shard_shape(leaf.shape)
      total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total / _GB

  p_gb = per_device(state.params, shardings.params)
  o_gb = per_device(state.opt_state, shardings.opt_state)
  t_gb = per_device(state.teacher, shardings.teacher) if state.teacher is not None else 0.0
  batch_shards = min(rows, sizes["data"] * sizes["fsdp"])

  def measure(ps: int, pt: int, r: int) -> dict:
    """Compile the step for these lengths; per-device GB of each part and the XLA figures."""
    batch = Batch(sds((rows, ps + r), i32), sds((rows, ps + r), b8), sds((rows, pt + r), i32),
                  sds((rows, pt + r), b8), sds((rows, r), i32), sds((rows, r), f32), sds((rows,), f32),
                  sds((rows,), f32), sds((rows, r), f32))
    t0 = time.time()
    compiled = step.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    act_gb = mem.temp_size_in_bytes / _GB
    batch_gb = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(batch)) / batch_shards / _GB
    return dict(mem=mem, compile_s=time.time() - t0, act=act_gb, batch=batch_gb,
                total=p_gb + o_gb + t_gb + act_gb + batch_gb)

  lora_note = (f", LoRA rank {lcfg.rank} on {','.join(lcfg.targets)} (base {lcfg.base_dtype or args.param_dtype})"
               if lcfg else "")
  print(f"model {model_name}: {mcfg.num_params() / 1e9:.2f} B params, remat={mcfg.remat}, "
        f"compute={mcfg.compute_dtype}, attn_block={mcfg.attn_block}{lora_note}")
  if args.fit:
    _fit(args, measure, sizes, rows, step_cfg, p_gb, o_gb, t_gb)
    return
  m = measure(ps, pt, r)
  mem, act_gb, batch_gb, total = m["mem"], m["act"], m["batch"], m["total"]
  print(f"mesh {sizes} on {args.devices} simulated devices; batch {rows} rows x (student {ps}+{r}, teacher {pt}+{r}),"
        f" micro_batches={step_cfg.micro_batches}, teacher={step_cfg.teacher.kind}, loss chunk "
        f"{step_cfg.distill.chunk_size}, top_k={step_cfg.distill.top_k}")
  print(f"compiled in {m['compile_s']:.0f} s; XLA: arguments {mem.argument_size_in_bytes / _GB:.2f} GB, "
        f"outputs {mem.output_size_in_bytes / _GB:.2f} GB, aliased {mem.alias_size_in_bytes / _GB:.2f} GB, "
        f"temporaries {act_gb:.2f} GB per device")
  print("per-device memory (GB):")
  params_label = f"params (base {lcfg.base_dtype or args.param_dtype}, adapters {args.param_dtype})" if lcfg \
      else f"params ({args.param_dtype})"
  for name, gb in ((params_label, p_gb), ("optimizer (AdamW m, v)", o_gb), ("teacher", t_gb),
                   ("activations (XLA temporaries)", act_gb), ("batch", batch_gb), ("total", total)):
    print(f"  {name:32s} {gb:8.2f}")
  for device, cap in (("H200 141 GB", 141), ("TPU v5p 95 GB", 95)):
    print(f"  fits {device}: {'yes' if total <= cap else 'no'} ({total / cap:.0%} of capacity)")


def _fit(args, measure, sizes, rows, step_cfg, p_gb, o_gb, t_gb) -> None:
  """Print, per accelerator of --fit, the largest prompt = response length (multiple of --fit_step) whose
  total fits 90% of its memory."""
  try:
    caps = [(name, float(gb)) for name, _, gb in (x.partition("=") for x in args.fit.split(","))]
  except ValueError:
    raise SystemExit(f"--fit={args.fit!r}: expected NAME=GB,... e.g. T4=16,A100=40") from None
  step_len = args.fit_step
  cache: dict[int, float] = {}

  def total(n: int) -> float:
    if n not in cache:
      m = measure(n, n, n)
      cache[n] = m["total"]
      print(f"  length {n}+{n}: {m['total']:.2f} GB (activations {m['act']:.2f}; compiled in {m['compile_s']:.0f} s)",
            flush=True)
    return cache[n]

  print(f"mesh {sizes}; batch {rows} row(s); teacher={step_cfg.teacher.kind}; fixed per device: params "
        f"{p_gb:.2f} GB, optimizer {o_gb:.2f} GB, teacher {t_gb:.2f} GB")
  lo, hi = (int(x) for x in args.fit_points.split(","))
  slope = (total(hi) - total(lo)) / (hi - lo)
  results = []
  for name, gb in caps:
    usable = 0.9 * gb
    if total(lo) + slope * (step_len - lo) > usable:
      results.append((name, gb, 0, total(lo) + slope * (step_len - lo)))
      continue
    guess = max(step_len, int((usable - total(lo)) / max(slope, 1e-12) + lo) // step_len * step_len)
    n = guess
    if args.fit_check:
      while n > step_len and total(n) > usable:
        n -= step_len
      while total(n + step_len) <= usable:
        n += step_len
    results.append((name, gb, n, total(n) if n in cache else total(lo) + slope * (n - lo)))
  how = "confirmed by compiling it" if args.fit_check else "estimated from the line"
  print(f"line: {total(lo):.2f} GB at n={lo}, + {slope * 1024:.3f} GB per 1024 tokens of n; largest prompt + "
        f"response (teacher prompt = prompt) that fits 90% of the memory ({how}):")
  for name, gb, n, t in results:
    print(f"  {name:10s} {gb:5.0f} GB: " + (f"{n} + {n} tokens ({t:.2f} GB)" if n else
                                               f"does not fit even {step_len} + {step_len} ({t:.2f} GB)"))


if __name__ == "__main__":
  main()
