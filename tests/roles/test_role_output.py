"""Role outputs: reasoning split off; outputs cut inside their reasoning are no answer and counted; text made
valid and bounded; the updater counts unclosed reasoning of a plain generator and merges generators' counters."""
import json

from resd_jax.context import ContextConfig, ContextUpdater
from resd_jax.context.types import Metrics
from resd_jax.roles import RoleGenerators
from resd_jax.roles import output

import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "context"))
from context_fakes import ScriptedGenerate, ops_json, reflection_json, sample  # noqa: E402


def test_answer_of_cases():
  assert output.answer_of("<think>plan</think>\n{\"a\": 1}", False) == ('{"a": 1}', "ok")
  assert output.answer_of("<think>plan</think>{\"a\": 1", True) == ('{"a": 1', "truncated")
  assert output.answer_of("<think>still planning {\"a\": 1}", True) == ("", "cut_in_reasoning")
  assert output.answer_of("<think>stopped early", False) == ("", "unclosed_reasoning")
  # the template opened <think> in the prompt: the output carries only the closing tag
  assert output.answer_of("planning...</think>answer", False, opened_in_prompt=True) == ("answer", "ok")
  assert output.answer_of("planning, {\"a\": 1} and more", True, opened_in_prompt=True) == ("", "cut_in_reasoning")
  assert output.answer_of("no reasoning at all", False) == ("no reasoning at all", "ok")
  assert output.prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
  assert not output.prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_sanitize_makes_valid_bounded_text():
  out = output.sanitize("ok \ud800 lone\x00nul\x07bell" + "x" * 50, max_chars=30)
  out.encode("utf-8")  # no lone surrogate left
  assert "\ud800" not in out and "\x00" not in out and "\x07" not in out and out.startswith("ok \ufffd")
  assert len(out) <= 30
  assert output.sanitize(None) == "" and output.sanitize(b"bytes") == "" and output.sanitize(["a"]) == ""
  assert output.sanitize("tab\tand\nnewline") == "tab\tand\nnewline"


def test_plain_generator_cut_in_reasoning_is_no_reflection():
  gen = ScriptedGenerate(reflect=lambda c: "<think>" + reflection_json("err"),  # JSON inside unfinished reasoning
                         curate=lambda c: ops_json("never"))
  upd = ContextUpdater(ContextConfig(), seed=0)
  res = upd.update([sample("a", ok=False, feedback="wrong")], gen, step=1)
  assert res.reflections == [""] and len(upd.playbook) == 0
  assert res.metrics["context/generate/unclosed_reasoning"] == (1.0, 1)
  assert len(gen.calls) == 1  # no reflection, so no curation call


class CountingRole:
  """A generator with its own counters, as the role backends have."""

  def __init__(self, name, answer):
    self.name, self.answer, self.metrics, self.convs = name, answer, Metrics(), []

  def __call__(self, convs):
    self.convs.append(convs)
    self.metrics.add(f"role/{self.name}/calls", len(convs), len(convs))
    return [self.answer(c) for c in convs]

  def take_metrics(self):
    out, self.metrics = dict(self.metrics), Metrics()
    return out


def test_role_generators_split_phases_and_report_counters():
  refl = CountingRole("reflector", lambda c: reflection_json("bad format"))
  tag = CountingRole("tagger", lambda c: json.dumps({"bullet_tags": [{"id": "err-00001", "tag": "helpful"}]}))
  cur = CountingRole("curator", lambda c: ops_json("Check the format first."))
  upd = ContextUpdater(ContextConfig(), seed=0)
  gens = RoleGenerators({"reflector": refl, "tagger": tag, "curator": cur})
  r1 = upd.update([sample("a", ok=False, feedback="wrong")], gens, step=1)
  assert [e.content for e in upd.playbook.entries] == ["Check the format first."]
  assert r1.metrics["context/role/reflector/calls"] == (1.0, 1) and r1.metrics["context/role/curator/calls"] == (1.0, 1)
  assert "context/role/tagger/calls" not in r1.metrics  # nothing to tag yet: the tagger is not called
  entry_id = upd.playbook.entries[0].id
  tag.answer = lambda c: json.dumps({"bullet_tags": [{"id": entry_id, "tag": "helpful"}]})
  r2 = upd.update([sample("b", ok=True), sample("c", ok=False, feedback="no")], gens, step=2)
  assert r2.metrics["context/role/tagger/calls"] == (1.0, 1) and upd.playbook.get(entry_id).helpful == 1
  assert len(refl.convs) == 2 and len(tag.convs) == 1 and len(cur.convs) == 2
  assert "Check the format first." in tag.convs[0][0][-1]["content"]  # the tagger sees the playbook


def test_recording_wraps_each_role_and_keeps_its_counters():
  from resd_jax.analysis.tokens import _recording
  from resd_jax.context import prompts
  refl = CountingRole("reflector", lambda c: "r")
  log = []
  cur = CountingRole("curator", lambda c: "c")
  gens = _recording(RoleGenerators({"reflector": refl, "tagger": refl, "curator": cur}), log)
  conv = [{"role": "system", "content": prompts.REFLECTOR_SYSTEM}, {"role": "user", "content": "u"}]
  assert gens["reflector"]([conv]) == ["r"] and log == [("reflect", "r")]
  assert gens["reflector"].take_metrics() == {"role/reflector/calls": (1.0, 1)}
