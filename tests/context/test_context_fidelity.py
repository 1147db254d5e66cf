"""The context-engine switches between our behaviour and the reference code's (docs/FIDELITY.md): staleness
pruning of recently tagged harmful entries, the timing of the every-F pruning trigger, the playbook token budget,
and the SDPO solution buffer."""
import random

import pytest

from resd_jax.context.config import ContextConfig
from resd_jax.context.playbook import Entry, Playbook
from resd_jax.context.prune import prune
from resd_jax.context.updater import ContextUpdater
from context_fakes import ScriptedGenerate, ops_json, reflection_json, sample


def _playbook() -> Playbook:
  # (helpful, harmful, last_tagged) at update 10.
  rows = {"err-00001": (0, 2, 10), "err-00002": (1, 4, 9), "err-00003": (0, 1, 3), "err-00004": (0, 0, 10),
          "err-00005": (0, 0, 4), "err-00006": (3, 1, 10)}
  return Playbook([Entry(i, "common_mistakes_to_avoid", f"l {i}", h, d, 0, t) for i, (h, d, t) in rows.items()],
                  next_id=7, update_count=10)


def test_staleness_removes_every_harmful_entry_unless_recent_ones_are_kept():
  pb = _playbook()
  prune(pb, "staleness", None, random.Random(0), keep_recent_harmful=False)  # the reference
  assert pb.ids() == ["err-00004", "err-00006"]  # fresh unused and helpful stay; no harmful entry is left
  pb = _playbook()
  prune(pb, "staleness", None, random.Random(0), keep_recent_harmful=True)  # ours: harmful tagged at 9, 10 stay
  assert pb.ids() == ["err-00001", "err-00002", "err-00004", "err-00006"]


def test_updater_passes_the_harmful_switch():
  for keep, want in ((False, 0), (True, 1)):
    up = ContextUpdater(ContextConfig(prune_method="staleness", prune_every=1, prune_every_counts="started",
                                      prune_keep_recent_harmful=keep), seed=0)
    e = up.playbook.add("others", "bad lesson", 0)
    up.playbook.update_count = 5
    e.harmful, e.last_tagged = 1, 5
    gen = ScriptedGenerate(reflect=lambda c: "no", tag=lambda c: "no", curate=lambda c: "no")
    up.update([sample("a", True)], gen, step=1)  # update 6 prunes first: the entry was tagged one update ago
    assert len(up.playbook) == want


def _prune_updates(counts: str, n: int = 9, every: int = 4) -> list[int]:
  """The updates (1-based) whose start ran the frequency trigger."""
  up = ContextUpdater(ContextConfig(prune_every=every, prune_every_counts=counts, max_entries=100), seed=0)
  gen = ScriptedGenerate(reflect=lambda c: reflection_json("e"), tag=lambda c: "no", curate=lambda c: ops_json("x"))
  fired = []
  for u in range(1, n + 1):
    res = up.update([sample("a", False)], gen, step=u)
    if res.metrics.get("context/prune/pre_triggered", (0, 0))[0]:
      fired.append(u)
  return fired


def test_frequency_trigger_timing():
  # The reference counts completed updates (update_count is bumped at the end of its update): updates 5 and 9.
  assert _prune_updates("completed") == [5, 9]
  assert _prune_updates("started") == [4, 8]
  with pytest.raises(ValueError, match="prune_every_counts"):
    ContextConfig(prune_every_counts="both")


def test_budget_eviction_switch():
  def run(evict: bool) -> int:
    up = ContextUpdater(ContextConfig(max_playbook_tokens=10, budget_eviction=evict, max_entries=100), seed=0,
                        count_tokens=lambda s: len(s.split()))
    for i in range(5):
      up.playbook.add("others", f"lesson number {i}", 0)
    gen = ScriptedGenerate(reflect=lambda c: "no", tag=lambda c: "no", curate=lambda c: "no")
    res = up.update([sample("a", True)], gen, step=1)
    assert res.metrics["context/playbook/budget_evicted"][0] == 5 - len(up.playbook)
    return len(up.playbook)

  assert run(False) == 5   # the reference: no token budget on the playbook itself
  assert run(True) == 1    # ours: 2 heading words + 7 words per entry, 10 words keep one entry


def test_sdpo_without_a_buffer_never_shows_a_solution_from_another_step():
  from resd_jax.context.teacher_context import TeacherContextConfig, build_teacher_context, solution_for
  up = ContextUpdater(ContextConfig(reflect=False, tag_successes=False, curate=False), seed=0)
  gen = ScriptedGenerate()
  first = [sample("a", True, response="<think>x</think>STEP-ONE-SOLUTION"), sample("b", False)]
  up.update(first, gen, step=1)
  second = [sample("a", False, feedback="wrong"), sample("b", False),
            sample("b", True, response="SAME-STEP-SOLUTION")]
  res = up.update(second, gen, step=2)
  for use_buffer in (True, False):
    cfg = TeacherContextConfig.sdpo(use_buffer=use_buffer)
    shown = [build_teacher_context(s, up.playbook, "", solution_for(second, i, res.solutions_before[i], cfg), cfg)
             for i, s in enumerate(second)]
    texts = [m["content"] for c in shown for m in c.messages]
    assert any("STEP-ONE-SOLUTION" in t for t in texts) == use_buffer
    assert "SAME-STEP-SOLUTION" in shown[1].messages[-1]["content"]  # a sibling of this step is always allowed
    assert ("wrong" in shown[0].messages[-1]["content"]) != use_buffer  # feedback only without a solution
