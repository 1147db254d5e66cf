"""A worked example of adding an algorithm: everything it takes is this one file.

The toy variant, "reflect-only RESD": failures still get a self-written reflection that the teacher sees, but
there is no playbook (no success tagging, no curation, no playbook slot in the teacher prompt). It subclasses
RESD, overrides three hooks and registers itself; the loop, checkpoints, validation and roles need no change.
"""
import dataclasses
import json

import pytest

from resd_jax import algorithms, config_schema
from resd_jax.algorithms.resd import RESD
from resd_jax.loop import Trainer
from tests.algorithms.tiny_run import tiny_config


class ReflectOnly(RESD):
  name = "toy_reflect_only"

  def used_roles(self, run):
    return ("reflector",)

  def context_config(self, run):
    return dataclasses.replace(run.context_config(), tag_successes=False, curate=False)

  def teacher_context(self, run):
    return dataclasses.replace(super().teacher_context(run), use_playbook=False)


algorithms.register(ReflectOnly())


def test_registered_name_is_a_valid_config_value():
  c = tiny_config("toy_reflect_only")
  run = config_schema.validate(c, n_devices=8)
  assert algorithms.get(run.algorithm) is algorithms.get("toy_reflect_only")
  assert config_schema.used_roles(run) == ("reflector",)
  c.algorithm = "toy_unregistered"
  with pytest.raises(config_schema.ConfigError, match="algorithm='toy_unregistered' is not one of"):
    config_schema.validate(c, n_devices=8)


@pytest.mark.slow
def test_toy_algorithm_trains_through_the_unchanged_loop(tmp_path):
  c = tiny_config("toy_reflect_only", {"train.max_steps": 2, "eval.before_training": False})
  trainer = Trainer(c, tmp_path / "run")
  try:
    assert trainer.teacher_context.use_playbook is False and trainer.teacher_context.use_reflection is True
    summary = trainer.run()
    playbook_entries = len(trainer.updater.playbook)
  finally:
    trainer.close()
  assert (summary.status, summary.step) == ("max_steps", 2)
  roles = json.loads((tmp_path / "run" / "roles.json").read_text())
  assert (roles["reflector"]["used"], roles["tagger"]["used"], roles["curator"]["used"]) == (True, False, False)
  assert playbook_entries == 0  # no curation ever ran
  steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  steps = [m for m in steps if "train/loss" in m]
  assert len(steps) == 2
  assert any("context/role/reflector/calls" in m for m in steps)  # the tiny model fails: it reflects
  assert not any(k.startswith(("context/role/tagger", "context/role/curator")) for m in steps for k in m)
