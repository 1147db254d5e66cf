"""Rollout engine (paged KV cache, continuous batching) vs the static sampler, in the same run (issue 22).

  python bench/rollout_engine.py --part mixed    # small preset: one 2,000-token prompt among seven 64-token ones
  python bench/rollout_engine.py --part skewed   # SmolLM2-135M shapes: 64 prompts, long-tailed max_new_tokens
  python bench/rollout_engine.py --part flat     # decode step time, 256 live tokens, allocated max 1k..32k
  python bench/rollout_engine.py --part all      # the three CPU parts
  python bench/rollout_engine.py --part gpu --iters 1   # on a GPU: Qwen3-1.7B shapes, bf16, 64 rows, roofline

  skewed options: --workload skewed|uniform|both, --sides engine,static,transformers (which to run),
  --torch_threads N (torch.set_num_threads for the transformers peer; 1 was its best on a loaded 2-core CPU).

Random weights, greedy, no stop tokens: every row generates exactly its max_new_tokens on every side, so the
useful tokens (sum of the rows' max_new_tokens) are the same for all. Figures are useful tokens per second of
the whole call (prefill + decode), measured on a second run after a warm-up run of the same workload that
compiles (`--iters` timed runs, median). The machine is shared: medians.

mixed: 8 x 64-token prompts vs 7 x 64 + 1 x 2,000, `--new` tokens each; the ratio mixed / short per side.
skewed: 64 prompts of 32..1,024 tokens (log-uniform), max_new_tokens per row log-normal (median 48) clipped to
  [8, 1,024], vs a uniform workload (64 prompts of 128 tokens, 128 new each). The static sampler runs like the
  old generate_rollouts (length-sorted batches of `--batch`, each to its longest row's cap: it has no per-row
  cap), transformers `generate` likewise (PyTorch fp32, its KV cache, min_new_tokens = max_new_tokens); the
  engine gets the per-row caps and `--batch` slots.
flat: decode step time (decode calls only, prefill excluded) with `--flat_rows` rows of 256 tokens while the
  allocated maximum (the static sampler's cache length, the engine's pool per row) grows from 1k to 32k.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resd_jax.models import ModelConfig, Transformer
from resd_jax.sampling import SamplingParams, generate
from resd_jax.sampling import sampler as smp
from resd_jax.sampling.engine import EngineConfig, compile_counts, generate_paged

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import torch_peer  # noqa: E402


_COMPILE_S = [0.0]
# Lowering and XLA compilation (tracing is left in: nested traces would be counted twice).
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")


def _on_event(event: str, duration: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    _COMPILE_S[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _timed(fn, iters: int) -> float:
  """iters = 0: one run, minus the lowering / compile time JAX reports for it (the machine is too busy
  to run each workload twice); iters > 0: a warm-up run, then the median of `iters` timed runs."""
  if iters == 0:
    _COMPILE_S[0] = 0.0
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t - _COMPILE_S[0]
  fn()
  out = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return statistics.median(out)


def _model(preset: str, dtype: str):
  return nnx.split(Transformer(ModelConfig.preset(preset, compute_dtype=dtype), rngs=nnx.Rngs(0)))


def static_rate(model, prompts, caps, batch: int, iters: int) -> float:
  """Useful tokens/s of the static sampler in length-sorted batches, each run to its longest cap."""
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))

  def run():
    for s in range(0, len(order), batch):
      idx = order[s:s + batch]
      out = generate(model, [prompts[i] for i in idx], SamplingParams(temperature=0, max_new_tokens=max(
          caps[i] for i in idx)), row_ids=idx)
      assert min(out.lengths) == max(caps[i] for i in idx)
  return sum(caps) / _timed(run, iters)


def engine_rate(model, prompts, caps, ec: EngineConfig, iters: int) -> tuple[float, dict]:
  stats: dict = {}

  def run():
    stats.clear()
    out = generate_paged(model, prompts, SamplingParams(temperature=0, max_new_tokens=max(caps)),
                         max_new_tokens=caps, engine=ec, stats=stats)
    assert out.lengths == list(caps)
  return sum(caps) / _timed(run, iters), dict(stats)


def torch_rate(preset: str, prompts, caps, batch: int, iters: int, threads: int = 0, cuda: bool = False) -> float:
  """Useful tokens/s of `transformers` generate (float32 on the CPU; bf16 on the GPU with cuda=True)."""
  import torch  # noqa: PLC0415
  if threads:
    torch.set_num_threads(threads)
  dev = "cuda" if cuda else "cpu"
  ref = torch_peer(preset).eval()
  if cuda:
    ref = ref.to(device=dev, dtype=torch.bfloat16)
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))

  def run():
    for s in range(0, len(order), batch):
      idx = order[s:s + batch]
      width = max(len(prompts[i]) for i in idx)
      ids = torch.zeros((len(idx), width), dtype=torch.long)
      mask = torch.zeros((len(idx), width), dtype=torch.long)
      for j, i in enumerate(idx):                                   # left padding
        ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
        mask[j, width - len(prompts[i]):] = 1
      new = max(caps[i] for i in idx)
      ids, mask = ids.to(dev), mask.to(dev)
      with torch.inference_mode():
        out = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, use_cache=True, pad_token_id=0)
      assert out.shape[1] == width + new
  return sum(caps) / _timed(run, iters)


def part_mixed(args):
  model = _model("small", args.dtype)
  rng = np.random.default_rng(0)
  short = [rng.integers(3, 32768, 64).tolist() for _ in range(8)]
  mixed = short[:7] + [rng.integers(3, 32768, 2000).tolist()]
  caps = [args.new] * 8
  ec = EngineConfig(page_size=16, slots=8, prefill_chunk=512, decode_steps=16)
  print(f"\n## mixed: small preset ({args.dtype}), 8 rows, {args.new} new tokens each, useful tok/s")
  res = {}
  sides = args.sides.split(",")
  for name, prompts in (("8 x 64", short), ("7 x 64 + 1 x 2000", mixed)):
    s = static_rate(model, prompts, caps, 8, args.iters) if "static" in sides else float("nan")
    e, st = engine_rate(model, prompts, caps, ec, args.iters)
    res[name] = (s, e)
    print(f"{name:20s} static {s:7.1f}   engine {e:7.1f}   (engine: prefill {st['prefill_s']:.2f} s, decode "
          f"{st['decode_s']:.2f} s)", flush=True)
  (s0, e0), (s1, e1) = res.values()
  print(f"mixed / short: static {s1 / s0:.2f}, engine {e1 / e0:.2f} (engine mixed / static short {e1 / s0:.2f})")


def part_skewed(args):
  preset = "smollm2_135m"
  model = _model(preset, args.dtype)
  vocab = ModelConfig.preset(preset).vocab_size
  rng = np.random.default_rng(1)
  n = args.n
  lens = np.exp(rng.uniform(np.log(32), np.log(args.max_prompt), n)).astype(int)
  prompts = [rng.integers(3, vocab, int(k)).tolist() for k in lens]
  caps = np.clip(np.round(np.exp(rng.normal(np.log(48), 1.1, n))), 8, args.max_new).astype(int).tolist()
  uniform = [rng.integers(3, vocab, 128).tolist() for _ in range(n)]
  ucaps = [128] * n
  ec = EngineConfig(page_size=16, slots=args.batch, prefill_chunk=512, decode_steps=16)
  print(f"\n## skewed: {preset} shapes ({args.dtype}), {n} prompts, batch / slots {args.batch}, useful tok/s")
  print(f"skewed caps: sum {sum(caps)}, median {int(np.median(caps))}, max {max(caps)}; prompt lengths "
        f"{min(lens)}..{max(lens)}")
  for name, ps, cs in (("skewed", prompts, caps), ("uniform", uniform, ucaps)):
    if args.workload not in ("both", name):
      continue
    sides = args.sides.split(",")
    e = s = t = None
    if "engine" in sides:
      e, st = engine_rate(model, ps, cs, ec, args.iters)
      print(f"{name:8s} engine       {e:7.1f} tok/s   ({st['prefill_calls']} prefill calls, {st['prefill_s']:.1f} s; "
            f"{st['decode_calls']} decode calls, {st['decode_s']:.1f} s; {st['preemptions']} preemptions; programs "
            f"so far {compile_counts()})", flush=True)
    if "static" in sides:
      s = static_rate(model, ps, cs, args.batch, args.iters)
      print(f"{name:8s} static       {s:7.1f} tok/s", flush=True)
    if "transformers" in sides and not args.skip_torch:
      t = torch_rate(preset, ps, cs, args.batch, args.iters, args.torch_threads)
      print(f"{name:8s} transformers {t:7.1f} tok/s", flush=True)
    if e is not None:
      print(f"{name:8s} engine / static " + ("-" if s is None else f"{e / s:.2f}x") + ", engine / transformers "
            + ("-" if t is None else f"{e / t:.2f}x"), flush=True)


def part_flat(args):
  graphdef, state = _model("small", args.dtype)
  cfg = nnx.merge(graphdef, state).config
  b, live, steps = args.flat_rows, 256, 32
  rng = np.random.default_rng(2)
  prompts = [rng.integers(3, 32768, live).tolist() for _ in range(b)]
  print(f"\n## flat: small preset ({args.dtype}), {b} rows of {live} live tokens, ms per decode step "
        f"(engine: {steps} steps per call; static: {args.static_steps})")
  sp = SamplingParams(temperature=0, max_new_tokens=steps + 1)
  knobs = smp._knobs(sp.replace(max_new_tokens=args.static_steps + 1), cfg.vocab_size)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(0), jnp.arange(b, dtype=jnp.int32))
  toks, mask = np.asarray(prompts, np.int32), np.ones((b, live), bool)
  sizes = [int(x) for x in args.flat_sizes.split(",")]
  for m in sizes + sizes[::-1][1:]:     # up and back down: load drift on a shared machine shows as asymmetry
    times = []
    for _ in range(max(args.iters, 1) + 1):
      cache = smp.empty_cache(cfg, b, m)
      st = smp.prefill_fn(graphdef, state, cache, toks, mask, np.ones(b, bool), keys, knobs, k_cap=0)
      jax.block_until_ready(st)
      t = time.perf_counter()
      st = jax.block_until_ready(smp.decode_fn(graphdef, state, st, knobs, k_cap=0))
      times.append((time.perf_counter() - t) / (int(st.step) - 1))
      del st, cache
    static_ms = 1e3 * statistics.median(times[1:])
    ec = EngineConfig(page_size=16, slots=b, decode_steps=steps, num_pages=b * m // 16 + 1)
    eng = []
    for _ in range(max(args.iters, 1) + 1):
      stats: dict = {}
      generate_paged((graphdef, state), prompts, sp, engine=ec, stats=stats)
      eng.append(stats["decode_s"] / stats["decode_steps"])
    print(f"allocated {m:6d}: static {static_ms:7.2f} ms   engine {1e3 * statistics.median(eng[1:]):7.2f} ms",
          flush=True)


def part_gpu(args):
  """The issue's GPU check: Qwen3-1.7B shapes in bf16 (random weights), `--gpu_rows` rows of `--gpu_prompt`-token
  prompts, `--gpu_new` new tokens each (greedy, no stops: every row generates all of them). Engine with each of
  `--decode_kernels`, then the static sampler and (where torch sees a GPU) `transformers` generate on the same
  device. Roofline: a decode step must read the weights once and every live row's KV; over the run the rows
  hold prompt + new / 2 tokens on average, so the step's bytes are weights + rows x that x KV bytes per token,
  and the fraction is (steps x bytes / `--hbm_gbps`) / decode seconds. Figures: useful tokens/s (rows x new /
  whole call) and the fraction."""
  dtype = "bfloat16" if args.dtype == "float32" else args.dtype
  cfg = ModelConfig.preset(args.gpu_preset, compute_dtype=dtype, param_dtype=dtype)
  graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
  rows, plen, new = args.gpu_rows, args.gpu_prompt, args.gpu_new
  rng = np.random.default_rng(3)
  prompts = [rng.integers(3, cfg.vocab_size, plen).tolist() for _ in range(rows)]
  caps = [new] * rows
  itemsize = jnp.dtype(dtype).itemsize
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
  step_bytes = weight_bytes + rows * (plen + new / 2) * kv_per_token
  bw = args.hbm_gbps * 1e9
  print(f"\n## gpu: {args.gpu_preset} shapes ({dtype}), {rows} rows x {plen}-token prompts, {new} new tokens each; "
        f"{jax.devices()[0].device_kind}; roofline at {args.hbm_gbps:.0f} GB/s: weights {weight_bytes / 1e9:.2f} GB + "
        f"mean live KV {rows * (plen + new / 2) * kv_per_token / 1e9:.2f} GB per decode step", flush=True)
  for kernel in args.decode_kernels.split(","):
    ec = EngineConfig(page_size=args.page, slots=rows, prefill_chunk=args.gpu_chunk, decode_steps=32,
                      decode_kernel=kernel)
    try:
      rate, st = engine_rate((graphdef, state), prompts, caps, ec, args.iters)
    except ValueError as e:          # e.g. 'pallas' on a backend without a kernel
      print(f"engine ({kernel}): skipped: {e}", flush=True)
      continue
    frac = st["decode_steps"] * step_bytes / bw / st["decode_s"]
    print(f"engine ({kernel:6s}) {rate:9.1f} tok/s   decode {st['decode_steps']} steps in {st['decode_s']:.2f} s "
          f"({st['decode_steps'] / st['decode_s']:.1f} steps/s): {100 * frac:.1f}% of the HBM roofline; prefill "
          f"{st['prefill_calls']} calls, {st['prefill_s']:.2f} s; pool {st['pool_pages']} pages", flush=True)
  if "static" in args.sides:
    print(f"static sampler     {static_rate((graphdef, state), prompts, caps, rows, args.iters):9.1f} tok/s",
          flush=True)
  if "transformers" in args.sides and not args.skip_torch:
    try:
      import torch  # noqa: PLC0415
      cuda = torch.cuda.is_available()
    except ImportError:
      cuda = False
    if cuda:
      print(f"transformers       {torch_rate(args.gpu_preset, prompts, caps, rows, args.iters, cuda=True):9.1f} "
            f"tok/s", flush=True)
    else:
      print("transformers       skipped: torch sees no GPU here", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--part", default="all", choices=("all", "mixed", "skewed", "flat", "gpu"))
  ap.add_argument("--gpu_preset", default="qwen3_1p7b")
  ap.add_argument("--gpu_rows", type=int, default=64)
  ap.add_argument("--gpu_prompt", type=int, default=2048)
  ap.add_argument("--gpu_new", type=int, default=2048)
  ap.add_argument("--gpu_chunk", type=int, default=4096, help="gpu part: engine.prefill_chunk")
  ap.add_argument("--page", type=int, default=16, help="gpu part: engine.page_size")
  ap.add_argument("--decode_kernels", default="xla,pallas", help="gpu part: engine.decode_kernel values to run")
  ap.add_argument("--hbm_gbps", type=float, default=4800.0,
                  help="gpu part: the device's memory bandwidth for the roofline (H200 SXM: 4,800 GB/s, its spec)")
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--max_new", type=int, default=1024)
  ap.add_argument("--max_prompt", type=int, default=1024)
  ap.add_argument("--flat_rows", type=int, default=4)
  ap.add_argument("--flat_sizes", default="1024,2048,4096,8192,16384,32768")
  ap.add_argument("--static_steps", type=int, default=4)
  ap.add_argument("--iters", type=int, default=0)
  ap.add_argument("--n", type=int, default=64)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--skip_torch", action="store_true")
  ap.add_argument("--workload", default="both", choices=("both", "skewed", "uniform"), help="skewed part only")
  ap.add_argument("--torch_threads", type=int, default=0,
                  help="torch.set_num_threads for the transformers peer (0: torch's default). On a loaded 2-core "
                       "machine 1 thread was 13x faster per decode step than torch's default 2")
  ap.add_argument("--sides", default="engine,static,transformers",
                  help="skewed part: which of engine,static,transformers to run (split a long run in several)")
  args = ap.parse_args()
  print(f"machine: {jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cpus")
  for part in ("mixed", "skewed", "flat", "gpu"):
    if args.part == part or (args.part == "all" and part != "gpu"):
      globals()[f"part_{part}"](args)


if __name__ == "__main__":
  main()
