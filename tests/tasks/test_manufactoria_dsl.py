"""Manufactoria DSL: parse errors (message + line) and execution semantics on hand-written factories."""
import pytest

from resd_jax.tasks.manufactoria.dsl import MAX_PROGRAM_CHARS, NodeType, ParseError, parse
from resd_jax.tasks.manufactoria.simulator import LOOP_REASON, MAX_VISITS, output_matches, passes, run

# Accepts tapes whose R count is even, ignoring blue; any Y/G front rejects (no [EMPTY] on a Y front).
EVEN_REDS = """
START start:
    NEXT even
PULLER_RB even:   # inline comment after the colon
    [R] odd
    [B] even
    [EMPTY] done_even
PULLER_RB odd:
    [R] even
    [B] odd
# a full-line comment between nodes
PULLER_YG done_even:
	[EMPTY] end
END end
"""


def _p(text):
  return parse(text)


def test_accepts_and_rejects_known_tapes():
  prog = _p(EVEN_REDS)
  assert set(prog.nodes) == {"start", "even", "odd", "done_even", "end"}
  assert prog.nodes["done_even"].type is NodeType.PULLER_YG
  for tape, accepted in [("", True), ("RR", True), ("RBRB", True), ("BBB", True), ("R", False), ("RRR", False),
                         ("BRB", False)]:
    res = run(prog, tape)
    assert res.finished is accepted, tape
  res = run(prog, "RR")
  assert res.path == ["start", "even", "odd", "even", "done_even", "end"] and res.rejection_reason is None
  res = run(prog, "R")
  assert res.path == ["start", "even", "odd", "NONE"] and res.rejection_reason == "Routed to NONE"


def test_empty_branch_on_unreadable_colour_does_not_consume():
  prog = _p("""START start:
    NEXT rb
PULLER_RB rb:
    [EMPTY] yg
PULLER_YG yg:
    [Y] end
END end""")
  res = run(prog, "YB")
  assert res.finished and res.final_tape == "B"  # Y kept by rb, then pulled by yg
  assert res.path == ["start", "rb", "yg", "end"]
  res = run(prog, "GB")  # G is not consumed by rb; yg consumes it and has no [G] route
  assert not res.finished and res.final_tape == "B" and res.path[-1] == "NONE"


def test_readable_colour_without_route_is_consumed_then_rejected():
  prog = _p("START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nEND end")
  res = run(prog, "BR")
  assert not res.finished and res.final_tape == "R" and res.rejection_reason == "Routed to NONE"


def test_duplicate_condition_first_route_wins():
  prog = _p("START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\n    [R] NONE\nEND end")
  assert run(prog, "R").finished


def test_painters_append_at_the_back():
  prog = _p("""START start:
    NEXT a
PAINTER_RED a:
    NEXT b
PAINTER_BLUE b:
    NEXT c
PAINTER_YELLOW c:
    NEXT d
PAINTER_GREEN d:
    NEXT end
END end""")
  res = run(prog, "GY")
  assert res.finished and res.final_tape == "GYRBYG"


def test_infinite_loop_hits_the_visit_limit_exactly():
  prog = _p("START start:\n    NEXT a\nPAINTER_RED a:\n    NEXT b\nPULLER_RB b:\n    [R] a\nEND end")
  res = run(prog, "")
  assert not res.finished and res.rejection_reason == LOOP_REASON == "Maximum iterations exceeded (possible infinite loop)"
  assert len(res.path) == MAX_VISITS == 1000
  assert res.path[:4] == ["start", "a", "b", "a"]


def test_limit_counts_start_and_terminal_visit():
  # start, p x (k+1), end: k + 3 visits.
  prog = _p("START start:\n    NEXT p\nPULLER_RB p:\n    [R] p\n    [EMPTY] end\nEND end")
  ok = run(prog, "R" * 997)
  assert ok.finished and len(ok.path) == 1000
  over = run(prog, "R" * 998)
  assert not over.finished and over.rejection_reason == LOOP_REASON and len(over.path) == 1000
  assert over.final_tape == ""  # the 1000th visit was p pulling the last R


def test_upper_case_end_target_parses_but_rejects_at_run_time():
  prog = _p("START start:\n    NEXT END\nEND end")
  res = run(prog, "")
  assert not res.finished and res.rejection_reason == "Unknown node: END" and res.path == ["start", "END"]
  res = run(_p("START start:\n    NEXT NONE\nEND end"), "RB")
  assert res.path == ["start", "NONE"] and res.rejection_reason == "Routed to NONE" and res.final_tape == "RB"


def test_fences_tabs_and_comments_in_preprocessing():
  prog = _p("```\n# header comment\nSTART start:\n\tNEXT end  # tab indent\n\n   # indented comment\nEND end\n```")
  assert run(prog, "").finished


