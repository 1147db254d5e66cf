"""ALFWorld on the real engine: generated games are solvable and reproducible; the adapter plays, survives bad
replies and isolates a crashed game. Skipped when the optional `alfworld` extra is not installed."""
import json
import os

import pytest

pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 textworld==1.7.0")
pytest.importorskip("textworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 textworld==1.7.0")

from resd_jax.tasks import base  # noqa: E402
from resd_jax.tasks.alfworld import data, generator  # noqa: E402
from resd_jax.tasks.alfworld.env import AlfworldEnv, AlfworldEnvConfig, AlfworldEnvs  # noqa: E402

SEED = 3


@pytest.fixture(scope="session")
def alf_root(tmp_path_factory):
  """One generated game per task type in `train` (the whole module shares it)."""
  return generator.ensure_generated_games(str(tmp_path_factory.mktemp("alfworld")), n_per_type=1, seed=SEED,
                                          splits=("train",))


@pytest.fixture(scope="session")
def train_games(alf_root):
  return data.list_games(alf_root, "train")


def _walkthrough(gamefile):
  with open(gamefile) as f:
    return json.load(f)["walkthrough"]


def test_layout_and_one_game_per_task_type(alf_root, train_games):
  assert sorted(os.listdir(os.path.join(alf_root, "logic"))) == ["alfred.pddl", "alfred.twl2"]
  types = sorted(data.game_task_type(g) for g in train_games)
  assert types == sorted(generator.TASK_TYPES.values())
  for g in train_games:  # directory name <task>-<Object>-None-<Recep>-<scene> agrees with traj_data.json
    with open(os.path.join(os.path.dirname(g), "traj_data.json")) as f:
      traj = json.load(f)
    task, obj, mrecep, recep, scene = os.path.basename(os.path.dirname(os.path.dirname(g))).split("-")
    params = traj["pddl_params"]
    assert (task, obj, mrecep) == (traj["task_type"], params["object_target"], "None")
    assert recep == (params["parent_target"] or params["toggle_target"]) and int(scene) == traj["scene"]["scene_num"]


def test_every_generated_game_is_won_by_its_walkthrough_and_not_before(train_games):
  """Replays the stored plan on a fresh engine built here (not the generator's own checker)."""
  import textworld
  from textworld.envs import PddlEnv
  from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
  for g in train_games:
    env = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True)))
    env.load(g)
    state = env.reset()
    assert not state["won"]
    plan = _walkthrough(g)
    assert 2 <= len(plan) <= 20
    for i, cmd in enumerate(plan):
      assert cmd in state["admissible_commands"], (g, cmd)
      state, _, _ = env.step(cmd)
      assert state["won"] == (i == len(plan) - 1), (g, i)  # the goal holds after the last step only


def test_generation_is_reproducible_from_the_seed(tmp_path):
  kw = dict(n_per_type=1, splits=("valid_unseen",), task_types=("pick_and_place_simple", "look_at_obj_in_light"))
  a = generator.ensure_generated_games(str(tmp_path / "a"), seed=11, **kw)
  b = generator.ensure_generated_games(str(tmp_path / "b"), seed=11, **kw)
  c = generator.ensure_generated_games(str(tmp_path / "c"), seed=12, **kw)
  assert generator.tree_digest(a) == generator.tree_digest(b) != generator.tree_digest(c)
  # valid_unseen uses ALFRED's test scenes only
  scenes = {int(d.rsplit("-", 1)[1]) for d in os.listdir(os.path.join(a, "json_2.1.1", "valid_unseen"))}
  from alfworld.gen import constants
  assert scenes <= set(constants.TEST_SCENE_NUMBERS)


def test_manifest_reuses_matching_output_and_regenerates_otherwise(tmp_path):
  kw = dict(n_per_type=1, splits=("train",), task_types=("pick_and_place_simple",))
  root = generator.ensure_generated_games(str(tmp_path), seed=5, **kw)
  game = data.list_games(root, "train")[0]
  stamp = os.stat(game).st_mtime_ns
  generator.ensure_generated_games(root, seed=5, **kw)
  assert os.stat(game).st_mtime_ns == stamp  # reused, not rewritten
  generator.ensure_generated_games(root, seed=6, **kw)
  with open(os.path.join(root, generator.MANIFEST)) as f:
    manifest = json.load(f)
  assert manifest["key"]["seed"] == 6 and manifest["counts"] == {"train": 1}
  assert len(data.list_games(root, "train")) == 1
  with pytest.raises(ValueError, match="n_per_type"):
    generator.ensure_generated_games(root, n_per_type=0)
  with pytest.raises(ValueError, match="unknown split / task type.*'dev'"):
    generator.ensure_generated_games(root, splits=("dev",))


