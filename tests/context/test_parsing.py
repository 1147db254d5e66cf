"""Parsing battery: every kind of bad model output gives the right object or a counted skip, never an error."""
import json

import pytest

from resd_jax.context.config import ContextConfig
from resd_jax.context.curation import parse_operations
from resd_jax.context.parsing import as_text, extract_json_object, parse_tag_list, recover_tags
from resd_jax.context.text import approx_token_count, clean_text, clip_middle, one_line
from resd_jax.context.reflection import parse_reflection, parse_success_tags
from resd_jax.context.types import Metrics

CFG = ContextConfig()
GOOD = {"reasoning": "r", "error_identification": "wrong branch", "root_cause_analysis": "rc",
        "correct_approach": "ca", "key_insight": "ki",
        "bullet_tags": [{"id": "err-00001", "tag": "harmful"}, {"id": "str-00002", "tag": "Helpful"}]}


@pytest.mark.parametrize("text, expected, how", [
  ('{"a": 1}', {"a": 1}, "whole"),
  ('  \n{"a": [1, {"b": null}]}\n', {"a": [1, {"b": None}]}, "whole"),
  ('Here you go:\n```json\n{"a": 2}\n```\nHope it helps.', {"a": 2}, "fenced"),
  ('```\n{"a": 3}\n```', {"a": 3}, "fenced"),
  ('```json\n{"a": 1}\n```\nlater\n```json\n{"a": 4}\n```', {"a": 4}, "fenced"),  # last block wins
  ('{"a": 5}\n\nThat is my answer; {note} it.', {"a": 5}, "balanced"),
  ('Sure! {"a": "x } y { z", "b": "\\"}"} done', {"a": "x } y { z", "b": '"}'}, "balanced"),
  ('I { wonder {"a": 6} ok', {"a": 6}, "balanced"),  # stray unclosed brace in prose
  ('{"a": 7, "b": "unfinished', {"a": 7, "b": "unfinished"}, "repaired"),
  ('{"a": 8, "b": [1, 2', {"a": 8, "b": [1, 2]}, "repaired"),
  ('{"a": 9, "b"', {"a": 9}, "repaired"),
  ('{"a": "line1\nline2\ttab\x01"}', {"a": "line1\nline2\ttab"}, "whole"),  # raw controls: dropped
])
def test_extract_cases(text, expected, how):
  got = extract_json_object(text)
  assert got.obj == expected
  assert got.how == how


@pytest.mark.parametrize("text", ["", "no json here", "[1, 2, 3]", "```json\n[1]\n```", "{", "}{", None, 42,
                                  "{{{{" * 1000, '{"a": "\\'])
def test_extract_nothing_is_none_not_error(text):
  got = extract_json_object(text)
  if text == '{"a": "\\':
    assert got.obj == {"a": ""}  # the dangling escape is dropped, the string closed
  else:
    assert got.obj is None and got.how == "none"


def test_prefer_keys_skips_example_objects():
  text = 'For example {"x": 1} is not it, the answer is {"operations": []}.'
  assert extract_json_object(text, prefer_keys=("operations",)).obj == {"operations": []}
  assert extract_json_object(text).obj == {"x": 1}


