"""Does a good reflector help? RESD with a scripted (perfect) reflector vs SDPO (feedback only) vs no update, on a
generated task family whose lesson generalises across prompts (issue 24).

Task `lesson_length`: short factual questions; a HIDDEN format rule accepts only answers of at most 3 words.
The grader's feedback is rich ("the answer has 23 words; answers must be at most 3 words, no sentence"), so a
perfect reflector can write the general lesson. Train and held-out questions come from different templates:
the lesson has to transfer. The policy is the embedded SmolLM2-135M-Instruct (or `--policy tiny`, a random
preset, for a smoke test of the script only).

Arms, at equal samples (same prompts, batch, samples per prompt, steps, learning rate):
  resd    RESD, with in-process scripted roles: the reflector reads the feedback and writes the lesson a perfect
          reflector would; the curator adds it to the playbook once; the tagger marks it helpful
  sdpo    SDPO: the teacher sees the grader's feedback (and a buffered success), no reflection or playbook
  none    no update (the initial policy)
Measured on the held-out split every --eval-every steps: success of a greedy answer, its length in words, and
the mean per-token log-probability the student (no context) gives a correct-format answer (the canonical
1-3 word answer followed by the end-of-turn token).

  python bench/roles_lesson.py --steps 30 --seeds 0,1,2 --out /tmp/roles_lesson   # SmolLM2, CPU: hours
  python bench/roles_lesson.py --policy tiny --steps 2 --seeds 0 --out /tmp/smoke  # smoke test
Writes OUT/results.jsonl (one row per arm, seed, step), OUT/summary.md and OUT/roles_lesson.png.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resd_jax.tasks.base import Example, Grade, register  # noqa: E402

MAX_WORDS = 3
LESSON = (f"Answer with at most {MAX_WORDS} words: give only the bare answer (for example a name or a number), "
          "never a full sentence or an explanation.")

# (template, [(slot, answer), ...]); train and held-out use disjoint templates.
TRAIN = [
  ("What is the capital of {}?", [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
                                  ("Spain", "Madrid"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Greece", "Athens")]),
  ("How many legs does a {} have?", [("spider", "Eight"), ("dog", "Four"), ("bird", "Two"), ("insect", "Six"),
                                     ("snake", "Zero"), ("horse", "Four"), ("octopus", "Eight"), ("human", "Two")]),
]
HELD_OUT = [
  ("What color is {}?", [("fresh snow", "White"), ("a ripe banana", "Yellow"), ("grass", "Green"),
                         ("a clear daytime sky", "Blue"), ("coal", "Black"), ("a ripe tomato", "Red")]),
  ("What is the opposite of {}?", [("hot", "Cold"), ("up", "Down"), ("early", "Late"), ("open", "Closed"),
                                   ("light", "Dark"), ("fast", "Slow")]),
]


def _examples(split):
  groups = TRAIN if split == "train" else HELD_OUT
  out = []
  for t, (template, items) in enumerate(groups):
    for i, (slot, answer) in enumerate(items):
      out.append(Example(f"{split}-{t}-{i}", ({"role": "user", "content": template.format(slot)},),
                         {"answer": answer}))
  # interleave the templates so every batch mixes them
  return sorted(out, key=lambda e: (int(e.id.split("-")[2]), int(e.id.split("-")[1])))


def words_of(text: str) -> int:
  from resd_jax.models.tokenizer import strip_reasoning
  return len(strip_reasoning(text if isinstance(text, str) else "").split())


@register("lesson_length")
class LessonLengthTask:
  """Success iff the answer has 1..MAX_WORDS words (the content is not checked: the rule is about format).
  acc = min(1, MAX_WORDS / words) (continuous)."""
  name = "lesson_length"

  def prompts(self, split):
    return iter(_examples(split))

  def grade(self, example, response_text, *, truncated=False):
    n = words_of(response_text)
    ok = 1 <= n <= MAX_WORDS and not truncated
    acc = 0.0 if n == 0 else min(1.0, MAX_WORDS / n)
    feedback = "" if ok else (
      f"Rejected by the format check: the answer has {n} words{' and was cut off' if truncated else ''}. Answers "
      f"to these questions must be at most {MAX_WORDS} words: only the bare answer, with no full sentence, no "
      "explanation and no extra detail.")
    return Grade(float(ok), acc, feedback, {"words": n})


# ----- scripted roles: what a perfect reflector / curator / tagger would write ---------------------------------
def scripted_roles():
  from resd_jax.roles import RoleGenerators

  def reflector(convs):
    out = []
    for conv in convs:
      user = conv[-1]["content"]
      m = re.search(r"must be at most (\d+) words", user)
      if not m:
        out.append("{}")  # no usable feedback: no diagnosis
        continue
      n = int(m.group(1))
      out.append(json.dumps({
        "reasoning": "The grader rejected the answer for its length, not its content.",
        "error_identification": "The answer was a full sentence, longer than the format allows.",
        "root_cause_analysis": f"The hidden format rule accepts at most {n} words; the attempt explained itself.",
        "correct_approach": "Reply with only the bare answer.",
        "key_insight": LESSON, "bullet_tags": []}))
    return out

  def curator(convs):
    out, added = [], False
    for conv in convs:  # the curators of one update see the same snapshot: add the lesson once
      user = conv[-1]["content"]
      in_playbook = added or re.search(r"\[[a-z]+-\d{5}\]", user)  # the only entry this curator ever adds
      added = added or "Key insight" in user
      ops = [] if in_playbook or "Key insight" not in user else [
        {"type": "ADD", "section": "common_mistakes_to_avoid", "content": LESSON}]
      out.append(json.dumps({"reasoning": "one general format lesson", "operations": ops}))
    return out

  def tagger(convs):
    out = []
    for conv in convs:
      ids = re.findall(r"\[([a-z]+-\d{5})\]", conv[-1]["content"])
      out.append(json.dumps({"bullet_tags": [{"id": i, "tag": "helpful"} for i in ids]}))
    return out

  return RoleGenerators({"reflector": reflector, "tagger": tagger, "curator": curator})


# ----- runs ---------------------------------------------------------------------------------------------------
def make_config(args, algorithm, seed):
  from resd_jax.configs import base
  c = base.get_config("tiny")
  c.algorithm, c.seed, c.task.name = algorithm, seed, "lesson_length"
  c.model.compute_dtype, c.model.remat = args.compute_dtype, args.remat
  if args.policy == "tiny":
    c.model.source, c.model.preset = "preset", "tiny"
  c.data.train_limit, c.data.test_limit, c.data.epochs = 0, 0, 1000
  c.rollout.batch_prompts, c.rollout.samples_per_prompt, c.rollout.inner_updates = args.batch, args.samples, 1
  c.rollout.max_prompt_len, c.rollout.max_response_len = 128, args.max_response
  c.rollout.max_teacher_prompt_len = args.teacher_len
  c.rollout.sample_batch = args.batch * args.samples
  c.train.learning_rate, c.train.max_steps = args.lr, args.steps
  c.eval.before_training, c.eval.every_outer = False, 0
  c.metrics.tensorboard, c.metrics.progress = False, False
  return c


def held_out_measures(trainer, examples):
  """(success rate, mean words, mean per-token log-prob of the correct-format answer) of the current policy."""
  import jax
  import numpy as np
  from resd_jax.sampling import SamplingParams, generate_rollouts
  tok = trainer.tokenizer
  with trainer._mesh_ctx():
    rolls = generate_rollouts(trainer.policy(), tok, [list(e.messages) for e in examples],
                              SamplingParams(temperature=0.0, max_new_tokens=trainer.cfg.rollout.max_response_len),
                              jax.random.PRNGKey(0), None, len(examples))
  grades = [trainer.task.grade(e, r.text, truncated=r.truncated) for e, r in zip(examples, rolls)]
  lp = format_logprobs(trainer, [list(e.messages) for e in examples], [e.meta["answer"] for e in examples])
  return (float(np.mean([g.success for g in grades])), float(np.mean([g.info["words"] for g in grades])),
          float(np.mean(lp)))


_LOGP = []


def _token_logprobs():
  """log p(token t | tokens < t) [B, L-1], jitted once per process (a jit defined per call compiles per call)."""
  if not _LOGP:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def logp(model, toks, mask):  # toks, mask [B, L]
      hidden, _ = model(toks, attn_mask=mask)
      lp = jax.nn.log_softmax(model.logits(hidden[:, :-1]).astype(jnp.float32), -1)  # [B, L-1, V]
      return jnp.take_along_axis(lp, toks[:, 1:, None], -1)[..., 0]
    _LOGP.append(logp)
  return _LOGP[0]


def format_logprobs(trainer, conversations, answers):
  """Per conversation: mean per-token log-prob of `answer` + the end-of-turn token after the chat prompt."""
  import jax.numpy as jnp
  import numpy as np
  from resd_jax.models import tokenizer as tk
  tok = trainer.tokenizer
  end_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tk.stop_token_ids(tok)[0]
  rows = [(tk.chat_tokens(tok, conv), tk.encode(tok, ans) + [int(end_id)]) for conv, ans in zip(conversations, answers)]
  L = max(len(p) + len(a) for p, a in rows)
  toks = np.zeros((len(rows), L), np.int32)
  mask = np.zeros((len(rows), L), bool)
  target = np.zeros((len(rows), L), bool)
  for i, (p, a) in enumerate(rows):
    toks[i, :len(p) + len(a)] = p + a
    mask[i, :len(p) + len(a)] = True
    target[i, len(p):len(p) + len(a)] = True

  with trainer._mesh_ctx():
    lp = np.asarray(_token_logprobs()(trainer.policy(), jnp.asarray(toks), jnp.asarray(mask)))
  t = target[:, 1:]
  return (lp * t).sum(1) / t.sum(1)


def context_probe(args):
  """How much each teacher context, by itself, moves the INITIAL policy towards the correct format: the format
  log-prob on the held-out prompts under the student prompt, SDPO's teacher prompt (feedback on the policy's
  own greedy answer) and RESD's (the playbook lesson, the scripted reflection, the feedback and the attempt)."""
  import jax
  import numpy as np
  from resd_jax import loop as resd
  from resd_jax.context import ContextConfig, ContextUpdater, GradedSample, TeacherContextConfig
  from resd_jax.context.teacher_context import build_teacher_context
  from resd_jax.sampling import SamplingParams, generate_rollouts
  trainer = resd.Trainer(make_config(args, "resd", 0), pathlib.Path(args.out) / "runs" / "probe")
  exs = trainer.data.test
  with trainer._mesh_ctx():
    rolls = generate_rollouts(trainer.policy(), trainer.tokenizer, [list(e.messages) for e in exs],
                              SamplingParams(temperature=0.0, max_new_tokens=args.max_response),
                              jax.random.PRNGKey(0), None, len(exs))
  samples = [GradedSample(e, r.text, list(r.response_tokens), None, trainer.task.grade(e, r.text, truncated=r.truncated),
                          r.truncated) for e, r in zip(exs, rolls)]
  upd = ContextUpdater(ContextConfig(), 0)
  res = upd.update(samples, scripted_roles(), 1)
  variants = {
    "student prompt (no context)": None,
    "SDPO teacher (feedback)": TeacherContextConfig.sdpo(self_success=False),
    "RESD teacher (playbook + reflection + feedback + attempt)": TeacherContextConfig(),
    "playbook lesson only": TeacherContextConfig(use_attempt=False, use_feedback=False, use_reflection=False,
                                                 use_solution=False),
  }
  out = {}
  for name, tc in variants.items():
    convs = [list(s.example.messages) if tc is None else
             build_teacher_context(s, upd.playbook, res.reflections[i], None, tc).messages
             for i, s in enumerate(samples)]
    out[name] = float(np.mean(format_logprobs(trainer, convs, [e.meta["answer"] for e in exs])))
    print(f"{name}: {out[name]:.3f}", flush=True)
  trainer.close()
  (pathlib.Path(args.out) / "context_probe.json").write_text(json.dumps(out, indent=1) + "\n")


