"""Driver of the end-to-end tests: a short-prompt synthetic task and a tiny random-weight model, so a full
RESD / SDPO / GRPO run (2 outer batches x 2 inner updates) takes seconds after compilation.

  python tests/algorithms/tiny_run.py WORKDIR ALGORITHM '{"config.key": value, ...}' [PAUSE_AFTER_STEP]

With PAUSE_AFTER_STEP the run prints `SAVED <step>` after writing that checkpoint and sleeps a few seconds,
so a test can kill it at a known point.
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
  c.rollout.max_response_len, c.eval.max_response_len, c.context.max_new_tokens = 16, 8, 24
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
  from resd_jax.algorithms import resd
  if pause is not None:
    save = resd.Trainer.save

    def save_then_pause(self, val_metrics=None):
      save(self, val_metrics)
      if self.cursor.step == pause:
        print(f"SAVED {pause}", flush=True)
        time.sleep(float(os.environ.get("TINY_PAUSE_S", "5")))
    resd.Trainer.save = save_then_pause
  summary = resd.train(tiny_config(algorithm, overrides), workdir)
  print(f"DONE {summary.status} {summary.step}", flush=True)


if __name__ == "__main__":
  main(sys.argv)
