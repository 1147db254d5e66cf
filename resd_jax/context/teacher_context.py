"""The teacher's context per sample, and the per-sample distillation mask.

RESD template (each slot switchable for ablations), in the last user message:

    <task prompt, verbatim>
    ### Lessons learned so far (playbook)      <- rendered playbook
    ### Your previous attempt                  <- the sampled response, reasoning stripped
    ### Feedback on that attempt               <- env feedback, only when no solution is known
    ### Reflection on what went wrong          <- the parsed diagnosis of this sample
    ### A solution that succeeded              <- solution buffer, reasoning stripped
    <closing instruction>

SDPO template: prompt + solution + feedback (feedback only without a solution); `self_success` (`+ss`) lets the
sample's own success serve as the solution. System messages and earlier turns are kept as they are.

sd_mask is 1 only when the teacher gets something the student did not (playbook, feedback, reflection or
solution; the previous attempt alone is the student's own text and does not count). With sd_mask 0 the teacher
messages are exactly the student messages.

Length: when the templated teacher prompt exceeds `max_prompt_tokens`, the playbook shrinks first (lowest-value
entries out, the largest subset that fits, found by bisection); the task prompt is never cut. If it still does not
fit without any playbook, the sample is dropped from distillation (sd_mask 0, teacher = student prompt) and
counted as `teacher/overlong_dropped`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from resd_jax.context import prompts
from resd_jax.context.config import require_positive
from resd_jax.context.playbook import Playbook
from resd_jax.context.text import approx_token_count, clip_middle, strip_reasoning
from resd_jax.context.types import GradedSample, Metrics

TEMPLATES = ("resd", "sdpo")
INFORMATIVE_SLOTS = ("playbook", "feedback", "reflection", "solution")

Messages = list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class TeacherContextConfig:
  """Which slots the teacher sees. Use `TeacherContextConfig.sdpo(...)` for the SDPO baseline."""
  template: str = "resd"
  use_playbook: bool = True
  use_attempt: bool = True
  use_feedback: bool = True
  use_reflection: bool = True
  use_solution: bool = True
  feedback_only_without_solution: bool = True
  self_success: bool = True  # a sample's own success may be its solution (RESD; SDPO `+ss`)
  use_buffer: bool = True    # solutions from earlier steps (the buffer) count; False: only this batch's
  max_prompt_tokens: int = 8192
  max_attempt_chars: int = 6000
  max_feedback_chars: int = 2000
  max_solution_chars: int = 12000
  max_reflection_chars: int = 3000

  def __post_init__(self):
    if self.template not in TEMPLATES:
      raise ValueError(f"teacher_context.template={self.template!r} is not one of {TEMPLATES}")
    if self.template == "sdpo" and (self.use_playbook or self.use_attempt or self.use_reflection):
      raise ValueError("the sdpo teacher template has only solution and feedback slots; set use_playbook, "
                       "use_attempt and use_reflection to False (TeacherContextConfig.sdpo() does this)")
    require_positive(self, "teacher_context", ("max_prompt_tokens", "max_attempt_chars", "max_feedback_chars",
                                                "max_solution_chars", "max_reflection_chars"))

  @classmethod
  def sdpo(cls, self_success: bool = False, **kw) -> "TeacherContextConfig":
    return cls(template="sdpo", use_playbook=False, use_attempt=False, use_reflection=False,
               self_success=self_success, **kw)


@dataclasses.dataclass
class TeacherContext:
  messages: Messages
  sd_mask: int
  slots: tuple[str, ...]          # slots that were filled, in template order
  playbook_entries_dropped: int   # entries left out to fit the length budget
  overlong: bool                  # did not fit even without a playbook (sd_mask forced to 0)


def default_count_tokens(messages: Messages) -> int:
  """Approximate templated length when no tokenizer is injected (a few tokens of framing per message)."""
  return sum(approx_token_count(m["content"]) + 4 for m in messages)


def token_counter(tokenizer, enable_thinking: bool | None = None) -> Callable[[Messages], int]:
  """Exact templated length with a real tokenizer (what the batch will hold for this prompt)."""
  from resd_jax.models.tokenizer import chat_tokens  # noqa: PLC0415
  return lambda messages: len(chat_tokens(tokenizer, messages, enable_thinking=enable_thinking))


def _slot_texts(sample: GradedSample, playbook_text: str, reflection: str, solution: str | None,
                cfg: TeacherContextConfig) -> dict[str, str]:
  texts = {}
  if cfg.use_playbook and playbook_text:
    texts["playbook"] = playbook_text
  if cfg.use_attempt:
    texts["attempt"] = clip_middle(strip_reasoning(sample.response_text).strip(), cfg.max_attempt_chars)
  if cfg.use_solution and solution:
    texts["solution"] = clip_middle(strip_reasoning(solution).strip(), cfg.max_solution_chars)
  feedback = sample.grade.feedback.strip()
  if cfg.use_feedback and feedback and not ("solution" in texts and cfg.feedback_only_without_solution):
    texts["feedback"] = clip_middle(feedback, cfg.max_feedback_chars)
  if cfg.use_reflection and reflection:
    texts["reflection"] = clip_middle(reflection, cfg.max_reflection_chars)
  return {k: v for k, v in texts.items() if v}


def _compose(student: Messages, texts: dict[str, str], template: str) -> tuple[Messages, tuple[str, ...]]:
  """Teacher messages for the given slot texts, or the student messages when nothing informative is present."""
  if not any(k in texts for k in INFORMATIVE_SLOTS):
    return [dict(m) for m in student], ()
  headings = prompts.TEACHER_HEADINGS[template]
  order = [k for k in headings if k in texts]
  last_user = max(i for i, m in enumerate(student) if m.get("role") == "user")
  parts = [student[last_user]["content"]] + [f"{headings[k]}\n{texts[k]}" for k in order]
  parts.append(prompts.TEACHER_CLOSING[template])
  out = [dict(m) for m in student]
  out[last_user] = {**student[last_user], "content": "\n\n".join(parts)}
  return out, tuple(order)


def solution_for(samples: Sequence[GradedSample], i: int, known_before: str | None,
                 cfg: TeacherContextConfig) -> str | None:
  """The solution sample `i` may show its teacher, in order of preference: its own response when it succeeded
  and `self_success` is on; the last successful sibling (same example id, another sample of this batch); the
  solution known before this batch (`UpdateResult.solutions_before[i]`), unless `use_buffer` is off (the
  reference's SDPO keeps no buffer: a solution must come from the same step)."""
  own = samples[i]
  if cfg.self_success and own.grade.success:
    return own.response_text
  siblings = [s.response_text for j, s in enumerate(samples)
              if j != i and s.grade.success and s.example.id == own.example.id]
  if siblings:
    return siblings[-1]
  return known_before if cfg.use_buffer else None


def build_teacher_context(sample: GradedSample, playbook: Playbook, reflection: str, solution: str | None,
                          cfg: TeacherContextConfig,
                          count_tokens: Callable[[Messages], int] = default_count_tokens,
                          metrics: Metrics | None = None) -> TeacherContext:
  """Teacher messages + sd_mask for one sample (see module docstring for the layout and length rule)."""
  metrics = metrics if metrics is not None else Metrics()
  student = list(sample.example.messages)
  if not any(m.get("role") == "user" for m in student):
    raise ValueError(f"example {sample.example.id!r} has no user message to build a teacher prompt from")
  order = playbook.lowest_value_order() if cfg.use_playbook else []

  def attempt(keep: int) -> tuple[Messages, tuple[str, ...]]:
    kept = playbook.subset(e.id for e in order[len(order) - keep:]) if keep else None
    texts = _slot_texts(sample, kept.render() if kept else "", reflection, solution, cfg)
    return _compose(student, texts, cfg.template)

  messages, slots = attempt(len(order))
  dropped, overlong = 0, False
  if slots and count_tokens(messages) > cfg.max_prompt_tokens:
    lo, hi = 0, len(order) - 1  # largest number of kept entries that fits, if any
    best = None
    while lo <= hi:
      mid = (lo + hi) // 2
      cand = attempt(mid)
      if count_tokens(cand[0]) <= cfg.max_prompt_tokens:
        best, lo = (mid, cand), mid + 1
      else:
        hi = mid - 1
    if best is None:
      messages, slots, overlong, dropped = [dict(m) for m in student], (), True, len(order)
    else:
      dropped = len(order) - best[0]
      messages, slots = best[1]
  sd = int(any(s in INFORMATIVE_SLOTS for s in slots))
  metrics.add("teacher/sd_mask", sd)
  metrics.add("teacher/playbook_entries_dropped", dropped)
  metrics.add("teacher/overlong_dropped", overlong)
  return TeacherContext(messages, sd, slots, dropped, overlong)