def test_adapter_plays_expert_episodes_to_success(train_games):
  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=30))
  states = envs.reset(train_games)
  first_obs = [s.observation for s in states]
  plans = {s.index: _walkthrough(s.gamefile) for s in states}
  assert all(s.task and s.admissible and not s.done for s in states)
  styles = ["{}", "Action: {}", "<think>let me see</think>\n```\n{}\n```", "I will do it.\n> {}"]
  turn = 0
  while envs.live():
    replies = {i: styles[(i + turn) % len(styles)].format(plans[i][states[i].steps]) for i in envs.live()}
    states = envs.step(replies)
    turn += 1
  assert all(s.won and s.done and not s.truncated and s.steps == len(plans[s.index]) for s in states)
  assert all(s.invalid_actions == 0 and s.format_failures == 0 for s in states)
  m = envs.metrics()
  assert m["success"] == (6.0, 6.0) and m["crashed"] == (0.0, 6.0)
  assert all(m[f"success/{t}"] == (1.0, 1.0) for t in generator.TASK_TYPES.values())
  engines = list(envs._engines)
  again = envs.reset(list(reversed(train_games)))  # loaded engines are reused, episodes start afresh
  assert [e is f for e, f in zip(envs._engines, reversed(engines))] == [True] * 6
  assert [s.observation for s in again] == first_obs[::-1]
  assert all(not s.done and s.steps == 0 and not s.won for s in again)
  for i, s in enumerate(again):
    for cmd in _walkthrough(s.gamefile):
      envs.step({i: cmd})
  assert all(s.won for s in envs.states)
  with pytest.raises(ValueError, match="engine_pool"):
    AlfworldEnvConfig(engine_pool=-1)


def test_planner_expert_plan_is_exposed_and_wins(train_games):
  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=30, expert=True))
  state = envs.reset(train_games[:1])[0]
  while not state.done:
    assert state.expert_plan
    state = envs.step([state.expert_plan[0]])[0]
  assert state.won


def test_malformed_replies_get_the_engines_answer_and_the_step_limit_holds(train_games):
  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=5))
  envs.reset(train_games[:2])
  bad = ["Action: fly to the moon", "", "<think>never closed", "\x00\ufffd" * 1000, "x" * 200_000]
  for reply in bad:
    states = envs.step([reply, None])  # slot 1 is skipped every turn
    assert states[0].observation == "Nothing happens."
  s0, s1 = envs.states
  assert s0.done and s0.truncated and not s0.won and s0.steps == 5
  assert s0.invalid_actions == 5 and s0.format_failures == 2
  assert not s1.done and s1.steps == 0 and envs.live() == [1]
  envs.step({0: "look"})  # finished slots ignore further replies
  assert s0.steps == 5
  m = envs.metrics()
  assert m["truncated"] == (1.0, 1.0) and m["invalid_action_rate"] == (5.0, 5.0)
  assert m["format_failure_rate"] == (2.0, 5.0)


def test_a_crashed_game_is_isolated_and_counted(train_games, tmp_path):
  broken = tmp_path / "broken" / "game.tw-pddl"
  broken.parent.mkdir()
  broken.write_text("{not json")
  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=30))
  states = envs.reset([train_games[0], str(broken), train_games[1]])
  assert states[1].crashed and states[1].done and "JSONDecodeError" in states[1].error
  assert envs.live() == [0, 2]

  def explode(command):
    raise RuntimeError("engine blew up")
  envs._engines[2].step = explode  # a failure in the middle of an episode
  plan0 = _walkthrough(train_games[0])
  envs.step({0: plan0[0], 2: "look"})
  assert envs.states[2].crashed and "engine blew up" in envs.states[2].error and not envs.states[0].done
  for cmd in plan0[1:]:
    envs.step({0: cmd})
  assert envs.states[0].won
  m = envs.metrics()
  assert m["crashed"] == (2.0, 3.0) and m["success"] == (1.0, 3.0)


def test_single_env_protocol(train_games):
  env = AlfworldEnv(train_games[0], AlfworldEnvConfig(max_steps=30))
  assert isinstance(env, base.Env)
  with pytest.raises(RuntimeError, match="reset"):
    env.step("look")
  obs = env.reset()
  assert "Your task is to:" in obs and "Welcome" not in obs
  obs, reward, done, info = env.step("Action: dance")
  assert (obs, reward, done, info["feedback"]) == ("Nothing happens.", 0.0, False, "Nothing happens.")
  for cmd in _walkthrough(train_games[0]):
    obs, reward, done, info = env.step(cmd)
  assert done and reward == 1.0 and info["won"] and info["feedback"] == obs


def test_registered_task_lists_games_as_examples(alf_root):
  task = base.make("alfworld", data=alf_root)
  examples = list(task.prompts("train"))
  assert len(examples) == 6 and len({e.id for e in examples}) == 6
  assert all(e.id.startswith("train/") and e.messages[0]["role"] == "system" for e in examples)
  assert list(task.prompts("valid_seen")) == []
  with pytest.raises(ValueError, match="unknown ALFWorld split"):
    list(task.prompts("dev"))
  with pytest.raises(TypeError, match="multi-turn"):
    task.grade(examples[0], "look")


def test_missing_data_errors_name_the_fix(monkeypatch, tmp_path):
  monkeypatch.setattr(data, "_USER_ALFWORLD_DATA", None)
  monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="alfworld-download.*ALFWORLD_DATA.*generated"):
    data.resolve_data_root("official")
  with pytest.raises(FileNotFoundError, match="no json_2.1.1"):
    data.resolve_data_root(str(tmp_path))
  with pytest.raises(ValueError, match="task_types"):
    base.make("alfworld", data=str(tmp_path), task_types=(7,))