@pytest.mark.parametrize("text, message", [
    ("", "Empty program"),
    ("# only a comment\n\n", "Empty program"),
    ("START start:\n    NEXT end", "Program must have an END node"),
    ("END end", "Program must have a START node"),
    ("START start:\n    NEXT x\nEND end", "Line 1: Node 'start' references undefined node 'x'"),
    ("START start:\n    NEXT end\nEND end\nPULLER_RB p:\n    [R] q", "Line 4: Node 'p' references undefined node 'q'"),
    ("START start:\n    NEXT end\nstart start:", "Line 3: Invalid node declaration: start start:"),
    ("START start:\n    NEXT end\nPULLER_RB p: extra", "Line 3: Invalid node declaration: PULLER_RB p: extra"),
    ("START start\n    NEXT end\nEND end", "Line 1: START nodes must have a colon"),
    ("START start:\n    NEXT p\nPULLER_YG p # note: here\nEND end", "Line 3: PULLER_YG nodes must have a colon"),
    ("START start:\n    NEXT end\nEND end:", "Line 3: END nodes should not have a colon"),
    ("START begin:\n    NEXT end\nEND end", "Line 1: START node must have ID 'start'"),
    ("START start:\n    NEXT end\nEND stop", "Line 3: END node must have ID 'end'"),
    ("START start:\n    NEXT end\nSTART start:\n    NEXT end\nEND end", "Line 3: Duplicate node ID: start"),
    ("START start:\n    NEXT p\nPULLER_RB p:\n    [R] end\nPAINTER_RED p:\n    NEXT end\nEND end",
     "Line 5: Duplicate node ID: p"),
    ("START start:\n    NEXT p\nPULLER_RB p:\n    [r] end\nEND end", "Line 4: Invalid puller route format: [r] end"),
    ("START start:\n    NEXT p\nPULLER_RB p:\n    NEXT end\nEND end", "Line 4: Invalid puller route format: NEXT end"),
    ("START start:\n    NEXT p\nPULLER_RB p:\n    [Y] end\nEND end", "Line 4: Invalid condition 'Y' for PULLER_RB"),
    ("START start:\n    NEXT p\nPULLER_YG p:\n    [B] end\nEND end", "Line 4: Invalid condition 'B' for PULLER_YG"),
    ("START start:\n    NEXT a\nPAINTER_RED a:\n    PULLER_RB p:\nEND end", "Line 4: Invalid NEXT route format: PULLER_RB p:"),
    ("START start:\n    [R] end\nEND end", "Line 2: Invalid NEXT route format: [R] end"),
    ("START start:\n    NEXT end\nEND end\n    NEXT start", "Line 4: END nodes cannot have routes"),
    ("START start:\n  NEXT end\nEND end", "Line 1: START node must have exactly one NEXT route"),
    ("START start:\n    NEXT end\n    NEXT end\nEND end", "Line 1: START node must have exactly one NEXT route"),
    ("START start:\n    NEXT a\nPAINTER_BLUE a:\nEND end", "Line 3: PAINTER nodes must have exactly one NEXT route"),
    ("```\nSTART start:\n    NEXT end\nEND end:\n```", "Line 4: END nodes should not have a colon"),
    ("\n\nSTART start:\n    NEXT end\nEND end:", "Line 3: END nodes should not have a colon"),
])
def test_parse_errors(text, message):
  with pytest.raises(ParseError) as e:
    parse(text)
  assert str(e.value) == message


def test_whole_program_checks_run_in_order():
  # No START and a dangling reference: the START check comes first.
  with pytest.raises(ParseError, match="^Program must have a START node$"):
    parse("PULLER_RB p:\n    [R] nowhere")
  with pytest.raises(ParseError, match="^Program must have an END node$"):
    parse("START start:\n    NEXT nowhere")


def test_puller_may_have_no_routes_and_ids_are_case_sensitive():
  prog = parse("START start:\n    NEXT P\nPULLER_RB p:\nPULLER_RB P:\n    [B] p\nEND end")
  res = run(prog, "B")
  assert res.path == ["start", "P", "p", "NONE"]


def test_oversized_program_is_a_parse_error():
  with pytest.raises(ParseError, match="Program too long"):
    parse("# x\n" * (MAX_PROGRAM_CHARS // 4 + 1))


def test_output_check_mode_and_regex_rule():
  prog = _p("START start:\n    NEXT p\nPULLER_RB p:\n    [R] b\n    [EMPTY] end\nPAINTER_BLUE b:\n    NEXT end\nEND end")
  res = run(prog, "RR")
  assert res.finished and res.final_tape == "RB"
  assert passes(res, {"input": "RR", "expected_output": "RB"})  # defaults: check_output, expected_accepted True
  assert not passes(res, {"input": "RR", "expected_output": "RR"})
  assert passes(res, {"input": "RR", "expected_output": "R.", "check_output": True, "expected_accepted": True})
  assert passes(res, {"expected_output": "(RB|BR)", "check_output": True, "expected_accepted": True})
  # expected reject + accepted with a wrong tape counts as a correct rejection
  assert passes(res, {"expected_output": "BBB", "check_output": True, "expected_accepted": False})
  assert not passes(res, {"expected_output": "RB", "check_output": True, "expected_accepted": False})
  assert not passes(res, {"expected_output": "RB", "check_output": False, "expected_accepted": False})
  assert output_matches("R(B", "R(B")  # invalid regex falls back to equality
  assert not output_matches("R(B", "RB")
  assert not output_matches("RB", "RBB") and not output_matches("R+", "RBR")  # full match only
