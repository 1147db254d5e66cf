"""Evaluation metrics against hand-computed values."""
import numpy as np
import pytest

from resd_jax import evaluation as ev
from resd_jax.tasks.base import Example, Grade


def test_mean_and_best_at_n_by_hand():
  # 3 problems x 4 samples.
  task = np.array([[0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]], float)
  case = np.array([[.5, .25, 1, 0], [0, .5, .5, 0], [1, 1, .75, 1]], float)
  m = ev.summarize(task, case)
  assert m["per_task/mean@n"] == pytest.approx(4 / 12)
  assert m["per_task/best@n"] == pytest.approx(2 / 3)
  assert m["per_test_case/mean@n"] == pytest.approx((1.75 + 1.0 + 3.75) / 12)
  assert m["per_test_case/best@n"] == pytest.approx((1 + .5 + 1) / 3)
  assert m["num_problems"] == 3 and m["num_samples"] == 4


def test_best_at_k_unbiased_by_hand():
  # values 0, .5, 1 over n=3; best@2: subsets {0,.5}->.5, {0,1}->1, {.5,1}->1 -> 2.5/3.
  v = np.array([[1.0, 0.0, 0.5]])
  assert ev.best_at_k_unbiased(v, 2)[0] == pytest.approx(2.5 / 3)
  assert ev.best_at_k_unbiased(v, 1)[0] == pytest.approx(0.5)
  assert ev.best_at_k_unbiased(v, 3)[0] == pytest.approx(1.0)
  # pass@k on binary values: 1 - C(n-c, k)/C(n, k) with n=4, c=1, k=2 -> 1 - 3/6.
  assert ev.best_at_k_unbiased(np.array([[0, 1, 0, 0.]]), 2)[0] == pytest.approx(0.5)
  with pytest.raises(ValueError, match="1 <= k <= n"):
    ev.best_at_k_unbiased(v, 4)


def test_best_at_k_bootstrap_close_to_closed_form():
  # With replacement, E[max of k] over {0, 1} with one 1 among n=4: 1 - (3/4)^k.
  v = np.array([[0, 1, 0, 0.]])
  est = ev.best_at_k_bootstrap(v, 2, num_resamples=20000, seed=1)[0]
  assert est == pytest.approx(1 - (3 / 4) ** 2, abs=0.01)
  m = ev.summarize(v, v, ks=(8,), bootstrap=True, seed=0)
  assert m["per_task/best@8"] == pytest.approx(1 - (3 / 4) ** 8, abs=0.03)


def test_rank_rule_by_hand():
  hist = {
      10: dict(zip(ev.RANK_METRICS, (0.1, 0.3, 0.5, 0.6))),  # ranks 3, 2.5, 3, 3 -> 11.5
      20: dict(zip(ev.RANK_METRICS, (0.3, 0.3, 0.6, 0.7))),  # ranks 1, 2.5, 2, 1 -> 6.5
      30: dict(zip(ev.RANK_METRICS, (0.2, 0.4, 0.7, 0.65))),  # ranks 2, 1, 1, 2 -> 6
  }
  best, sums = ev.rank_rule(hist)
  assert sums == {10: 11.5, 20: 6.5, 30: 6.0}
  assert best == 30
  # A tie in rank sums goes to the earlier step.
  tie = {1: dict(zip(ev.RANK_METRICS, (1, 0, 1, 0))), 2: dict(zip(ev.RANK_METRICS, (0, 1, 0, 1)))}
  assert ev.rank_rule(tie)[0] == 1
  with pytest.raises(ValueError, match="missing"):
    ev.rank_rule({1: {"per_task/mean@n": 1.0}})


class _FakeFiner:
  name = "finer"

  def grade(self, ex, text, *, truncated=False):
    right = text.count("x")  # of 4 tags
    # partial_credit=True: reward is the tag fraction; all_correct is the per-task flag.
    return Grade(reward=right / 4, acc=right / 4, info={"all_correct": int(right == 4), "truncated": int(truncated)})


class _FakeBinary:
  name = "manufactoria"

  def grade(self, ex, text, *, truncated=False):
    passed = text.count("x")  # of 2 tests
    return Grade(reward=float(passed == 2), acc=passed / 2)


def _gen(texts):
  return lambda exs, n: [[(t, i == 0) for i, t in enumerate(texts[e.id][:n])] for e in exs]


def test_evaluate_uses_the_task_field_mapping():
  exs = [Example("a", ({"role": "user", "content": "q"},)), Example("b", ({"role": "user", "content": "q"},))]
  texts = {"a": ["xxxx", "xx"], "b": ["x", ""]}
  r = ev.evaluate(_FakeFiner(), exs, _gen(texts), 2)
  np.testing.assert_array_equal(r.per_task, [[1, 0], [0, 0]])
  np.testing.assert_array_equal(r.per_test_case, [[1, .5], [.25, 0]])
  assert r.metrics["per_task/best@n"] == pytest.approx(0.5)
  assert r.info_sums["truncated"] == (2.0, 4)
  texts = {"a": ["xx", "x"], "b": ["", ""]}
  r = ev.evaluate(_FakeBinary(), exs, _gen(texts), 2)
  np.testing.assert_array_equal(r.per_task, [[1, 0], [0, 0]])
  assert r.metrics["per_test_case/mean@n"] == pytest.approx(1.5 / 4)
  assert ev.eval_fields(_FakeBinary()) == ("reward", "acc")
  assert ev.eval_fields(_FakeFiner()) == ("info.all_correct", "acc")
  with pytest.raises(ValueError, match="expected 3"):
    ev.evaluate(_FakeBinary(), exs, _gen({"a": ["x"] * 2, "b": ["x"] * 2}), 3)
