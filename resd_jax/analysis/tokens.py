"""Per-token values: coloured token strips (HTML / matplotlib), per-token KL(student ‖ teacher) with the model,
and one rollout of a trainer inspected end to end (rollout, feedback, reflection, playbook change, KL)."""
from __future__ import annotations

import dataclasses
import html
import math
from typing import Any, Sequence

import numpy as np

from resd_jax.analysis.diff import PlaybookDiff, diff_playbooks
from resd_jax.analysis.plots import _figure
from resd_jax.context.playbook import Playbook


# ----- per-token values as a coloured strip -----------------------------------------------------------------
def _normalise(values: Sequence[float], vmax: float | None) -> tuple[np.ndarray, float]:
  v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  top = float(vmax) if vmax is not None else (float(v.max()) if v.size and v.max() > 0 else 1.0)
  return np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v), top


def token_strip_html(tokens: Sequence[str], values: Sequence[float], *, vmax: float | None = None,
                     cmap: str = "Reds", label: str = "KL") -> str:
  """HTML spans, one per token, background coloured by value (0 -> white, vmax -> darkest); hover shows it."""
  if len(tokens) != len(values):
    raise ValueError(f"token_strip_html needs one value per token; got {len(tokens)} tokens and "
                     f"{len(values)} values")
  from matplotlib import colormaps  # noqa: PLC0415
  from matplotlib.colors import to_hex  # noqa: PLC0415
  scaled, top = _normalise(values, vmax)
  colour = colormaps[cmap]
  spans = []
  for tok, raw, s in zip(tokens, values, scaled):
    fg = "white" if s > 0.6 else "black"
    text = html.escape(tok).replace("\n", "&#x21b5;<br>")
    spans.append(f'<span title="{label}={float(raw):.4g}" style="background:{to_hex(colour(0.85 * s))};'
                 f'color:{fg};padding:1px 0;white-space:pre-wrap">{text}</span>')
  legend = f'<div style="font-size:small;color:gray">{html.escape(label)}: white = 0, darkest = {top:.3g}</div>'
  return f'<div style="font-family:monospace;line-height:1.8">{"".join(spans)}</div>{legend}'


def plot_token_strip(tokens: Sequence[str], values: Sequence[float], *, vmax: float | None = None,
                     cmap: str = "Reds", per_row: int = 16, label: str = "KL"):
  """The matplotlib version of `token_strip_html`: a grid of token boxes (row-major, `per_row` per row)."""
  if len(tokens) != len(values):
    raise ValueError(f"plot_token_strip needs one value per token; got {len(tokens)} tokens and "
                     f"{len(values)} values")
  from matplotlib import colormaps  # noqa: PLC0415
  scaled, top = _normalise(values, vmax)
  rows = max(1, math.ceil(len(tokens) / per_row))
  fig, (ax,) = _figure(width=min(14.0, 0.8 * per_row + 1), height=0.45 * rows + 0.8)
  colour = colormaps[cmap]
  for i, (tok, s) in enumerate(zip(tokens, scaled)):
    r, c = divmod(i, per_row)
    shown = tok.replace("\n", "\\n")
    shown = shown if len(shown) <= 8 else shown[:7] + "…"
    ax.text(c + 0.5, -r - 0.5, shown, ha="center", va="center", fontsize=8, family="monospace",
            color="white" if s > 0.6 else "black",
            bbox=dict(boxstyle="square,pad=0.2", facecolor=colour(0.85 * s), edgecolor="none"))
  ax.set_xlim(0, per_row)
  ax.set_ylim(-rows, 0)
  ax.axis("off")
  ax.set_title(f"per-token {label} (darkest = {top:.3g})")
  return fig


