"""ContextUpdater end to end with a scripted generate_text."""
import re

import pytest

from resd_jax.context.config import ContextConfig
from resd_jax.context.playbook import Playbook
from resd_jax.context.updater import ContextUpdater
from context_fakes import ScriptedGenerate, ops_json, reflection_json, role_of, sample


def _task_of(conv) -> str:
  return re.search(r"Solve task (\S+)\.", conv[1]["content"]).group(1)


def test_first_update_reflects_curates_and_buffers():
  up = ContextUpdater(ContextConfig(), seed=0)
  gen = ScriptedGenerate(reflect=lambda c: reflection_json(f"bad {_task_of(c)}"),
                         curate=lambda c: ops_json(f"lesson from {_task_of(c)}"))
  batch = [sample("a", False, feedback="test 3 failed"), sample("b", True), sample("c", False),
           sample("a", False)]
  res = up.update(batch, gen, step=1)
  # Call 1: three reflections (empty playbook: no success tagging). Call 2: curation once per failed id.
  assert [[role_of(c) for c in call] for call in gen.calls] == [["reflect"] * 3, ["curate"] * 2]
  assert [_task_of(c) for c in gen.calls[1]] == ["a", "c"]
  refl_prompt = gen.calls[0][0][1]["content"]
  assert "test 3 failed" in refl_prompt and "answer for a" in refl_prompt
  assert "thinking about" not in refl_prompt  # reasoning stripped from the attempt
  assert [(e.id, e.content, e.created_step) for e in up.playbook.entries] == [
    ("err-00001", "lesson from a", 1), ("err-00002", "lesson from c", 1)]
  assert res.reflections[0].startswith("Error: bad a") and res.reflections[1] == ""
  assert res.reflections[3].startswith("Error: bad a")
  assert res.solutions_before == [None] * 4
  assert up.buffer.get("b") == batch[1].response_text and len(up.buffer) == 1
  assert res.metrics["context/curate/added"] == (2.0, 2)
  assert res.metrics["context/playbook/size"] == (2.0, 1)


def test_tags_snapshot_and_unknown_ids():
  up = ContextUpdater(ContextConfig(), seed=0)
  up.playbook.add("others", "old lesson", 0)
  up.playbook.add("others", "other lesson", 0)
  gen = ScriptedGenerate(
    reflect=lambda c: reflection_json("e", [("misc-00001", "harmful"), ("ghost-00077", "helpful")]),
    tag=lambda c: '{"bullet_tags": [{"id": "misc-00002", "tag": "helpful"}, {"id": "misc-00001", "tag": "neutral"}]}',
    curate=lambda c: ops_json(f"new {_task_of(c)}", section="Strategies & Insights"))
  res = up.update([sample("x", False), sample("y", True), sample("y", True), sample("z", False)], gen, step=7)
  # Reflections and success tagging share one generation call; one tagger per successful example id.
  assert [[role_of(c) for c in call] for call in gen.calls] == [["reflect", "reflect", "tag"], ["curate"] * 2]
  a, b = up.playbook.get("misc-00001"), up.playbook.get("misc-00002")
  assert (a.helpful, a.harmful, b.helpful, b.harmful) == (0, 2, 1, 0)
  assert a.last_tagged == 1 and b.last_tagged == 1
  m = res.metrics
  assert m["context/reflect/unknown_ids"] == (2.0, 4) and m["context/success_tag/unknown_ids"] == (0.0, 2)
  # Both curators saw the same snapshot (tags applied, no ADD of this batch yet).
  playbooks = [re.search(r"### Current playbook\n(.*?)\n\n### The task", c[1]["content"], re.S).group(1)
               for c in gen.calls[1]]
  assert playbooks[0] == playbooks[1] == Playbook.parse_rendered(playbooks[0]).render()
  assert "helpful=0 harmful=2 :: old lesson" in playbooks[0] and "new x" not in playbooks[1]
  assert up.playbook.ids()[-2:] == ["str-00003", "str-00004"]  # ops applied in sample order (x then z)
  assert [e.content for e in up.playbook.entries[-2:]] == ["new x", "new z"]


def test_bad_model_output_is_counted_not_raised():
  up = ContextUpdater(ContextConfig(), seed=0)
  gen = ScriptedGenerate(reflect=lambda c: "I refuse {", curate=lambda c: "never called")
  res = up.update([sample("a", False), sample("b", False)], gen, step=1)
  assert len(gen.calls) == 1  # no diagnosis -> no curation call
  assert res.metrics["context/reflect/parse_failed"] == (2.0, 2)
  assert res.metrics["context/curate/skipped_no_reflection"] == (2.0, 2)
  gen2 = ScriptedGenerate(reflect=lambda c: None, curate=lambda c: 12)
  res = up.update([sample("a", False)], gen2, step=2)
  assert res.metrics["context/generate/non_text_outputs"] == (1.0, 1)


def test_generate_text_contract_violation_raises():
  up = ContextUpdater(ContextConfig(), seed=0)
  up.playbook.add("others", "kept", 0)
  before = up.to_json()
  with pytest.raises(ValueError, match="exactly one text per conversation"):
    up.update([sample("a", False)], lambda convs: [], step=1)
  assert up.to_json() == before  # all or nothing: the update count did not move
  with pytest.raises(TypeError, match="ContextConfig"):
    ContextUpdater({"prune_method": "x"}, seed=0)


