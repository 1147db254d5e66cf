"""The typed run config: one reader of the ConfigDict, one place for defaults, task configs that list only
their deviations from base.py."""
import ast
import dataclasses
import importlib
import pathlib

import pytest

from resd_jax import config_schema as cs
from resd_jax import configs
from resd_jax.configs import base
from resd_jax.run_config import LIBRARY_FIELDS, ConfigError, RunConfig, flatten, known_keys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_schema_and_base_list_the_same_keys():
  assert sorted(known_keys()) == sorted(flatten(base.get_base().to_dict()))


def test_every_value_is_typed_as_declared():
  run = RunConfig.from_dict(configs.load("finer:tiny"))
  assert isinstance(run.rollout.batch_prompts, int) and isinstance(run.train.learning_rate, float)
  assert run.env.task_types == (1, 2, 3, 4, 5, 6) and run.distill.eps_max is None
  assert run.roles.reflector.max_new_tokens == 96 and run.model.enable_thinking is None
  as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(configs.load("finer:tiny").to_dict()).items()}
  assert flatten(run.source()) == as_json  # what checkpoints save as the run's config
  assert dataclasses.replace(run, seed=3).seed == 3 and run.with_(rollout=dict(top_k=5)).rollout.top_k == 5


def test_library_defaults_equal_base():
  """The library dataclasses keep defaults for direct use; each mapped one must be base.py's value."""
  flat = flatten(base.get_base().to_dict())
  wrong = []
  for dotted, fields in LIBRARY_FIELDS.items():
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for field, key in fields.items():
      want = flat[key]
      want = tuple(want) if isinstance(want, list) else want
      if defaults[field] != want:
        wrong.append(f"{name}.{field}={defaults[field]!r} but {key}={want!r}")
  assert not wrong, wrong


@pytest.mark.parametrize("key,value,match", [
    ("rollout.batch_prompts", "8", r"rollout.batch_prompts='8' is not a int; fix --config.rollout.batch_prompts"),
    ("context.playbook", 1, "context.playbook=1 is not a bool"),
    ("env.task_types", "1,2", "env.task_types='1,2' must be a tuple"),
])
def test_wrong_types_fail_in_one_line(key, value, match):
  raw = base.get_base().to_dict()
  section, name = key.split(".")
  raw[section][name] = value
  with pytest.raises(ConfigError, match=match) as info:
    RunConfig.from_dict(raw)
  assert "\n" not in str(info.value)


def test_missing_and_unknown_keys_fail_in_one_line():
  raw = base.get_base().to_dict()
  del raw["engine"]["page_size"]
  with pytest.raises(ConfigError, match="config key 'engine.page_size' is missing; start the config from"):
    RunConfig.from_dict(raw)
  raw = base.get_base().to_dict()
  raw["rollout"]["top_q"] = 1.0
  with pytest.raises(ConfigError, match="unknown config key 'rollout.top_q'; did you mean 'rollout.top_p'"):
    RunConfig.from_dict(raw)


def test_validate_returns_the_typed_config_and_accepts_it_back():
  run = cs.validate(configs.load("manufactoria:tiny"), n_devices=8)
  assert isinstance(run, RunConfig) and cs.validate(run, n_devices=8) is run


def _assignments(fn: ast.FunctionDef) -> list[tuple[str, object, int]]:
  """`c.a.b = <literal>` statements of get_config's unconditional part (not the variants' branches)."""
  out = []
  for node in fn.body:
    targets = node.targets if isinstance(node, ast.Assign) else []
    for t in targets:
      parts = []
      while isinstance(t, ast.Attribute):
        parts.append(t.attr)
        t = t.value
      if isinstance(t, ast.Name) and t.id == "c" and len(parts) == 2:
        try:
          value = ast.literal_eval(node.value)
        except ValueError:
          continue
        out.append((".".join(reversed(parts)), value, node.lineno))
  return out


@pytest.mark.parametrize("name", ["manufactoria", "bouncingsim", "finer", "alfworld"])
def test_task_configs_list_only_deviations(name):
  """Every line of a task config's main body changes a value: none restates what it starts from."""
  src = (ROOT / "resd_jax" / "configs" / f"{name}.py").read_text()
  fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "get_config")
  start = base.get_base() if name == "alfworld" else base.paper_settings(base.get_base())
  flat = flatten(start.to_dict())
  restated = [f"line {line}: {key} = {value!r}" for key, value, line in _assignments(fn)
              if key in flat and flat[key] == value and key != "task.name"]
  assert not restated, f"configs/{name}.py restates base values: {restated}"