def run_arm(args, arm, seed, out):
  from resd_jax import loop as resd
  algorithm = {"resd": "resd", "sdpo": "sdpo", "none": "resd"}[arm]

  class BenchTrainer(resd.Trainer):
    def generate_text_fn(self, step):
      return scripted_roles()

  wd = pathlib.Path(args.out) / "runs" / f"{arm}_s{seed}"
  trainer = BenchTrainer(make_config(args, algorithm, seed), wd)
  held_out = trainer.data.test
  batches = trainer.outer_batches()
  try:
    for step in range(args.steps + 1):
      if step % args.eval_every == 0 or step == args.steps:
        t0 = time.perf_counter()
        succ, words, lp = held_out_measures(trainer, held_out)
        row = {"arm": arm, "seed": seed, "step": step, "held_out_success": succ, "held_out_words": words,
               "held_out_format_logprob": lp, "playbook_entries": len(trainer.updater.playbook),
               "eval_s": time.perf_counter() - t0}
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(json.dumps(row), flush=True)
        if arm == "none":  # no update: the initial policy at every step
          for s in range(args.eval_every, args.steps + 1, args.eval_every):
            out.write(json.dumps(dict(row, step=s)) + "\n")
          return
      if step == args.steps:
        break
      m = trainer.inner_update(batches[step % len(batches)])
      trainer.cursor.step += 1
      trainer.writer.write(trainer.cursor.step, m)  # runs/<arm>_s<seed>/metrics.jsonl (teacher, context counters)
      print(f"{arm} s{seed} step {step + 1}: train success {m['rollout/success'][0] / m['rollout/success'][1]:.2f} "
            f"({m['time/rollout']:.0f}+{m['time/step']:.0f} s)", flush=True)
  finally:
    trainer.close()


