"""Teacher context: RESD / SDPO templates, slot switches, sd mask, playbook shrinking under a length budget."""
import dataclasses

import pytest

from context_fakes import sample
from resd_jax.context import prompts
from resd_jax.context.playbook import Playbook
from resd_jax.context.teacher_context import TeacherContextConfig, build_teacher_context, solution_for
from resd_jax.context.types import Metrics

H = prompts.TEACHER_HEADINGS["resd"]
SYSTEM = "You are a careful solver."


def _pb() -> Playbook:
  pb = Playbook()
  for i, (h, d) in enumerate([(0, 0), (5, 0), (1, 3), (2, 0)]):
    e = pb.add("others", f"lesson number {i}", 0)
    e.helpful, e.harmful = h, d
  return pb


def _failed(**kw):
  return sample("t1", False, response="<think>secret plan</think>my answer", feedback="Test 2 failed: got 3",
                system=SYSTEM, **kw)


def test_resd_all_slots_layout():
  s = _failed()
  ctx = build_teacher_context(s, _pb(), "Error: off by one", None, TeacherContextConfig())
  assert ctx.sd_mask == 1 and ctx.slots == ("playbook", "attempt", "feedback", "reflection")
  assert ctx.messages[0] == {"role": "system", "content": SYSTEM}  # system message kept as is
  body = ctx.messages[1]["content"]
  assert body == "\n\n".join([
    "Solve task t1.", H["playbook"] + "\n" + _pb().render(), H["attempt"] + "\nmy answer",
    H["feedback"] + "\nTest 2 failed: got 3", H["reflection"] + "\nError: off by one",
    prompts.TEACHER_CLOSING["resd"]])
  assert "secret plan" not in body


def test_feedback_only_without_solution_and_solution_reasoning_stripped():
  s = _failed()
  ctx = build_teacher_context(s, Playbook(), "", "<think>x</think>good answer", TeacherContextConfig())
  assert ctx.slots == ("attempt", "solution")
  assert H["solution"] + "\ngood answer" in ctx.messages[1]["content"]
  cfg = TeacherContextConfig(feedback_only_without_solution=False)
  assert build_teacher_context(s, Playbook(), "", "sol", cfg).slots == ("attempt", "feedback", "solution")


@pytest.mark.parametrize("switch, gone", [("use_playbook", "playbook"), ("use_attempt", "attempt"),
                                          ("use_feedback", "feedback"), ("use_reflection", "reflection")])
def test_each_slot_switch(switch, gone):
  cfg = TeacherContextConfig(**{switch: False})
  ctx = build_teacher_context(_failed(), _pb(), "Error: e", None, cfg)
  assert gone not in ctx.slots and len(ctx.slots) == 3 and ctx.sd_mask == 1
  assert H[gone] not in ctx.messages[1]["content"]


def test_solution_switch():
  ctx = build_teacher_context(_failed(), Playbook(), "", "sol", TeacherContextConfig(use_solution=False))
  assert ctx.slots == ("attempt", "feedback")


def test_no_informative_slot_means_student_prompt_and_mask_zero():
  s = sample("t1", False, feedback="", system=SYSTEM)  # no feedback, empty playbook, no reflection/solution
  ctx = build_teacher_context(s, Playbook(), "", None, TeacherContextConfig())
  assert ctx.sd_mask == 0 and ctx.slots == () and ctx.messages == list(s.example.messages)
  off = TeacherContextConfig(use_playbook=False, use_feedback=False, use_reflection=False, use_solution=False)
  ctx = build_teacher_context(_failed(), _pb(), "Error", "sol", off)  # only the attempt is on
  assert ctx.sd_mask == 0 and ctx.messages == list(_failed().example.messages)


