"""The task configs select the reference behaviour (docs/FIDELITY.md); the base config keeps the library's own;
each fidelity key reaches the typed configs; a bad value fails in one line."""
import pytest

from resd_jax import config_schema as cs
from resd_jax.configs import load as load_spec

TASKS = [("manufactoria", ""), ("bouncingsim", "easy"), ("bouncingsim", "medium"), ("finer", "")]


def load(name, variant=""):
  return load_spec(f"{name}:{variant}" if variant else name)


def _parts(c, algorithm="resd"):
  """The typed configs a run of `algorithm` gets (step, context engine, teacher context)."""
  import types
  from resd_jax import algorithms
  c.algorithm = algorithm
  run = cs.as_run(c)
  algo = algorithms.get(algorithm)
  return types.SimpleNamespace(step=run.step_config(), context=algo.context_config(run),
                               teacher_context=algo.teacher_context(run))


@pytest.mark.parametrize("name,variant", TASKS)
def test_task_configs_pick_the_reference_behaviour(name, variant):
  c = load(name, variant)
  p = _parts(c)
  d, x = p.step.distill, p.context
  assert (d.jsd_scale, d.renormalize, d.rollout_is, d.is_clip, d.row_mean_over) == (
    False, False, True, 2.0, "all_rows")
  assert (x.budget_eviction, x.prune_keep_recent_harmful, x.prune_every_counts) == (False, False, "completed")
  assert (c.rollout.top_p, c.data.drop_last, c.eval.best_of, c.checkpoint.best_rule) == (
    0.95, True, "bootstrap", "rank")
  assert (p.step.grpo.std_ddof, p.step.grpo.aggregation) == (1, "token_mean")
  assert _parts(c, "sdpo").teacher_context.use_buffer is False
  assert _parts(c, "sdpo_ss").teacher_context.use_buffer is False


def test_per_task_values():
  m, e, md, f = (load(n, v) for n, v in TASKS)
  assert [c.context.prune_method for c in (m, e, md, f)] == ["staleness", "staleness", "prioritized", "staleness"]
  assert (m.distill.eps_max, m.distill.success_weights) == (5.0, False)  # the paper's (the script: None, True)
  assert [c.grpo.partial_credit for c in (m, e, md, f)] == [False, False, False, True]
  assert [c.data.train_limit for c in (m, e, md, f)] == [0, 0, 320, 0]


def test_base_config_keeps_the_library_behaviour():
  c = load("base")
  p = _parts(c)
  d, x = p.step.distill, p.context
  assert (d.jsd_scale, d.renormalize, d.rollout_is, d.row_mean_over) == (True, True, False, "rows_with_tokens")
  assert (x.budget_eviction, x.prune_keep_recent_harmful, x.prune_every_counts) == (True, True, "started")
  assert (c.rollout.top_p, c.data.drop_last, c.eval.best_of, c.checkpoint.best_rule) == (1.0, False, "exact", "metric")
  assert (p.step.grpo.std_ddof, p.step.grpo.aggregation) == (0, "token_mean")
  assert _parts(c, "sdpo").teacher_context.use_buffer is True


@pytest.mark.parametrize("key,value,match", [
  ("distill.is_level", "sequence", "distill.is_level='sequence' is not one of"),
  ("eval.best_of", "max", "eval.best_of"), ("checkpoint.best_rule", "best", "checkpoint.best_rule"),
  ("grpo.std", "unbiased", "grpo.std"), ("distill.row_mean_over", "some", "row_mean_over"),
  ("context.prune_every_counts", "both", "prune_every_counts"), ("grpo.aggregation", "sum", "aggregation")])
def test_bad_fidelity_values_fail_in_one_line(key, value, match):
  c = load("base", "tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(cs.ConfigError, match=match) as info:
    cs.validate(c, n_devices=8)
  assert "\n" not in str(info.value)
