"""One self-distillation train step: ours (JAX) vs an equivalent PyTorch `transformers` step, same run.

  python bench/train_step.py [--iters 3] [--compute_dtype bfloat16] [--layers loop|scan|both] [--skip_torch]
  # on a GPU: Qwen3-1.7B shapes, 8k tokens per student sequence, MFU against the device's bf16 peak, PyTorch
  # (bf16 autocast) on the same GPU; bench/gpu_train_step.sh runs this and the cuDNN attention parity check
  XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/train_step.py --preset qwen3_1p7b --batch 1 --prompt 4096 \
      --teacher_prompt 6144 --response 4096 --layers scan --remat full

Setup (the issue's): `small` preset, B = 4, student prompt 256, teacher prompt 768, response 512, top-100 +
tail support, reverse KL (alpha = 1), eps_min 0.2, frozen teacher copy, AdamW with global-norm clip. Random
weights and tokens; the compute is what is measured. The PyTorch step does the same maths: student forward
with grad, teacher forward under no_grad, the same loss on the response positions (dense [B, R, V] logits,
which is what a straightforward PyTorch implementation does), backward, clip, AdamW. It is timed twice: in
float32, and with the model forwards under torch.autocast(bfloat16) (PyTorch's counterpart of our bf16
matmul inputs with fp32 master weights).

Printed: model tokens/s (student + teacher tokens per second) for both and the ratio; the analytic model
FLOPs of the step (matmuls incl. causal attention, 6x for the student, 2x for the teacher forward) divided by
the step time, against the rate of a jitted 2048^3 matmul (same compute dtype) measured in the same run (8192^3
on an accelerator, where MFU against the device's bf16 peak is printed too).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # huge-page malloc for both steps, as launch/train.py runs (resd_jax/host_memory.py)
  from resd_jax.host_memory import reexec_with_hugepage_malloc  # noqa: E402
  reexec_with_hugepage_malloc()
from resd_jax.train.batch import Batch  # noqa: E402
from resd_jax.distill.losses import DistillConfig  # noqa: E402
from resd_jax.distill.teacher import TeacherConfig  # noqa: E402
from resd_jax.models import ModelConfig, Transformer  # noqa: E402
from resd_jax.models.attention import attention_head_loop, attention_impl  # noqa: E402
from resd_jax.train import state as st  # noqa: E402
from resd_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402
from resd_jax.train.step import StepConfig, make_sd_step  # noqa: E402

from forward import _time as _median_time, torch_peer  # noqa: E402  (bench/forward.py: warm-up, then the median)


def model_flops(cfg: ModelConfig, b: int, length: int) -> float:
  """Matmul FLOPs of a forward over b sequences of `length` tokens, without the LM head: projections, MLP and
  causal attention (QK^T and PV: 2 matmuls x 2 FLOPs x H x Dh x L^2 / 2)."""
  d, h, k, dh, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  per_token = 2 * (d * (h + 2 * k) * dh + h * dh * d + 3 * d * f) * cfg.num_layers
  return b * (per_token * length + 2 * h * dh * length * length * cfg.num_layers)


def step_flops(cfg: ModelConfig, b: int, ls: int, lt: int, r: int) -> float:
  """Matmul FLOPs of one SD step: student fwd+bwd (x3 of forward), teacher forward, LM head on R positions."""
  head = 2 * b * r * cfg.hidden_size * cfg.vocab_size
  return 3 * (model_flops(cfg, b, ls) + head) + model_flops(cfg, b, lt) + head


# Dense bf16 peak of accelerators by `device_kind` prefix, TFLOP/s (vendor figures, without sparsity).
PEAK_TFLOPS = {"NVIDIA H100 PCIe": 756.0, "NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0,
               "TPU v4": 275.0}


def peak_tflops(override: float) -> Optional[float]:
  """The accelerator's bf16 peak (TFLOP/s): `override` when > 0, else looked up by device kind (None: unknown)."""
  if override > 0:
    return override
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_TFLOPS.items() if kind.startswith(k)), None)