def test_one_megabyte_of_text_is_bounded():
  junk = "blah { " * (1_000_000 // 7)
  assert len(junk) >= 999_000
  assert extract_json_object(junk + json.dumps(GOOD)).obj == GOOD  # answer at the end: tail window
  assert extract_json_object(json.dumps(GOOD) + "x" * 1_000_000).obj == GOOD  # answer first: head window
  m = Metrics()
  assert parse_reflection("y" * 1_000_000, CFG, m) is None
  assert m["reflect/parse_failed"] == (1.0, 1)


def test_reflection_good_fields_and_tags():
  m = Metrics()
  r = parse_reflection("<think>scratch {\"not\": 1}</think>\n" + json.dumps(GOOD), CFG, m)
  assert r.fields["error_identification"] == "wrong branch"
  assert r.tags == [("err-00001", "harmful"), ("str-00002", "helpful")]
  assert m["reflect/parse_failed"] == (0.0, 1)
  assert "Error: wrong branch" in r.render(1000) and "Key insight: ki" in r.render(1000)
  assert "r" not in r.render(1000).split("\n")[0][:1]  # reasoning is not rendered


def test_reflection_wrong_types_are_counted():
  bad = dict(GOOD, key_insight={"nested": 1}, correct_approach=["a", "b"], root_cause_analysis=3,
             bullet_tags=[{"id": 7, "tag": "helpful"}, {"id": "x", "tag": "great"}, "junk", {"tag": "harmful"},
                          {"id": ["l"], "tag": "helpful"}])
  m = Metrics()
  r = parse_reflection(json.dumps(bad), CFG, m)
  assert "key_insight" not in r.fields
  assert r.fields["correct_approach"] == "a; b" and r.fields["root_cause_analysis"] == "3"
  assert r.tags == [("7", "helpful")]
  assert m["reflect/wrong_type_fields"][0] == 1.0
  assert m["reflect/invalid_tag_items"] == (4.0, 5)


def test_reflection_fallback_recovers_tags_from_broken_json():
  text = ('Analysis... {"reasoning": "it broke because of "quotes", "bullet_tags": [{"id": "err-00003", '
          '"tag": "harmful"}, {"tag": "helpful", "id": "str-00001"}] oops')
  m = Metrics()
  r = parse_reflection(text, CFG, m)
  assert r is not None and r.fields == {}
  assert sorted(r.tags) == [("err-00003", "harmful"), ("str-00001", "helpful")]
  assert m["reflect/tags_recovered_by_fallback"] == (1.0, 1)


def test_success_tags_and_hallucinated_ids_parse():
  m = Metrics()
  tags = parse_success_tags('```json\n{"bullet_tags": [{"id": "zzz-99999", "tag": "helpful"}]}\n```', CFG, m)
  assert tags == [("zzz-99999", "helpful")]  # the parse keeps it; the playbook counts it unknown on apply
  assert parse_success_tags('{"bullet_tags": "all of them"}', CFG, m) == []
  assert parse_success_tags(None, CFG, m) == []


def test_tag_list_forms_and_cap():
  assert parse_tag_list({"a-00001": "HELPFUL", "b-00002": "meh"}) == ([("a-00001", "helpful")], 1)
  pairs, invalid = parse_tag_list([{"id": f"x-{i:05d}", "tag": "neutral"} for i in range(10)], max_tags=4)
  assert len(pairs) == 4 and invalid == 6
  assert parse_tag_list(None) == ([], 0) and parse_tag_list("x") == ([], 1)
  assert recover_tags('"id": "a-00001", "tag": "bogus"') == []
  repeated = [{"id": "a-00001", "tag": "helpful"}, {"id": "a-00001", "tag": "harmful"}]
  assert parse_tag_list(repeated) == ([("a-00001", "helpful")], 1)


def test_as_text():
  assert as_text("  x ", 10) == "x" and as_text(True, 10) == "True" and as_text("abcdef", 3) == "abc"
  assert as_text({"a": 1}, 10) is None and as_text([{"a": 1}], 10) is None


def test_operations_battery():
  m = Metrics()
  text = json.dumps({"reasoning": "r", "operations": [
    {"type": "add", "section": "Common Mistakes To Avoid", "content": "Check\nthe  empty tape."},
    {"type": "ADD", "section": "nonsense", "content": "x"},
    {"type": "ADD", "section": "others", "content": ""},   # empty content: skipped
    {"type": "EXPLODE", "content": "x"},                     # unknown type: skipped
    "not a dict",                                           # skipped
    {"type": "MERGE", "ids": ["a-00001"]},                 # needs two ids: skipped
    {"type": "DELETE", "id": "a-00001"},
  ]})
  ops = parse_operations(text, CFG, m)
  assert [(o.type, o.section, o.content) for o in ops] == [
    ("ADD", "common_mistakes_to_avoid", "Check the empty tape."), ("ADD", "others", "x"), ("DELETE", "others", "")]
  assert ops[2].ids == ("a-00001",)
  assert m["curate/invalid_ops"] == (4.0, 7)
  for bad in ['{"operations": {"type": "ADD"}}', "nothing", '{"reasoning": "no ops"}']:
    assert parse_operations(bad, CFG, m) == []
  assert m["curate/parse_failed"] == (3.0, 4)


def test_operations_capped_per_call():
  cfg = ContextConfig(max_ops_per_call=2)
  m = Metrics()
  ops = parse_operations(json.dumps({"operations": [{"type": "ADD", "content": f"c{i}"} for i in range(5)]}),
                         cfg, m)
  assert len(ops) == 2 and m["curate/invalid_ops"] == (3.0, 5)


# ------------------------------------------------------------------------------------------ hostile Unicode
ZWJ_ZWNJ = "👨\u200d👩\u200d👧 \u0645\u06cc\u200c\u0634\u0648\u062f"
LATIN1_AS_UTF8 = "café ñ".encode("latin-1").decode("utf-8", "surrogateescape")  # "caf\udce9 \udcf1"


@pytest.mark.parametrize("text, expected, changed", [
  ("a\ud800b", "a\ufffdb", 1),                          # lone high surrogate
  ("\udc00x\udfff", "\ufffdx\ufffd", 2),                # lone low surrogates
  ("\ud83d\ude00!", "\U0001f600!", 1),                  # a pair split into two code points: joined
  ("\ude00\ud83d", "\ufffd\ufffd", 2),                  # the same two halves in the wrong order
  ("\ud83d", "\ufffd", 1),                              # a pair cut in half at the end
  (LATIN1_AS_UTF8, "caf\ufffd \ufffd", 2),              # latin-1 bytes kept by surrogateescape
  ("cafÃ© dÃ©jÃ ", "cafÃ© dÃ©jÃ ", 0),                # mojibake is valid text: left alone
  ("\u202eevil\u202c ok", "evil ok", 2),                # bidi override + pop
  ("\u2067isolate\u2069 \u202aemb\u202b", "isolate emb", 4),  # isolates, embeddings
  ("a\u200fb\u200ec\u061c", "a\u200fb\u200ec\u061c", 0),  # RLM / LRM / ALM marks stay
  ("zero\u200bwidth\u2060joiner\ufeff", "zerowidthjoiner", 3),  # ZWSP, WJ, BOM
  (ZWJ_ZWNJ, ZWJ_ZWNJ, 0),                              # ZWJ (emoji family) and ZWNJ (Persian) stay
  ("\x00\x07\x1b[0m\x7f\x9bend", "[0mend", 5),          # C0, DEL, C1 controls
  ("tab\tnew\nline", "tab\tnew\nline", 0),
  ("a\r\nb\rc", "a\nb\nc", 2),                          # CR LF / CR -> LF
  ("a\x0bb\x0cc\x85d\u2028e\u2029f\x1eg", "a\nb\nc\nd\ne\nf\ng", 6),  # the other line breaks -> LF
  ("\uffff\ufdd0\U0010fffe\U0001ffff", "\ufffd" * 4, 4),  # noncharacters
  ("hi\U000e0041\U000e0042\U000e007f", "hi", 3),        # invisible tag characters
  ("日本語 😀 e\u0301 שלום \U0001f1eb\U0001f1f7", "日本語 😀 e\u0301 שלום \U0001f1eb\U0001f1f7", 0),
  ("", "", 0),
])
def test_clean_text_cases(text, expected, changed):
  got, n = clean_text(text)
  assert (got, n) == (expected, changed)
  got.encode("utf-8")  # always valid UTF-8
  assert clean_text(got) == (got, 0)  # idempotent


def test_clean_text_non_strings():
  assert clean_text(None) == ("", 0) and clean_text(b"\xff") == ("", 0)


def test_extract_cleans_json_escapes_and_keys():
  # JSON escapes are valid JSON; json.loads turns "\ud800" into a lone surrogate.
  text = '{"a": "x\\ud800y", "\\udc00k": ["\\u202e", "\\ud83d\\ude00", 3], "n": {"z": "\\u0000"}}'
  assert json.loads(text)["a"] == "x\ud800y"
  got = extract_json_object(text)
  assert got.obj == {"a": "x\ufffdy", "\ufffdk": ["", "\U0001f600", 3], "n": {"z": ""}}
  assert got.cleaned == 4 and got.how == "whole"
  json.dumps(got.obj, ensure_ascii=False).encode("utf-8")
  # raw lone surrogates and latin-1 bytes around a fenced object; controls inside it
  text = f"prose {LATIN1_AS_UTF8}\n```json\n" + '{"a": "\ud800\x1b[1mbold"}' + "\n```"
  got = extract_json_object(text)
  assert got.obj == {"a": "\ufffd[1mbold"} and got.how == "fenced" and got.cleaned == 4


def test_reflection_with_hostile_unicode_is_valid_and_counted():
  bad = dict(GOOD, error_identification="wrong\ud800 branch\u202e", key_insight="\udce9\u200bki",
             bullet_tags=[{"id": "err-00001\ud800", "tag": "harmful"}])
  m = Metrics()
  r = parse_reflection(json.dumps(bad), CFG, m)  # json.dumps writes the surrogates as \ud800 escapes
  assert r.fields["error_identification"] == "wrong\ufffd branch" and r.fields["key_insight"] == "\ufffdki"
  assert r.tags == [("err-00001\ufffd", "harmful")]
  assert m["reflect/cleaned_chars"] == (5.0, 1)
  r.render(1000).encode("utf-8")
  m = Metrics()
  assert parse_reflection(json.dumps(GOOD), CFG, m) is not None and m["reflect/cleaned_chars"] == (0.0, 1)
  m = Metrics()
  tags = parse_success_tags('{"bullet_tags": [{"id": "str-\\udfff1", "tag": "helpful"}]}', CFG, m)
  assert tags == [("str-\ufffd1", "helpful")] and m["success_tag/cleaned_chars"] == (1.0, 1)


def test_fallback_tags_and_operations_are_cleaned():
  pairs = recover_tags('broken {"id": "err-0000\ud8001", "tag": "harmful" ... \x00')
  assert pairs == [("err-0000\ufffd1", "harmful")]
  m = Metrics()
  ops = parse_operations(json.dumps({"operations": [
    {"type": "ADD", "section": "others", "content": "lesson\ud800 \u202eevil\u202c \u200bhidden"},
    {"type": "ADD", "section": "others", "content": "\ud800"}]}), CFG, m)
  assert [o.content for o in ops] == ["lesson\ufffd evil hidden", "\ufffd"]
  assert m["curate/cleaned_chars"] == (5.0, 1)


def test_text_helpers_never_raise_on_lone_surrogates():
  assert one_line("a\ud800\n\u202eb", 100) == "a\ufffd b"
  assert clip_middle("x\udc80" * 50, 40).encode("utf-8")
  assert approx_token_count("\ud800") == 1  # 3 bytes (surrogatepass), rounded up
