"""Driver of the end-to-end tests: a short-prompt synthetic task and a tiny random-weight model, so a full
RESD / SDPO / GRPO run (2 outer batches x 2 inner updates) takes seconds after compilation.

  python tests/algorithms/tiny_run.py WORKDIR ALGORITHM '{"config.key": value, ...}' [PAUSE_AFTER_STEP]

With PAUSE_AFTER_STEP the run prints `SAVED <step>` when that checkpoint is written and the next inner
update starts, then sleeps a few seconds inside that update, so a test can signal it in the middle of a step.
"""
import importlib.util
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from resd_jax.tasks.base import Example, Grade, register  # noqa: E402

WORDS = ("apple", "river", "stone", "cloud", "ember", "maple", "tiger", "lemon")


@register("tiny_words")
class TinyWordsTask:
  """Say a given word. reward 1 iff the word appears; acc = fraction of its letters present; feedback text."""
  name = "tiny_words"

  def prompts(self, split):
    words = WORDS[:6] if split == "train" else WORDS[6:]
    for i, w in enumerate(words):
      yield Example(f"{split}-{i}", ({"role": "user", "content": f"Reply with the word {w}."},), {"word": w})

  def grade(self, example, response_text, *, truncated=False):
    w = example.meta["word"]
    text = response_text.lower() if isinstance(response_text, str) else ""
    acc = sum(ch in text for ch in w) / len(w)
    ok = w in text
    feedback = "" if ok else f"The reply does not contain '{w}'." + (" It was cut off." if truncated else "")
    return Grade(float(ok), acc, feedback, {"truncated": int(truncated)})


def tiny_config(algorithm="resd", overrides=None):
  spec = importlib.util.spec_from_file_location("cfg_base", ROOT / "configs" / "base.py")
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  c = m.get_config("tiny")
  c.algorithm = algorithm
  c.task.name = "tiny_words"
  c.model.source, c.model.preset = "preset", "tiny"
  c.data.train_limit, c.data.test_limit = 4, 2
  c.rollout.max_prompt_len, c.rollout.max_teacher_prompt_len = 64, 704
  c.rollout.max_response_len, c.eval.max_response_len = 16, 8
  for role in ("reflector", "tagger", "curator"):
    c.roles[role].max_new_tokens = 24
  c.context.teacher_context_tokens = 640
  c.metrics.progress = False
  for k, v in (overrides or {}).items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def main(argv):
  workdir, algorithm = argv[1], argv[2]
  overrides = json.loads(argv[3]) if len(argv) > 3 else {}
  pause = int(argv[4]) if len(argv) > 4 else None
  from resd_jax import loop as resd
  if algorithm == "eval":  # evaluate the run's checkpoint (read-only), as launch/evaluate.py does
    step, metrics = resd.evaluate_checkpoint(tiny_config("resd", overrides), workdir)
    print("EVAL " + json.dumps({"step": step, **metrics}, sort_keys=True), flush=True)
    return
  if pause is not None:
    inner_update = resd.Trainer.inner_update

    def pause_then_update(self, examples):
      if self.cursor.step == pause and pause in self.ckpt.steps():
        print(f"SAVED {pause}", flush=True)
        time.sleep(float(os.environ.get("TINY_PAUSE_S", "3")))
      return inner_update(self, examples)
    resd.Trainer.inner_update = pause_then_update
  summary = resd.train(tiny_config(algorithm, overrides), workdir)
  print(f"DONE {summary.status} {summary.step}", flush=True)


if __name__ == "__main__":
  main(sys.argv)