def matmul_rate(dtype: str, n: int = 2048, iters: int = 5) -> float:
  """GFLOP/s of a jitted n x n x n matmul with `dtype` inputs and float32 accumulation."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)  # random: an all-ones product runs faster on GPUs
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  sec = _median_time(lambda: jax.block_until_ready(f(a, a)), iters)
  return 2 * n ** 3 / sec / 1e9


def make_batch(b: int, ps: int, pt: int, r: int, vocab: int) -> Batch:
  rng = np.random.default_rng(0)
  resp = rng.integers(0, vocab, (b, r)).astype(np.int32)
  s_tok = np.concatenate([rng.integers(0, vocab, (b, ps)).astype(np.int32), resp], 1)
  t_tok = np.concatenate([rng.integers(0, vocab, (b, pt)).astype(np.int32), resp], 1)
  return Batch(s_tok, np.ones(s_tok.shape, bool), t_tok, np.ones(t_tok.shape, bool), resp,
               np.ones((b, r), np.float32), np.ones(b, np.float32), np.ones(b, np.float32),
               np.zeros((b, r), np.float32))


def build_ours(batch: Batch, preset: str, compute_dtype: str, chunk: int, scan_layers: bool,
               remat: str = "none", attn_block: int = 0, attn_impl: str = "auto", head_loop: str = "auto"):
  """(step, initial state, device batch) of our SD step: top-100 + tail, reverse KL, frozen teacher, AdamW."""
  cfg = ModelConfig.preset(preset, compute_dtype=compute_dtype, scan_layers=scan_layers, remat=remat,
                           attn_impl=attn_impl, attn_head_loop=head_loop,
                           **({"attn_block": attn_block} if attn_block else {}))
  graphdef, params = st.split_model(Transformer(cfg, rngs=nnx.Rngs(0)))
  step_cfg = StepConfig(distill=DistillConfig(top_k=100, alpha=1.0, chunk_size=chunk),
                        teacher=TeacherConfig("frozen"), optim=OptimConfig(learning_rate=1e-5, warmup_steps=0))
  state = st.init_train_state(params, make_optimizer(step_cfg.optim), step_cfg.teacher)
  return make_sd_step(graphdef, step_cfg), state, jax.tree.map(jnp.asarray, batch)


def ours(batch: Batch, preset: str, compute_dtype: str, iters: int, chunk: int, scan_layers: bool,
         remat: str = "none", attn_block: int = 0, attn_impl: str = "auto", head_loop: str = "auto") -> float:
  step, state, batch = build_ours(batch, preset, compute_dtype, chunk, scan_layers, remat, attn_block, attn_impl,
                                  head_loop)
  holder = [state]

  def run():
    holder[0], m = step(holder[0], batch)
    jax.block_until_ready(m)

  return _median_time(run, iters)


def torch_step_time(batch: Batch, iters: int, autocast: bool = False, preset: str = "small") -> float:
  """Median seconds of the PyTorch step (on the GPU when torch sees one); autocast=True runs both models'
  forward (and so the backward) under torch.autocast(bfloat16), PyTorch's own mixed precision; the loss is
  computed in float32 either way."""
  import contextlib  # noqa: PLC0415
  import torch  # noqa: PLC0415
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if dev == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)
  with torch.device(dev):
    student = torch_peer(preset).train()
    teacher = torch_peer(preset).eval()
  teacher.load_state_dict(student.state_dict())
  opt = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=0.01)
  s_tok = torch.tensor(batch.student_tokens, dtype=torch.long, device=dev)
  t_tok = torch.tensor(batch.teacher_tokens, dtype=torch.long, device=dev)
  r = batch.response_tokens.shape[1]
  k, log_eps = 100, float(np.log(0.2))

  def support(logp, ids, top):  # log-probs on the top-k ids + tail (log of the complement's mass)
    head = logp.gather(-1, ids)
    tail = torch.logsumexp(logp.masked_fill(top, float("-inf")), -1, keepdim=True)
    return torch.cat([head, tail], -1)

  def mixed():
    return torch.autocast(dev, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

  def run():
    with mixed():
      logits_s = student(input_ids=s_tok, logits_to_keep=r + 1).logits[:, :-1].float()   # [B, R, V]
    with torch.no_grad(), mixed():
      logits_t = teacher(input_ids=t_tok, logits_to_keep=r + 1).logits[:, :-1].float()
    ls_full = torch.log_softmax(logits_s, -1)
    lt_full = torch.log_softmax(logits_t, -1)
    ids = logits_s.detach().topk(k, -1).indices
    top = torch.zeros_like(logits_s, dtype=torch.bool).scatter_(-1, ids, True)
    ls, lt = support(ls_full, ids, top), support(lt_full, ids, top)
    lt = torch.maximum(lt, ls.detach() + log_eps)
    lt = lt - torch.logsumexp(lt, -1, keepdim=True)
    loss = (ls.exp() * (ls - lt)).sum(-1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dev == "cuda":
      torch.cuda.synchronize()

  sec = _median_time(run, iters)
  del student, teacher, opt
  if dev == "cuda":
    torch.cuda.empty_cache()  # hand the memory back before our step runs in the same process
  return sec


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--preset", default="small", help="ModelConfig preset (GPU check: qwen3_1p7b)")
  ap.add_argument("--remat", default="none", choices=("none", "full", "dots"), help="our per-layer remat")
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="accelerator bf16 peak for MFU (default: looked up by device kind)")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--prompt", type=int, default=256)
  ap.add_argument("--teacher_prompt", type=int, default=768)
  ap.add_argument("--response", type=int, default=512)
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--attn_block", type=int, default=0,
                  help="our attention query-block rows (default: the preset's); blocks beyond "
                       "attn_max_unrolled_blocks run in a scan without the causal-triangle skip")
  ap.add_argument("--compute_dtype", default="bfloat16", choices=("float32", "bfloat16"))
  ap.add_argument("--skip_torch", action="store_true")
  ap.add_argument("--torch", default="auto", choices=("auto", "fp32", "bf16", "both"),
                  help="which PyTorch steps: auto = both on CPU, bf16 autocast only on a GPU (fp32 there is "
                       "not the fair peer)")
  ap.add_argument("--layers", default="both", choices=("loop", "scan", "both"),
                  help="our layer loop: Python loop (scan_layers=False), lax.scan, or time both")
  ap.add_argument("--attn_impl", default="auto", choices=("auto", "blocked", "cpu_fused", "cudnn", "xla"),
                  help="our full-sequence attention (ModelConfig.attn_impl; auto = cudnn on a GPU)")
  ap.add_argument("--attn_head_loop", default="auto", choices=("auto", "on", "off"),
                  help="blocked attention one (sequence, KV head) pair at a time (ModelConfig.attn_head_loop; "
                       "auto = on for the CPU)")
  args = ap.parse_args()
  b, ps, pt, r = args.batch, args.prompt, args.teacher_prompt, args.response
  cfg = ModelConfig.preset(args.preset)
  batch = make_batch(b, ps, pt, r, cfg.vocab_size)
  tokens = b * (ps + r + pt + r)
  flops = step_flops(cfg, b, ps + r, pt + r, r)
  print(f"machine: {jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; {args.preset} preset, B={b}, student {ps}+{r}, teacher {pt}+{r}, top-100 + tail, "
        f"reverse KL, AdamW; {flops / 1e12:.2f} TFLOP per step (analytic); "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  on_cpu = jax.devices()[0].platform == "cpu"
  mm = matmul_rate(args.compute_dtype, n=2048 if on_cpu else 8192)
  peak = None if on_cpu else peak_tflops(args.peak_tflops)
  print(f"jitted {2048 if on_cpu else 8192}^3 matmul ({args.compute_dtype} in, f32 acc): {mm:.1f} GFLOP/s")

  def rates(sec: float) -> str:
    mfu = f", MFU {flops / sec / 1e12 / peak:.1%} of {peak:.0f} TFLOP/s" if peak else ""
    return f"{flops / sec / 1e9:.1f} GFLOP/s = {flops / sec / 1e9 / mm:.0%} of the matmul rate{mfu}"

  wanted = {"auto": ("fp32", "bf16") if on_cpu else ("bf16",), "both": ("fp32", "bf16")}.get(args.torch, (args.torch,))
  torch_modes = [] if args.skip_torch else [(name, autocast) for name, autocast, key in (
      ("PyTorch fp32", False, "fp32"), ("PyTorch bf16 autocast", True, "bf16")) if key in wanted]
  # On a GPU the PyTorch steps run first: they hand their memory back, which JAX (run without preallocation,
  # see the docstring's command) would not.
  torch_sec = {}
  for name, autocast in ([] if on_cpu else torch_modes):
    try:
      torch_sec[name] = torch_step_time(batch, args.iters, autocast, args.preset)
      print(f"transformers ({name}): {torch_sec[name]:.3f} s/step", flush=True)
    except Exception as e:  # noqa: BLE001  (an out-of-memory peer must not cost our measurement)
      print(f"transformers ({name}) failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      import gc, torch  # noqa: E401, PLC0415
      gc.collect()
      torch.cuda.empty_cache()
  torch_modes = [m for m in torch_modes if on_cpu or m[0] in torch_sec]
  ours_sec = {}
  for scan_layers in {"loop": [False], "scan": [True], "both": [False, True]}[args.layers]:
    name = "layers in a lax.scan" if scan_layers else "layers in a Python loop"
    sec = ours_sec[name] = ours(batch, args.preset, args.compute_dtype, args.iters, args.chunk, scan_layers,
                                args.remat, args.attn_block, args.attn_impl, args.attn_head_loop)
    run_cfg = dataclasses.replace(cfg, attn_impl=args.attn_impl, compute_dtype=args.compute_dtype,
                                  attn_head_loop=args.attn_head_loop)
    impl = attention_impl(run_cfg)
    loop = ", per (sequence, KV head)" if attention_head_loop(run_cfg) else ""
    attn = f"blocked attention ({args.attn_block or cfg.attn_block} rows{loop})" if impl == "blocked" else f"{impl} attention"
    print(f"ours ({args.compute_dtype} compute, {name}, remat {args.remat}, {attn}): {sec:.3f} s/step, "
          f"{tokens / sec:.0f} tokens/s, {rates(sec)}")
  for name, autocast in torch_modes:
    tsec = torch_sec[name] if name in torch_sec else torch_step_time(batch, args.iters, autocast, args.preset)
    ratios = ", ".join(f"{tsec / sec:.2f}x ({layers})" for layers, sec in ours_sec.items())
    print(f"transformers ({name}): {tsec:.3f} s/step, {tokens / tsec:.0f} tokens/s, {rates(tsec)}; "
          f"ratio ours / this: {ratios}")
  print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
