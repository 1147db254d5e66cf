"""Playbook: ids, sections, render <-> parse, JSON round trip, stats."""
import json

import pytest

from resd_jax.context.playbook import SECTION_KEYS, Playbook, normalize_section
from resd_jax.context.solution_buffer import SolutionBuffer


def _sample_playbook() -> Playbook:
  pb = Playbook()
  pb.add("common_mistakes_to_avoid", "Do not route [EMPTY] to NONE by default.", step=3)
  pb.add("strategies & insights", "Start from the smallest failing test.", step=3)
  pb.add("Code Snippets and Templates", "```python\nx = 1\n```", step=4)  # collapsed to one line
  pb.add("made-up section", "Unicode stays: Δ ≤ ε — ok", step=5)
  pb.entries[0].helpful, pb.entries[0].harmful = 7, 1
  pb.entries[1].harmful = 2
  pb.entries[3].helpful, pb.entries[3].harmful = 1, 1
  return pb


@pytest.mark.parametrize("name, key", [
  ("Strategies & Insights", "strategies_and_insights"), ("common mistakes to avoid", "common_mistakes_to_avoid"),
  ("  FORMULAS_AND_CALCULATIONS ", "formulas_and_calculations"), ("problem-solving heuristics",
                                                                  "problem_solving_heuristics"),
  ("weird", "others"), (None, "others"), (3, "others"), ("", "others")])
def test_normalize_section(name, key):
  assert normalize_section(name) == key


def test_ids_content_and_counter():
  pb = _sample_playbook()
  assert pb.ids() == ["err-00001", "str-00002", "code-00003", "misc-00004"]
  assert pb.entries[2].content == "```python x = 1 ```"
  assert pb.next_id == 5
  assert pb.add("others", "   \n\t ", step=1) is None and pb.next_id == 5  # nothing added, no id burnt
  long = pb.add("others", "word " * 500, step=1, max_chars=50)
  assert len(long.content) == 50 and long.content.endswith("...")


def test_render_format_and_section_order():
  text = _sample_playbook().render()
  assert text == (
    "## STRATEGIES AND INSIGHTS\n"
    "[str-00002] helpful=0 harmful=2 :: Start from the smallest failing test.\n\n"
    "## CODE SNIPPETS AND TEMPLATES\n"
    "[code-00003] helpful=0 harmful=0 :: ```python x = 1 ```\n\n"
    "## COMMON MISTAKES TO AVOID\n"
    "[err-00001] helpful=7 harmful=1 :: Do not route [EMPTY] to NONE by default.\n\n"
    "## OTHERS\n"
    "[misc-00004] helpful=1 harmful=1 :: Unicode stays: Δ ≤ ε — ok")
  assert Playbook().render() == ""


def test_render_parse_render_identity():
  pb = _sample_playbook()
  text = pb.render()
  back = Playbook.parse_rendered(text)
  assert back.render() == text
  assert {e.id: (e.section, e.helpful, e.harmful, e.content) for e in back.entries} == {
    e.id: (e.section, e.helpful, e.harmful, e.content) for e in pb.entries}
  assert back.next_id == 5
  # Noise lines between entries are ignored.
  assert Playbook.parse_rendered("intro\n" + text + "\ntrailing words").render() == text


def test_json_round_trip_exact():
  pb = _sample_playbook()
  pb.update_count = 9
  pb.entries[1].last_tagged = 4
  text = pb.to_json()
  back = Playbook.from_json(text)
  assert back == pb and back.to_json() == text
  assert json.loads(text)["next_id"] == 5


def test_from_dict_errors_are_one_line_and_helpful():
  with pytest.raises(ValueError, match="malformed"):
    Playbook.from_dict({"entries": []})
  bad = _sample_playbook().to_dict()
  bad["entries"][0]["section"] = "nope"
  with pytest.raises(ValueError, match="unknown section 'nope'"):
    Playbook.from_dict(bad)


def test_stats_counts():
  pb = _sample_playbook()
  st = pb.stats()
  # entries: err (7,1) high-performing; str (0,2) problematic; code (0,0) unused; misc (1,1) problematic
  assert (st["total"], st["high_performing"], st["problematic"], st["unused"]) == (4, 1, 2, 1)
  assert st["sections"]["common_mistakes_to_avoid"] == {"count": 1, "helpful": 7, "harmful": 1}
  assert st["sections"]["formulas_and_calculations"] == {"count": 0, "helpful": 0, "harmful": 0}
  assert list(st["sections"]) == list(SECTION_KEYS)


def test_tagging_updates_counters_and_last_tagged():
  pb = _sample_playbook()
  pb.update_count = 6
  assert pb.tag("code-00003", "helpful") and pb.get("code-00003").helpful == 1
  assert pb.get("code-00003").last_tagged == 6
  pb.update_count = 7
  assert pb.tag("code-00003", "neutral") and pb.get("code-00003").last_tagged == 6  # neutral: no change
  assert pb.tag("code-00003", "harmful") and pb.get("code-00003").harmful == 1
  assert not pb.tag("nope-00001", "helpful") and not pb.tag(5, "helpful")


def test_solution_buffer_round_trip():
  buf = SolutionBuffer()
  buf.put("ex-1", "<think>a</think>answer 1", 3)
  buf.put("ex-2", "ünïcode\n```code```", 4)
  buf.put("ex-1", "newer", 5)
  assert buf.get("ex-1") == "newer" and buf.get("missing") is None and len(buf) == 2
  text = buf.to_json()
  back = SolutionBuffer.from_json(text)
  assert back == buf and back.to_json() == text
  with pytest.raises(ValueError, match="malformed"):
    SolutionBuffer.from_dict({"solutions": {"a": {"response": "x"}}})