def test_cap_trigger_after_curation_and_frequency_trigger():
  cfg = ContextConfig(max_entries=3, prune_method="prioritized", prune_every=2)
  up = ContextUpdater(cfg, seed=1)
  gen = ScriptedGenerate(reflect=lambda c: reflection_json("e"), tag=lambda c: '{"bullet_tags": []}',
                         curate=lambda c: ops_json("l1", "l2", "l3", "l4", "l5"))
  res = up.update([sample("a", False)], gen, step=1)
  # Five unused entries > cap 3: prioritized drops all unused ones.
  assert len(up.playbook) == 0 and res.metrics["context/prune/post_triggered"] == (1.0, 1)
  assert up.playbook.next_id == 6
  gen.script["curate"] = lambda c: ops_json("m1")
  res = up.update([sample("a", False)], gen, step=2)  # update 2: frequency trigger (empty playbook, no cap)
  assert res.metrics["context/prune/pre_triggered"] == (1.0, 1)
  assert up.playbook.ids() == ["err-00006"]


def test_budget_evicts_lowest_value_first():
  up = ContextUpdater(ContextConfig(max_playbook_tokens=30), seed=0, count_tokens=lambda s: len(s.split()))
  for i in range(4):
    up.playbook.add("others", f"lesson {i}", 0)
  up.playbook.entries[1].helpful = 3
  up.playbook.entries[3].helpful = 1
  gen = ScriptedGenerate(reflect=lambda c: "no", tag=lambda c: "no", curate=lambda c: "no")
  res = up.update([sample("a", True)], gen, step=1)
  # Rendered size: heading (2 words) + 6 words per entry; 30 words keep 4 entries, so shrink the budget.
  assert len(up.playbook) == 4 and res.metrics["context/playbook/budget_evicted"] == (0.0, 1)
  up.config = ContextConfig(max_playbook_tokens=14)
  res = up.update([sample("a", True)], gen, step=2)
  assert up.playbook.ids() == ["misc-00002", "misc-00004"]  # value 3 and 1 survive; zeros evicted oldest-first
  assert res.metrics["context/playbook/budget_evicted"] == (2.0, 1)


def _run(updater, steps):
  gen = ScriptedGenerate(
    reflect=lambda c: reflection_json("e", [(i, "harmful") for i in re.findall(r"\[(\w+-\d+)\]", c[1]["content"])[:1]]),
    tag=lambda c: '{"bullet_tags": []}',
    curate=lambda c: ops_json(*[f"s{len(c[1]['content']) % 97}-{k}" for k in range(3)]))
  for step in steps:
    updater.update([sample(f"p{step}", False), sample(f"q{step}", step % 2 == 0), sample("r", False)], gen, step)


def test_deterministic_and_resume_exact():
  cfg = ContextConfig(max_entries=4, prune_method="staleness", prune_every=3)
  a, b = ContextUpdater(cfg, seed=5), ContextUpdater(cfg, seed=5)
  _run(a, range(1, 7))
  _run(b, range(1, 4))
  saved = b.to_json()
  c = ContextUpdater(cfg, seed=999)  # the seed comes back from the saved state
  c.load_json(saved)
  _run(c, range(4, 7))
  assert a.to_json() == c.to_json()
  assert a.rng.counter > 0 and len(a.playbook) <= 4
  with pytest.raises(ValueError, match="missing"):
    c.load_state_dict({"playbook": {}})


def test_hostile_unicode_end_to_end():
  """Lone surrogates (JSON escapes and raw), latin-1 bytes kept by surrogateescape, zero-width and bidi
  controls in every model-written text: the update never raises, what it keeps is valid UTF-8, the token
  counter (strict UTF-8 here, like a real tokenizer) and the teacher's chat template see only valid text."""
  from context_fakes import ByteChatTokenizer
  from resd_jax.context.teacher_context import TeacherContextConfig, build_teacher_context, token_counter
  latin1 = "résumé".encode("latin-1").decode("utf-8", "surrogateescape")
  up = ContextUpdater(ContextConfig(), seed=0, count_tokens=lambda s: len(s.encode("utf-8")))
  reflect = lambda c: reflection_json(f"bad\ud800 {_task_of(c)} \udc00\u202e{latin1}\u200b")  # \uXXXX escapes
  curate = lambda c: ("```json\n{\"operations\": [{\"type\": \"ADD\", \"section\": \"others\", \"content\": "
                      "\"lesson \\ud83d\\ude00 \\udfff \u2066x\u2069 \ud800raw\x00\"}]}\n```")
  gen = ScriptedGenerate(reflect=reflect, curate=curate, tag=lambda c: '{"bullet_tags": []}')
  batch = [sample("a", False, feedback="fb \udcff\u202e"), sample("b", False, response="resp \ud800\u2067")]
  res = up.update(batch, gen, step=1)
  for call in gen.calls:  # the reflector / curator prompts were valid text too
    for conv in call:
      for msg in conv:
        msg["content"].encode("utf-8")
  assert res.reflections[0].startswith("Error: bad\ufffd a \ufffdr\ufffdsum\ufffd\n")
  assert [e.content for e in up.playbook.entries] == ["lesson \U0001f600 \ufffd x \ufffdraw"] * 2
  assert res.metrics["context/reflect/cleaned_chars"] == (2 * 6.0, 2)
  assert res.metrics["context/curate/cleaned_chars"] == (2 * 5.0, 2)
  assert res.metrics["context/playbook/tokens"][0] > 0
  up.to_json().encode("utf-8")
  tok = ByteChatTokenizer()
  ctx = build_teacher_context(batch[0], up.playbook, res.reflections[0], None, TeacherContextConfig(),
                              token_counter(tok))
  assert tok.apply_chat_template(ctx.messages) and "\ufffd" in ctx.messages[-1]["content"] + ctx.messages[0]["content"]