# ----- per-token KL between student and teacher --------------------------------------------------------------
def _response_logprobs(m: Any, tokens: Any, mask: Any, r: int) -> Any:
  """Log-softmax at temperature 1 of the logits that predict the last r tokens: [B, R, V] float32."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  hidden, _ = m(tokens, attn_mask=mask)                                   # [B, L, D]
  hidden = hidden[:, tokens.shape[1] - r - 1: tokens.shape[1] - 1]        # [B, R, D]
  return jax.nn.log_softmax(m.logits(hidden).astype(jnp.float32), -1)     # [B, R, V]


def _kl_rows(student: Any, teacher: Any, s_tok, s_mask, t_tok, t_mask, r: int) -> Any:
  import jax.numpy as jnp  # noqa: PLC0415
  log_p = _response_logprobs(student, s_tok, s_mask, r)
  log_q = _response_logprobs(teacher, t_tok, t_mask, r)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)               # [B, R]


def _jitted(fn, **kw):
  """`nnx.jit(fn)` built on first use, so that importing this module does not import flax."""
  cache: dict[str, Any] = {}

  def call(*args, **kwargs):
    if "f" not in cache:
      from flax import nnx  # noqa: PLC0415
      cache["f"] = nnx.jit(fn, **kw)
    return cache["f"](*args, **kwargs)
  return call


_kl_same = _jitted(lambda m, s_tok, s_mask, t_tok, t_mask, r: _kl_rows(m, m, s_tok, s_mask, t_tok, t_mask, r),
                   static_argnames="r")
_kl_two = _jitted(_kl_rows, static_argnames="r")


def per_token_kl(model: Any, batch: Any, teacher_model: Any = None) -> np.ndarray:
  """KL(student ‖ teacher) at temperature 1 over the full vocabulary, per response token: [B, R] float32
  (0 where `response_mask` is 0).

  The student is `model` on `batch.student_tokens`, the teacher is `teacher_model` (default: the same model)
  on `batch.teacher_tokens`; the logits that predict response token j sit at position P - 1 + j of both
  sequences (see `resd_jax.train.batch`). Full-vocabulary logits are built only for the R response positions.
  """
  r = batch.response_tokens.shape[1]
  args = (batch.student_tokens, batch.student_mask, batch.teacher_tokens, batch.teacher_mask)
  kl = (_kl_same(model, *args, r=r) if teacher_model is None or teacher_model is model
        else _kl_two(model, teacher_model, *args, r=r))                   # [B, R]
  return np.asarray(kl) * np.asarray(batch.response_mask)


def _trim_left_padding(batch: Any) -> Any:
  """The batch without the leading columns that are padding in every row of a sequence (positions come from
  the mask, so the forward is unchanged; it only gets shorter)."""
  def first_used(mask: np.ndarray) -> int:
    used = np.flatnonzero(np.asarray(mask).any(0))
    return int(used[0]) if used.size else 0
  s, t = first_used(batch.student_mask), first_used(batch.teacher_mask)
  return dataclasses.replace(batch, student_tokens=batch.student_tokens[:, s:], student_mask=batch.student_mask[:, s:],
                             teacher_tokens=batch.teacher_tokens[:, t:], teacher_mask=batch.teacher_mask[:, t:])


def response_token_strings(tokenizer: Any, batch: Any, row: int = 0) -> list[str]:
  """The response tokens of `row` (mask 1 only), each decoded on its own."""
  n = int(np.asarray(batch.response_mask[row]).sum())
  return [tokenizer.decode([int(t)]) for t in np.asarray(batch.response_tokens[row][:n])]


def sample_kl(model: Any, tokenizer: Any, sample: Any, reflection: str, playbook: Playbook,
              teacher_cfg: Any = None, *, solution: str | None = None, teacher_model: Any = None,
              max_teacher_prompt_len: int = 4096) -> tuple[list[str], np.ndarray, Any]:
  """(response token strings, per-token KL(student ‖ teacher) [n], teacher context) for one GradedSample,
  with the teacher context built exactly as the trainer builds it (`distillation_batch`)."""
  from resd_jax.context import BatchShape, TeacherContextConfig, distillation_batch  # noqa: PLC0415
  from resd_jax.context.types import Metrics  # noqa: PLC0415
  from resd_jax.context.updater import UpdateResult  # noqa: PLC0415
  from resd_jax.models.tokenizer import chat_tokens  # noqa: PLC0415
  teacher_cfg = teacher_cfg or TeacherContextConfig(max_prompt_tokens=max_teacher_prompt_len)
  prompt_len = len(chat_tokens(tokenizer, sample.example.messages))
  shape = BatchShape(1, prompt_len, max(prompt_len, max_teacher_prompt_len), max(1, len(sample.response_tokens)))
  result = UpdateResult([reflection], [solution], Metrics())
  batch, contexts = distillation_batch([sample], result, playbook, teacher_cfg, tokenizer, shape)
  batch = _trim_left_padding(batch)
  kl = per_token_kl(model, batch, teacher_model)[0]
  tokens = response_token_strings(tokenizer, batch, 0)
  return tokens, kl[:len(tokens)], contexts[0]


# ----- one rollout of a trainer, inspected ------------------------------------------------------------------
def trainer_mesh(trainer: Any):
  """A context manager placing calls on the trainer's mesh and logical-axis rules (for sampling / forwards)."""
  import contextlib  # noqa: PLC0415
  import jax  # noqa: PLC0415
  from resd_jax.parallel import sharding as shd  # noqa: PLC0415
  stack = contextlib.ExitStack()
  stack.enter_context(shd.axis_rules(trainer.rules))
  stack.enter_context(jax.set_mesh(trainer.mesh))
  return stack


