"""Where one SD train step's time goes, by named scope: a jax.profiler trace of our step, summed per op.

  python bench/profile_step.py [--preset small --batch 4 --prompt 256 --teacher_prompt 768 --response 512]
      [--layers loop|scan] [--remat none|full|dots] [--attn_impl auto] [--steps 2] [--top 20] [--trace_dir DIR]

The step is the one `bench/train_step.py` times. It is compiled once; the compiled HLO names every op and
carries its `op_name` (the jit / jvp / transpose path plus the named scopes of the model, the loss and the
step: student, teacher, qkv, attention, attn_out, mlp, sd_loss, teacher_head, student_head, top_k,
diagnostics, optimizer). After two warm-up steps, `--steps` steps run under `jax.profiler.trace`, and the
trace's per-op durations are summed:
  - on a GPU, the device plane's "XLA Ops" line (kernel time per HLO op; the script turns XLA's CUDA graphs
    off, which hide the ops, so the step can run a little slower than in bench/train_step.py);
  - on the CPU, the host threads' events that carry an `hlo_op` (thunk time per HLO op; parallel thunks
    overlap, so the shares are of the summed op time, not of the wall time).
Printed: the wall time per step, the op time per scope path (forward or backward: backward = under a
`transpose(...)`), and the `--top` ops with their scopes. `--trace_dir` keeps the trace (for xprof/Perfetto)
and the compiled HLO text.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import pathlib
import re
import sys
import tempfile
import time
import warnings

# XLA:GPU groups kernels into CUDA graphs ("command buffers"), whose trace events name no HLO op; profile without.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="

import jax  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

# Reading an event's stats warns about the binding's type ("has no __module__ attribute") on some jaxlib builds.
warnings.filterwarnings("ignore", message="builtin type event_stats", category=DeprecationWarning)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from resd_jax.models import ModelConfig  # noqa: E402

from train_step import build_ours, make_batch  # noqa: E402

# Our named scopes, outermost first; an op's key is the subsequence of these found in its op_name.
SCOPES = ("student", "teacher", "sd_loss", "optimizer", "qkv", "attention", "attn_out", "mlp", "teacher_head",
          "student_head", "top_k", "diagnostics")
_HLO_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{op_name="([^"]*)"', re.M)


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its metadata op_name, for every instruction of a compiled module's text."""
  return {m.group(1): m.group(2) for m in _HLO_OP.finditer(hlo_text)}


def scope_key(op_name: str) -> str:
  """'bwd: student/attention' style key: direction (a transpose in the path = backward) and our scopes."""
  parts = [p for p in re.split(r"[/()]", op_name) if p]
  scopes = list(dict.fromkeys(p for p in parts if p in SCOPES))  # remat repeats the scopes in the path
  direction = "bwd" if "transpose(" in op_name else "fwd"
  return f"{direction}: {'/'.join(scopes) or '(no scope)'}"


def op_durations(data: ProfileData) -> collections.Counter:
  """Summed duration (s) per HLO op name: the GPU's "XLA Ops" line, else the CPU thunks' hlo_op events."""
  totals: collections.Counter = collections.Counter()
  planes = list(data.planes)
  gpu = [p for p in planes if p.name.startswith("/device:GPU")]
  if gpu:
    lines = list(gpu[0].lines)
    for line in lines:
      if line.name == "XLA Ops":
        for ev in line.events:
          totals[ev.name] += ev.duration_ns * 1e-9
    if not totals:  # no op line: the kernels' own hlo_op stats, on the stream lines
      for line in lines:
        for ev in line.events:
          op = next((v for k, v in ev.stats if k == "hlo_op"), None)
          if op:
            totals[str(op)] += ev.duration_ns * 1e-9
    if not totals:
      print(f"no op events on {gpu[0].name}; its lines: {[line.name for line in lines]}")
    return totals
  for plane in planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      for ev in line.events:
        stats = {k: v for k, v in ev.stats}
        if "hlo_op" in stats and "jit_step" in str(stats.get("hlo_module", "")):
          totals[str(stats["hlo_op"])] += ev.duration_ns * 1e-9
  return totals


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="small")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--prompt", type=int, default=256)
  ap.add_argument("--teacher_prompt", type=int, default=768)
  ap.add_argument("--response", type=int, default=512)
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--layers", default="loop", choices=("loop", "scan"))
  ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  ap.add_argument("--attn_impl", default="auto", choices=("auto", "blocked", "cpu_fused", "cudnn", "xla"))
  ap.add_argument("--attn_block", type=int, default=0)
  ap.add_argument("--attn_head_loop", default="auto", choices=("auto", "on", "off"))
  ap.add_argument("--compute_dtype", default="bfloat16", choices=("float32", "bfloat16"))
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--top", type=int, default=20)
  ap.add_argument("--trace_dir", default="", help="keep the trace here (default: a temporary folder)")
  args = ap.parse_args()
  if args.steps < 1:
    ap.error("--steps must be >= 1")

  cfg = ModelConfig.preset(args.preset)
  batch = make_batch(args.batch, args.prompt, args.teacher_prompt, args.response, cfg.vocab_size)
  step, state, batch = build_ours(batch, args.preset, args.compute_dtype, args.chunk, args.layers == "scan",
                                  args.remat, args.attn_block, args.attn_impl, args.attn_head_loop)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  print(f"{jax.devices()[0].device_kind}; {args.preset}, B={args.batch}, student {args.prompt}+{args.response}, "
        f"teacher {args.teacher_prompt}+{args.response}, layers {args.layers}, remat {args.remat}, attention "
        f"{args.attn_impl}; compiled in {time.perf_counter() - t0:.0f} s", flush=True)
  names = op_names(compiled.as_text())

  def run(n: int) -> float:
    nonlocal state
    t = time.perf_counter()
    for _ in range(n):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t) / n

  run(2)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="resd_profile_")
  with jax.profiler.trace(trace_dir):
    wall = run(args.steps)
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not files:
    sys.exit(f"no .xplane.pb trace under {trace_dir}")
  per_op = op_durations(ProfileData.from_file(files[-1]))
  total = sum(per_op.values())
  if not total:
    sys.exit("the trace holds no op events of the step")
  print(f"wall {wall:.3f} s/step (traced); op time {total / args.steps:.3f} s/step over {len(per_op)} ops")

  by_scope: collections.Counter = collections.Counter()
  for op, sec in per_op.items():
    by_scope[scope_key(names.get(op, ""))] += sec
  print("\nop time per scope (s/step, share):")
  for key, sec in by_scope.most_common():
    print(f"  {sec / args.steps:8.4f}  {sec / total:6.1%}  {key}")
  print(f"\ntop {args.top} ops (s/step, share, scope, op_name tail):")
  for op, sec in per_op.most_common(args.top):
    name = names.get(op, "")
    print(f"  {sec / args.steps:8.4f}  {sec / total:6.1%}  {op:28s} {scope_key(name):38s} {name[-60:]}")
  pathlib.Path(trace_dir, "hlo.txt").write_text(compiled.as_text())
  print(f"\ntrace and the compiled HLO (hlo.txt): {trace_dir}")


if __name__ == "__main__":
  main()