def summarise(path: pathlib.Path) -> str:
  import numpy as np
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  arms = sorted({r["arm"] for r in rows})
  steps = sorted({r["step"] for r in rows})
  lines = ["| arm | step | seeds | held-out success | held-out words | format log-prob |", "|---|---|---|---|---|---|"]
  for arm in arms:
    for s in steps:
      rs = [r for r in rows if r["arm"] == arm and r["step"] == s]
      if not rs:
        continue
      f = lambda k: f"{np.mean([r[k] for r in rs]):.3f} ± {np.std([r[k] for r in rs]):.3f}"  # noqa: E731
      lines.append(f"| {arm} | {s} | {len(rs)} | {f('held_out_success')} | {f('held_out_words')} | "
                   f"{f('held_out_format_logprob')} |")
  return "\n".join(lines)


def plot(path: pathlib.Path, png: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key in zip(axes, ("held_out_success", "held_out_words", "held_out_format_logprob")):
    for arm in sorted({r["arm"] for r in rows}):
      steps = sorted({r["step"] for r in rows if r["arm"] == arm})
      ys = [[r[key] for r in rows if r["arm"] == arm and r["step"] == s] for s in steps]
      mean, sd = np.array([np.mean(y) for y in ys]), np.array([np.std(y) for y in ys])
      ax.plot(steps, mean, marker="o", label=arm)
      ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_title(key.replace("_", " "))
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(png, dpi=110)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--policy", choices=("embedded", "tiny"), default="embedded")
  ap.add_argument("--arms", default="none,sdpo,resd")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--eval-every", type=int, default=5)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--samples", type=int, default=2)
  ap.add_argument("--max-response", type=int, default=48)
  ap.add_argument("--lr", type=float, default=1e-5)
  ap.add_argument("--compute-dtype", default="bfloat16", help="bfloat16 is the fast CPU setting")
  ap.add_argument("--remat", default="none", help="none | full | dots (full saves memory, costs time)")
  ap.add_argument("--teacher-len", type=int, default=512, help="rollout.max_teacher_prompt_len")
  ap.add_argument("--context-probe", action="store_true", help="only measure what each teacher context does to "
                  "the initial policy (OUT/context_probe.json)")
  args = ap.parse_args()
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  if args.context_probe:
    return context_probe(args)
  path = out_dir / "results.jsonl"
  if path.exists():
    raise SystemExit(f"{path} exists; pass a fresh --out (results are never overwritten)")
  with path.open("w") as out:
    for seed in [int(s) for s in args.seeds.split(",")]:
      for arm in args.arms.split(","):
        run_arm(args, arm, seed, out)
  summary = summarise(path)
  (out_dir / "summary.md").write_text(summary + "\n")
  plot(path, out_dir / "roles_lesson.png")
  print(summary)


if __name__ == "__main__":
  main()
