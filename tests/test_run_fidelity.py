"""Run-level fidelity switches, each both ways (docs/FIDELITY.md): GRPO's std and aggregation, the last partial
outer batch, best@n exact vs bootstrap, and the checkpoint kept as best (mean@n metric vs the rank rule)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resd_jax import checkpointing as ck
from resd_jax import evaluation as ev
from resd_jax.loop import outer_batches
from resd_jax.rl import grpo


def test_group_advantages_sample_vs_population_std():
  r = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
  for ddof in (0, 1):
    got = np.asarray(grpo.group_advantages(jnp.asarray(r), 4, ddof=ddof, eps=0.0))
    g = r.reshape(2, 4)
    want = ((g - g.mean(1, keepdims=True)) / g.std(1, ddof=ddof, keepdims=True)).reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  # Group of one (the reference's rule under ddof=1): mean 0, std 1, so the advantage is the reward.
  np.testing.assert_allclose(grpo.group_advantages(jnp.asarray([0.7, 0.2]), 1, ddof=1, eps=0.0), [0.7, 0.2])
  with pytest.raises(ValueError, match="std_ddof"):
    grpo.GRPOConfig(std_ddof=2)


def test_grpo_aggregation_token_vs_sequence_mean():
  values = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]], jnp.float32)
  s, c = grpo.aggregate(values, mask, "token_mean")
  assert float(s / c) == pytest.approx(8.0 / 5.0)
  s, c = grpo.aggregate(values, mask, "seq_mean")
  assert float(s / c) == pytest.approx((1.0 + 4.0) / 2.0)


@pytest.mark.parametrize("drop_last,sizes", [(False, [3, 3, 1]), (True, [3, 3])])
def test_last_partial_outer_batch(drop_last, sizes):
  batches = outer_batches(list(range(7)), 3, drop_last)
  assert [len(b) for b in batches] == sizes
  assert sum(batches, []) == list(range(sum(sizes)))  # file order, nothing repeated
  if drop_last:
    with pytest.raises(ValueError, match="drop_last leaves no outer batch"):
      outer_batches([0, 1], 3, drop_last)
  else:
    assert outer_batches([0, 1], 3, drop_last) == [[0, 1]]


def test_best_at_n_exact_and_bootstrap():
  v = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  exact = ev.summarize(v, v)["per_task/best@n"]
  boot = ev.summarize(v, v, best_of="bootstrap", num_resamples=20000, seed=3)["per_task/best@n"]
  assert exact == 1.0
  # With replacement, 4 draws from {0, 1, 0, 0} miss the 1 with probability (3/4)^4.
  assert boot == pytest.approx((1 - 0.75 ** 4 + 1.0) / 2, abs=0.01)
  with pytest.raises(ValueError, match="best_of"):
    ev.summarize(v, v, best_of="max")


def _state(step):
  return {"params": {"w": jnp.full((2,), float(step))}}


def test_checkpoint_best_rule_rank_vs_metric(tmp_path):
  # mean@n peaks at step 2; the rank rule (all four metrics) prefers step 3, whose best@n values are higher.
  history = {}
  rows = {1: (0.1, 0.2, 0.1, 0.2), 2: (0.5, 0.5, 0.5, 0.5), 3: (0.45, 0.9, 0.5, 0.9), 4: (0.1, 0.1, 0.1, 0.1)}
  rank_cfg = ml_collections.ConfigDict({"checkpoint": {"best_rule": "rank", "best_metric": "per_task/mean@n"}})
  metric_cfg = ml_collections.ConfigDict({"checkpoint": {"best_rule": "metric", "best_metric": "per_task/mean@n"}})
  by_rank = ck.Checkpointer(tmp_path / "rank", keep=1, best_metric=ev.kept_best_metric(rank_cfg))
  by_metric = ck.Checkpointer(tmp_path / "metric", keep=1, best_metric=ev.kept_best_metric(metric_cfg))
  for step, vals in rows.items():
    history[str(step)] = dict(zip(ev.RANK_METRICS, vals))
    by_rank.save(step, _state(step), {}, metrics=ev.rank_best_marker(history, step))
    by_metric.save(step, _state(step), {}, metrics=history[str(step)])
  assert ev.rank_rule({int(s): v for s, v in history.items()})[0] == 3
  assert by_rank.steps() == [3, 4] and by_rank.best_step() == 3
  assert by_metric.steps() == [2, 4] and by_metric.best_step() == 2
  by_rank.close()
  by_metric.close()


def test_merge_pairs_combines_a_max_by_max():
  from resd_jax import metrics as mx
  acc = {}
  mx.merge_pairs(acc, {"train/logprob_diff_max": (0.3, 1), "train/loss": (1.0, 2)})
  mx.merge_pairs(acc, {"train/logprob_diff_max": (0.1, 1), "train/loss": (2.0, 1)})
  assert acc == {"train/logprob_diff_max": (0.3, 1), "train/loss": (3.0, 3)}
  assert mx.reduce_metrics(acc)["train/logprob_diff_max"] == 0.3