@dataclasses.dataclass
class Inspection:
  """One rollout of a trainer's current policy, everything the context engine made of it, and the per-token
  KL(student ‖ teacher) of its response under the teacher context that training would use."""
  sample: Any                 # GradedSample
  reflection: str             # "" when none (success, or an unparsable reflection)
  playbook_before: Playbook
  playbook_after: Playbook
  update_metrics: dict[str, tuple[float, int]]
  teacher_slots: tuple[str, ...]
  tokens: list[str]           # response tokens, decoded one by one
  kl: np.ndarray              # [len(tokens)] KL(student ‖ teacher) per token
  raw_outputs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (reflect|tag|curate, text)

  def raw(self, kind: str) -> str:
    """What the model wrote for the first `kind` prompt of the update (reflect, tag, curate), "" when none."""
    return next((text for k, text in self.raw_outputs if k == kind), "")

  @property
  def diff(self) -> PlaybookDiff:
    return diff_playbooks(self.playbook_before, self.playbook_after)

  def summary(self) -> str:
    g = self.sample.grade
    top = int(np.argmax(self.kl)) if len(self.kl) else -1
    worst = f"max {self.kl[top]:.4f} at token {top} {self.tokens[top]!r}" if top >= 0 else "no tokens"
    return (f"reward {g.reward} acc {g.acc:.2f}; reflection {'yes' if self.reflection else 'none'}; playbook "
            f"{len(self.playbook_before)} -> {len(self.playbook_after)} entries; teacher slots {self.teacher_slots}; "
            f"KL mean {float(np.mean(self.kl)) if len(self.kl) else 0.0:.4f}, {worst}")


def _recording(generate_text: Any, log: list[tuple[str, str]]) -> Any:
  """`generate_text` that also appends (kind, text) to `log` for each conversation, the kind read from the
  conversation's system prompt (reflect / tag / curate / other)."""
  from resd_jax.context import prompts  # noqa: PLC0415
  kinds = {prompts.REFLECTOR_SYSTEM: "reflect", prompts.TAGGER_SYSTEM: "tag", prompts.CURATOR_SYSTEM: "curate"}
  if not callable(generate_text):  # RoleGenerators: record each role's generator
    return generate_text.map(lambda _role, g: _recording(g, log))

  def generate(convs):
    outs = generate_text(convs)
    log.extend((kinds.get(conv[0].get("content") if conv else None, "other"), text)
               for conv, text in zip(convs, outs))
    return outs
  generate.take_metrics = getattr(generate_text, "take_metrics", dict)  # the role's counters still reach the metrics
  return generate


def inspect_rollout(trainer: Any, example: Any = None, *, seed: int = 1, temperature: float = 1.0,
                    max_new_tokens: int | None = None) -> Inspection:
  """Sample one answer of `trainer`'s policy to `example` (default: the first training problem), grade it,
  run one context update on a COPY of the trainer's context state (the run is untouched), and measure the
  per-token KL against the teacher (the trainer's teacher weights, else the policy)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from resd_jax.context import ContextUpdater, GradedSample  # noqa: PLC0415
  from resd_jax.sampling import SamplingParams  # noqa: PLC0415
  example = trainer.data.train[0] if example is None else example
  step = int(trainer.cursor.step) + 1
  params = SamplingParams(temperature=temperature,
                          max_new_tokens=int(max_new_tokens or trainer.cfg.rollout.max_response_len))
  (ro,) = trainer.generate([list(example.messages)], params, jax.random.PRNGKey(seed))
  grade = trainer.task.grade(example, ro.text, truncated=ro.truncated)
  sample = GradedSample(example, ro.text, list(ro.response_tokens), list(ro.logprobs), grade, ro.truncated)
  updater = ContextUpdater(trainer.updater.config, seed)
  updater.load_state_dict(trainer.updater.state_dict())
  raw_outputs: list[tuple[str, str]] = []
  result = updater.update([sample], _recording(trainer.generate_text_fn(step), raw_outputs), step)
  teacher_params = getattr(trainer.state, "teacher", None)
  if teacher_params is not None:  # a LoRA run keeps the teacher's adapters only: put them on the shared base
    from resd_jax.models import lora  # noqa: PLC0415
    teacher_params = lora.with_trainable(trainer.state.params, teacher_params)
  teacher = nnx.merge(trainer.graphdef, teacher_params) if teacher_params is not None else None
  with trainer_mesh(trainer):
    tokens, kl, context = sample_kl(trainer.policy(), trainer.tokenizer, sample, result.reflections[0],
                                    updater.playbook, trainer.teacher_context, teacher_model=teacher,
                                    solution=result.solutions_before[0],
                                    max_teacher_prompt_len=trainer.batch_shape.max_teacher_prompt_len)
  return Inspection(sample, result.reflections[0], Playbook.from_dict(trainer.updater.playbook.to_dict()),
                    updater.playbook, dict(result.metrics), tuple(context.slots), tokens, kl, raw_outputs)