def test_solution_for_preference_order():
  ok, bad = sample("t", True, response="mine"), sample("t", False)
  sib = sample("t", True, response="sibling")
  other = sample("u", True, response="other id")
  resd, sd, ss = TeacherContextConfig(), TeacherContextConfig.sdpo(), TeacherContextConfig.sdpo(self_success=True)
  assert solution_for([ok], 0, "older", resd) == "mine"
  assert solution_for([ok], 0, "older", sd) == "older"
  assert solution_for([ok], 0, None, ss) == "mine"
  assert solution_for([bad], 0, "older", ss) == "older"
  assert solution_for([ok, bad, other], 1, None, sd) == "mine"  # a successful sibling of the same id
  assert solution_for([ok, sib], 0, None, sd) == "sibling"      # plain SDPO: another rollout, never its own
  assert solution_for([ok, sib], 0, None, ss) == "mine"
  assert solution_for([bad, other], 0, None, sd) is None


def test_sdpo_template():
  sd = TeacherContextConfig.sdpo()
  ctx = build_teacher_context(_failed(), _pb(), "Error: ignored", None, sd)
  assert ctx.slots == ("feedback",) and ctx.sd_mask == 1
  hs = prompts.TEACHER_HEADINGS["sdpo"]
  assert ctx.messages[1]["content"] == "\n\n".join([
    "Solve task t1.", hs["feedback"] + "\nTest 2 failed: got 3", prompts.TEACHER_CLOSING["sdpo"]])
  ok = sample("t2", True, response="<think>r</think>done")
  assert build_teacher_context(ok, _pb(), "", solution_for([ok], 0, None, sd), sd).sd_mask == 0  # plain SDPO
  ss = TeacherContextConfig.sdpo(self_success=True)
  ctx = build_teacher_context(ok, _pb(), "", solution_for([ok], 0, None, ss), ss)  # SDPO+ss distils own success
  assert ctx.slots == ("solution",) and hs["solution"] + "\ndone" in ctx.messages[0]["content"]


def test_config_validation():
  with pytest.raises(ValueError, match="sdpo teacher template has only"):
    TeacherContextConfig(template="sdpo")
  with pytest.raises(ValueError, match="template='x'"):
    TeacherContextConfig(template="x")
  with pytest.raises(ValueError, match="max_prompt_tokens must be > 0"):
    TeacherContextConfig(max_prompt_tokens=0)


def _words(messages):
  return sum(len(m["content"].split()) for m in messages)


def test_shrinks_playbook_lowest_value_first_never_cuts_prompt():
  s = _failed()
  full = build_teacher_context(s, _pb(), "Error: e", None, TeacherContextConfig(), count_tokens=_words)
  n_full = _words(full.messages)
  # Each entry line is 7 words; allow room for two entries less than the full playbook.
  cfg = TeacherContextConfig(max_prompt_tokens=n_full - 14)
  m = Metrics()
  ctx = build_teacher_context(s, _pb(), "Error: e", None, cfg, count_tokens=_words, metrics=m)
  assert _words(ctx.messages) <= cfg.max_prompt_tokens and ctx.playbook_entries_dropped == 2
  kept = Playbook.parse_rendered(ctx.messages[1]["content"].split(H["playbook"] + "\n")[1].split("\n\n")[0])
  assert [(e.helpful, e.harmful) for e in kept.entries] == [(5, 0), (2, 0)]  # values 5 and 2 survive
  assert ctx.messages[1]["content"].startswith("Solve task t1.\n\n") and ctx.sd_mask == 1
  assert m["teacher/playbook_entries_dropped"] == (2.0, 1) and m["teacher/overlong_dropped"] == (0.0, 1)


def test_overlong_without_playbook_drops_sample_from_distillation():
  s = dataclasses.replace(_failed(), response_text="word " * 500)
  m = Metrics()
  ctx = build_teacher_context(s, _pb(), "Error: e", None, TeacherContextConfig(max_prompt_tokens=50),
                              count_tokens=_words, metrics=m)
  assert ctx.overlong and ctx.sd_mask == 0 and ctx.messages == list(s.example.messages)
  assert ctx.playbook_entries_dropped == 4
  assert m["teacher/overlong_dropped"] == (1.0, 1) and m["teacher/sd_mask"] == (0.0, 1)


def test_missing_user_message_is_a_clear_error():
  s = _failed()
  s = dataclasses.replace(s, example=dataclasses.replace(s.example, messages=({"role": "system", "content": "x"},)))
  with pytest.raises(ValueError, match="no user message"):
    build_teacher_context(s, Playbook(), "", None, TeacherContextConfig())
