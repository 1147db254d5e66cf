"""Curation operations: ADD / UPDATE / MERGE / DELETE semantics, extension switch, id counter monotonic."""
import random

from resd_jax.context.config import ContextConfig
from resd_jax.context.curation import Operation, apply_operations, stats_text
from resd_jax.context.playbook import Playbook
from resd_jax.context.prune import prune
from resd_jax.context.types import Metrics

EXT = ContextConfig(curation_extensions=True)


def _pb() -> Playbook:
  pb = Playbook(update_count=4)
  pb.add("strategies_and_insights", "A", 1)
  pb.add("common_mistakes_to_avoid", "B", 1)
  pb.add("common_mistakes_to_avoid", "C", 2)
  pb.entries[0].helpful, pb.entries[1].helpful, pb.entries[1].harmful = 2, 3, 1
  pb.entries[2].harmful, pb.entries[2].last_tagged = 4, 3
  return pb


def test_add_creates_entries_in_order():
  pb, m = _pb(), Metrics()
  apply_operations(pb, [Operation("ADD", "formulas_and_calculations", "D"), Operation("ADD", "others", "E")],
                   step=9, cfg=ContextConfig(), metrics=m)
  assert pb.ids()[-2:] == ["calc-00004", "misc-00005"]
  d = pb.get("calc-00004")
  assert (d.content, d.helpful, d.harmful, d.created_step, d.last_tagged) == ("D", 0, 0, 9, 4)
  assert m["curate/added"] == (2.0, 2)


def test_extensions_off_by_default_are_counted_and_skipped():
  pb, m = _pb(), Metrics()
  before = pb.to_json()
  apply_operations(pb, [Operation("UPDATE", ids=("str-00001",), content="Z"), Operation("DELETE", ids=("str-00001",)),
                        Operation("MERGE", ids=("str-00001", "err-00002"), content="Z")], 9, ContextConfig(), m)
  assert pb.to_json() == before
  assert m["curate/disabled_ops"] == (3.0, 3)


def test_update_rewrites_content_only():
  pb, m = _pb(), Metrics()
  apply_operations(pb, [Operation("UPDATE", ids=("err-00002",), content="B2")], 9, EXT, m)
  e = pb.get("err-00002")
  assert (e.content, e.helpful, e.harmful, e.id) == ("B2", 3, 1, "err-00002")
  assert m["curate/updated"] == (1.0, 1)


def test_delete_and_unknown_ids():
  pb, m = _pb(), Metrics()
  apply_operations(pb, [Operation("DELETE", ids=("str-00001",)), Operation("DELETE", ids=("str-00001",)),
                        Operation("UPDATE", ids=("zzz-00042",), content="x")], 9, EXT, m)
  assert pb.ids() == ["err-00002", "err-00003"]
  assert m["curate/unknown_ids"] == (2.0, 3)  # the second delete and the update hit unknown ids
  assert m["curate/no_effect_ops"] == (2.0, 2)


def test_merge_sums_counters_fresh_id_at_first_place():
  pb, m = _pb(), Metrics()
  apply_operations(pb, [Operation("MERGE", ids=("err-00002", "err-00003", "nope-00009"), content="B+C")],
                   9, EXT, m)
  assert pb.ids() == ["str-00001", "err-00004"]
  e = pb.get("err-00004")
  assert (e.content, e.helpful, e.harmful, e.section, e.last_tagged, e.created_step) == (
    "B+C", 3, 5, "common_mistakes_to_avoid", 4, 9)
  assert m["curate/unknown_ids"] == (1.0, 3)
  # Merging one known id (twice) is no merge.
  apply_operations(pb, [Operation("MERGE", ids=("err-00004", "err-00004"), content="x")], 9, EXT, m)
  assert pb.ids() == ["str-00001", "err-00004"]


def test_merge_without_content_keeps_first_content():
  pb = _pb()
  apply_operations(pb, [Operation("MERGE", ids=("str-00001", "err-00003"))], 9, EXT, Metrics())
  assert pb.entries[0].content == "A" and pb.entries[0].section == "strategies_and_insights"
  assert (pb.entries[0].helpful, pb.entries[0].harmful) == (2, 4)


def test_id_counter_monotonic_across_prunes():
  pb = _pb()
  prune(pb, "reset", None, random.Random(0))
  assert len(pb) == 0
  apply_operations(pb, [Operation("ADD", "others", "new")], 10, ContextConfig(), Metrics())
  assert pb.ids() == ["misc-00004"]  # ids are never reused


def test_stats_text_lists_every_section():
  text = stats_text(_pb())
  assert text.splitlines()[0] == "total entries: 3; high-performing: 0; problematic: 1; unused: 0"
  assert "common_mistakes_to_avoid: 2 entries (helpful 3, harmful 5)" in text
  assert len(text.splitlines()) == 8
