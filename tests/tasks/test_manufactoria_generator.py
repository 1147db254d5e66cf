"""Manufactoria Has generator: parameter space, labels, reproducibility, split, and reference factories."""
import collections
import itertools
import random
import re

import pytest

from resd_jax.tasks.manufactoria import generator
from resd_jax.tasks.manufactoria.dsl import parse
from resd_jax.tasks.manufactoria.reference import reference_program
from resd_jax.tasks.manufactoria.simulator import passes, run


@pytest.fixture(scope="module")
def problems():
  return generator.generate(seed=0)


@pytest.fixture(scope="module")
def programs(problems):
  return {p.id: parse(reference_program(p)) for p in problems}


def _oracle(problem, tape):
  """An independent statement of each family's rule."""
  if problem.family == "contains_substring":
    return re.search(re.escape(problem.params), tape) is not None
  if problem.family == "contains_ordered":
    return re.search(".*".join(problem.params), tape) is not None
  counts = collections.Counter(tape)
  return all(counts[c] >= n for c, n in problem.params)


def test_full_parameter_space(problems):
  by_family = collections.Counter(p.family for p in problems)
  assert by_family == {"contains_substring": 340, "contains_ordered": 340, "contains_count": 194}
  assert len({p.id for p in problems}) == 874
  # count family: every vector of per-colour counts with 1-3 non-zero entries and total <= 6
  vectors = [v for v in itertools.product(range(7), repeat=4) if 1 <= sum(x > 0 for x in v) <= 3 and sum(v) <= 6]
  got = {tuple(dict(p.params).get(c, 0) for c in "RBYG") for p in problems if p.family == "contains_count"}
  assert got == set(vectors) and len(vectors) == 194


def test_every_problem_is_solved_by_its_reference_and_has_both_labels(problems, programs):
  for p in problems:
    labels = [t["expected_accepted"] for t in p.tests]
    assert True in labels and False in labels, p.id
    assert 3 <= len(p.tests) <= 35 and p.tests[0]["input"] == "", p.id
    assert len({t["input"] for t in p.tests}) == len(p.tests), p.id
    prog = programs[p.id]
    for t in p.tests:
      assert t["expected_accepted"] == _oracle(p, t["input"]), (p.id, t)
      assert t["check_output"] is False and set(t["input"]) <= set("RBYG")
      assert passes(run(prog, t["input"]), t), (p.id, t)


def test_reference_factories_agree_with_rule_on_all_short_tapes(problems, programs):
  tapes = ["".join(s) for k in range(6) for s in itertools.product("RBYG", repeat=k)]
  for p in random.Random(1).sample(problems, 40):
    for tape in tapes:
      assert run(programs[p.id], tape).finished == _oracle(p, tape), (p.id, tape)


def test_label_balance_is_like_the_public_set(problems):
  for family in generator.FAMILIES:
    fracs = [sum(t["expected_accepted"] for t in p.tests) / len(p.tests) for p in problems if p.family == family]
    assert 0.2 < sum(fracs) / len(fracs) < 0.5, family


def test_reproducible_from_seed(problems):
  again = generator.generate(seed=0)
  assert [(p.id, p.tests) for p in again] == [(p.id, p.tests) for p in problems]
  other = generator.generate(seed=1)
  assert [p.id for p in other] == [p.id for p in problems]
  assert sum(a.tests != b.tests for a, b in zip(other, problems)) > 800
  # a problem's tests do not depend on which other problems are generated
  alone = generator.generate(seed=0, families=("contains_ordered",))
  assert {p.id: p.tests for p in alone}.items() <= {p.id: p.tests for p in problems}.items()


def test_split_rule(problems):
  train, test = generator.split(problems, seed=42)
  assert (len(train), len(test)) == (742, 132) == (int(874 * 0.85), 874 - int(874 * 0.85))
  assert {p.id for p in train}.isdisjoint({p.id for p in test})
  assert [p.id for p in generator.split(generator.generate(seed=5), seed=42)[1]] == [p.id for p in test]
  assert [p.id for p in generator.split(problems, seed=7)[1]] != [p.id for p in test]
  assert len({p.family for p in test}) == 3


@pytest.mark.parametrize("family, params, pid, name, criteria_part", [
    ("contains_count", (("R", 6),), "has-count-R6", "At least 6 Rs", "at least 6 rs;"),
    ("contains_count", (("Y", 1),), "has-count-Y1", "At least 1 Y", "at least 1 y;"),
    ("contains_count", (("B", 2), ("G", 1)), "has-count-B2-G1", "Need 2 Bs and 1 G", "at least 2 bs and at least 1 g;"),
    ("contains_ordered", "RYB", "has-ordered-RYB", "Contains RYB", "RYB in this order"),
    ("contains_substring", "GG", "has-substring-GG", "Contains 'GG'", "substring 'GG'"),
])
def test_names_and_criteria(family, params, pid, name, criteria_part):
  p = generator.make_problem(family, params)
  assert (p.id, p.name) == (pid, name) and criteria_part in p.criteria


def test_unknown_family_is_rejected():
  with pytest.raises(ValueError, match="unknown Manufactoria family 'contains_blue'"):
    generator.predicate("contains_blue", "B")
