"""Generator of small ALFRED-style games for the real ALFWorld engine, so that ALFWorld runs with no download.

A game is a PDDL problem over ALFRED's domain (`alfred.pddl`) plus the text grammar (`alfred.twl2`), stored as
`game.tw-pddl` beside a minimal `traj_data.json` and the `initial_state.pddl` it came from, in the layout the
official data uses:

  $ROOT/logic/{alfred.pddl, alfred.twl2}
  $ROOT/json_2.1.1/{train,valid_seen,valid_unseen}/<task>-<Object>-<MRecep>-<Recep>-<scene>/<trial>/

Rooms are small: the receptacles a task needs (target, start place, appliance) plus a few distractors, all
taken from one of the scene layouts shipped with `alfworld` (real receptacle ids and interaction poses), with
objects of types that appear in that scene. `train` and `valid_seen` draw from ALFRED's training scenes,
`valid_unseen` from its test scenes. Every game is solved by the PDDL planner and its walkthrough replayed to
`won=True`; games that fail are redrawn, so each split holds exactly `n_per_type` games per task type.

Everything is a pure function of (seed, n_per_type, splits): the same arguments give byte-identical files.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import random
import shutil
from typing import Any

TASK_TYPES: dict[int, str] = {
  1: "pick_and_place_simple",
  2: "look_at_obj_in_light",
  3: "pick_clean_then_place_in_recep",
  4: "pick_heat_then_place_in_recep",
  5: "pick_cool_then_place_in_recep",
  6: "pick_two_obj_and_place",
}
SPLITS = ("train", "valid_seen", "valid_unseen")
MANIFEST = "resd_generated_games.json"
GENERATOR_VERSION = 2  # bump when the output for a given seed changes
_APPLIANCE = {  # task type -> receptacle type the state change needs (the domain's preconditions)
  "pick_clean_then_place_in_recep": "SinkBasin",
  "pick_heat_then_place_in_recep": "Microwave",
  "pick_cool_then_place_in_recep": "Fridge",
}
_PROPERTY = {  # task type -> VAL_ACTION_OBJECTS key the target object must have
  "pick_clean_then_place_in_recep": "Cleanable",
  "pick_heat_then_place_in_recep": "Heatable",
  "pick_cool_then_place_in_recep": "Coolable",
}
_LAMP = "DeskLamp"
_LAMP_HOLDERS = ("Desk", "SideTable", "Dresser", "Shelf", "CounterTop", "DiningTable", "CoffeeTable")
_EXCLUDED_OBJECTS = {"Box", "HandTowel", "Towel", "ToiletPaper", "ToiletPaperRoll", "PaperTowel"}
_MAX_DRAWS = 40  # planner runs per game before giving up


class GenerationError(RuntimeError):
  """No solvable game could be drawn for a (split, task type)."""


@dataclasses.dataclass(frozen=True)
class Receptacle:
  id: str  # ALFRED id, e.g. "Fridge|+02.00|+00.00|-01.00"
  type: str  # "Fridge"
  loc: str  # ALFRED location id, e.g. "loc|2|-4|90|30"


@dataclasses.dataclass(frozen=True)
class Thing:
  id: str  # ALFRED object id, "Apple|+00.10|+00.90|-01.00"
  type: str
  recep: str  # id of the receptacle holding it


@dataclasses.dataclass(frozen=True)
class GameSpec:
  """Everything needed to write one problem; built by `draw_game`."""
  task_type: str
  object_target: str
  parent_target: str  # "" for look_at_obj_in_light
  toggle_target: str  # "" unless look_at_obj_in_light
  scene: int
  receptacles: tuple[Receptacle, ...]
  things: tuple[Thing, ...]
  agent_loc: str
  goal_text: str

  @property
  def dirname(self) -> str:
    recep = self.parent_target or self.toggle_target
    return f"{self.task_type}-{self.object_target}-None-{recep}-{self.scene}"


def _constants():
  from alfworld.gen import constants  # facts about ALFRED object classes (which can go where, which heat...)
  return constants


def layouts_dir() -> str:
  import alfworld.gen
  return os.path.join(os.path.dirname(alfworld.gen.__file__), "layouts")


def mangle(alfred_id: str) -> str:
  """ALFRED's PDDL-safe spelling of an id: '|' '+' '-' '.' become _bar_ _plus_ _minus_ _dot_."""
  out = alfred_id.replace("|", "_bar_").replace("+", "_plus_").replace("-", "_minus_")
  return out.replace(".", "_dot_")


def _load_scene(scene: int) -> tuple[list[str], dict[str, list[float]]]:
  base = os.path.join(layouts_dir(), f"FloorPlan{scene}")
  with open(base + "-objects.json") as f:
    objects = json.load(f)
  with open(base + "-openable.json") as f:
    receptacles = json.load(f)
  return objects, receptacles


def _recep_type(alfred_id: str) -> str:
  """'SinkBasin' for 'Sink|-01.90|+00.97|-01.50|SinkBasin' (the id is kept: the engine names it sinkbasin 1)."""
  parts = alfred_id.split("|")
  return parts[4] if len(parts) > 4 else parts[0]  # basins: "<Sink|Bathtub>|x|y|z|<Basin type>"


def _scene_numbers(split: str) -> list[int]:
  c = _constants()
  nums = c.TEST_SCENE_NUMBERS if split == "valid_unseen" else c.TRAIN_SCENE_NUMBERS
  return sorted(nums)


def _pickupable_types() -> set[str]:
  c = _constants()
  static = {r for r in c.VAL_RECEPTACLE_OBJECTS if r not in c.MOVABLE_RECEPTACLES}
  types = set().union(*(c.VAL_RECEPTACLE_OBJECTS[r] for r in static))
  return {t for t in types if "Sliced" not in t and t not in _EXCLUDED_OBJECTS}


def _can_contain(recep_type: str, obj_type: str) -> bool:
  return obj_type in _constants().VAL_RECEPTACLE_OBJECTS.get(recep_type, ())


def _fmt(v: float) -> str:
  return f"{v:+06.2f}"


def _loc(pose: list[float]) -> str:
  x, z, rot, horizon = pose
  return f"loc|{round(x * 4)}|{round(z * 4)}|{int(rot) // 90}|{int(horizon)}"


def draw_game(task_type: str, scene: int, rng: random.Random) -> GameSpec | None:
  """One random room for `task_type` in `scene`, or None when the scene lacks what the task needs."""
  c = _constants()
  scene_objects, scene_receps = _load_scene(scene)
  receps: dict[str, tuple[str, list[float]]] = {}  # id -> (type, interaction pose)
  for rid in sorted(scene_receps):
    rtype = _recep_type(rid)
    if rtype in c.VAL_RECEPTACLE_OBJECTS:
      receps[rid] = (rtype, scene_receps[rid])
  by_type: dict[str, list[str]] = {}
  for rid, (rtype, _) in receps.items():
    by_type.setdefault(rtype, []).append(rid)
  pickable = sorted(_pickupable_types() & set(scene_objects))

  need = _APPLIANCE.get(task_type)
  if need and need not in by_type:
    return None
  if task_type == "look_at_obj_in_light":
    holders = [t for t in _LAMP_HOLDERS if t in by_type]
    if _LAMP not in scene_objects or not holders:
      return None
  candidates = pickable
  if task_type in _PROPERTY:
    candidates = [o for o in pickable if o in c.VAL_ACTION_OBJECTS[_PROPERTY[task_type]]]
  if not candidates:
    return None
  obj = rng.choice(candidates)
  homes = sorted(t for t in by_type if _can_contain(t, obj) and t != need)  # where it may start / end
  if not homes:
    return None

  chosen: list[str] = []  # receptacle ids in the room, target first

  def add(rtype: str) -> str:
    free = [r for r in by_type[rtype] if r not in chosen]
    if not free:
      return ""
    rid = rng.choice(free)
    chosen.append(rid)
    return rid

  parent = toggle = ""
  if task_type == "look_at_obj_in_light":
    toggle = _LAMP
    lamp_home = add(rng.choice(holders))
  else:
    parent = rng.choice(homes)
    add(parent)
  if need:
    add(need)
  start_types = [t for t in homes if t != parent]  # never start where the goal is already met
  if not start_types:
    return None
  starts = [add(rng.choice(start_types)) for _ in range(2 if task_type == "pick_two_obj_and_place" else 1)]
  starts = [s for s in starts if s]
  if not starts:
    return None
  others = sorted(set(receps) - set(chosen))
  for rid in rng.sample(others, min(len(others), rng.randint(1, 3))):
    chosen.append(rid)

  used_ids: set[str] = set()

  def place(otype: str, rid: str) -> Thing:
    _, pose = receps[rid]
    while True:
      x = pose[0] + rng.uniform(-0.5, 0.5)
      z = pose[1] + rng.uniform(-0.5, 0.5)
      oid = f"{otype}|{_fmt(x)}|{_fmt(rng.uniform(0.1, 1.5))}|{_fmt(z)}"
      if oid not in used_ids:
        used_ids.add(oid)
        return Thing(oid, otype, rid)

  things = [place(obj, starts[i % len(starts)])
            for i in range(2 if task_type == "pick_two_obj_and_place" else 1)]
  if toggle:
    things.append(place(_LAMP, lamp_home))
  distractor_types = [t for t in pickable if t != obj]
  for otype in rng.sample(distractor_types, min(len(distractor_types), rng.randint(2, 4))):
    homes_here = [r for r in chosen if _can_contain(receps[r][0], otype)]
    if homes_here:
      things.append(place(otype, rng.choice(homes_here)))

  room, seen_locs = [], set()
  for rid in chosen:
    rtype, pose = receps[rid]
    loc = _loc(pose)
    while loc in seen_locs:  # two receptacles seen from one pose: give each its own spot
      loc += "|1"
    seen_locs.add(loc)
    room.append(Receptacle(rid, rtype, loc))
  agent_loc = "loc|start|0|0|0"
  templates = _goal_templates(task_type)
  goal_text = rng.choice(templates).format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower())
  return GameSpec(task_type, obj, parent, toggle, scene, tuple(room), tuple(things), agent_loc, goal_text)


def _goal_templates(task_type: str) -> list[str]:
  """The goal phrasings the official games use (ALFWorld's goal library), so generated goals read alike."""
  from alfworld.gen import goal_library
  return list(goal_library.gdict[task_type]["templates"])


# PDDL goals per task type: ALFRED's goal conditions, written for {obj} / {recep} / {toggle} types.
_GOALS = {
  "pick_and_place_simple":
    "(exists (?r - receptacle) (exists (?o - object) (and (inReceptacle ?o ?r) "
    "(objectType ?o {obj}Type) (receptacleType ?r {recep}Type))))",
  "pick_clean_then_place_in_recep":
    "(exists (?r - receptacle) (exists (?o - object) (and (objectType ?o {obj}Type) "
    "(receptacleType ?r {recep}Type) (isClean ?o) (inReceptacle ?o ?r))))",
  "pick_heat_then_place_in_recep":
    "(exists (?r - receptacle) (exists (?o - object) (and (objectType ?o {obj}Type) "
    "(receptacleType ?r {recep}Type) (isHot ?o) (inReceptacle ?o ?r))))",
  "pick_cool_then_place_in_recep":
    "(exists (?r - receptacle) (exists (?o - object) (and (objectType ?o {obj}Type) "
    "(receptacleType ?r {recep}Type) (isCool ?o) (inReceptacle ?o ?r))))",
  "pick_two_obj_and_place":
    "(exists (?r - receptacle) (exists (?o1 - object) (exists (?o2 - object) (and (not (= ?o1 ?o2)) "
    "(objectType ?o1 {obj}Type) (objectType ?o2 {obj}Type) (receptacleType ?r {recep}Type) "
    "(inReceptacle ?o1 ?r) (inReceptacle ?o2 ?r)))))",
  "look_at_obj_in_light":
    "(and (exists (?t - object) (exists (?r - receptacle) (exists (?a - agent) (exists (?l - location) "
    "(and (objectType ?t {toggle}Type) (toggleable ?t) (isToggled ?t) (inReceptacle ?t ?r) "
    "(receptacleAtLocation ?r ?l) (atLocation ?a ?l)))))) "
    "(exists (?o - object) (exists (?a - agent) (and (objectType ?o {obj}Type) (holds ?a ?o)))))",
}


def problem_pddl(spec: GameSpec, name: str) -> str:
  """The PDDL problem text (`initial_state.pddl`) of a game."""
  c = _constants()
  receps = {r.id: r for r in spec.receptacles}
  rtypes = sorted({r.type for r in spec.receptacles} | {"SinkBasin", "Microwave", "Fridge"})
  otypes = sorted({t.type for t in spec.things} | {"Knife", "ButterKnife"})  # the domain names these
  decl = ["agent1 - agent"]
  decl += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
  decl += [f"{mangle(t.id)} - object" for t in spec.things]
  decl += [f"{mangle(r.id)} - receptacle" for r in spec.receptacles]
  locs = [spec.agent_loc] + [r.loc for r in spec.receptacles]
  decl += [f"{mangle(l)} - location" for l in locs]

  init = [f"(atLocation agent1 {mangle(spec.agent_loc)})"]
  for r in spec.receptacles:
    m = mangle(r.id)
    init.append(f"(receptacleType {m} {r.type}Type)")
    init.append(f"(receptacleAtLocation {m} {mangle(r.loc)})")
    if r.type in c.OPENABLE_CLASS_SET:
      init.append(f"(openable {m})")
  for rt in sorted({r.type for r in spec.receptacles}):
    for ot in sorted({t.type for t in spec.things}):
      if _can_contain(rt, ot):
        init.append(f"(canContain {rt}Type {ot}Type)")
  props = [("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable"),
           ("Toggleable", "toggleable")]
  for t in spec.things:
    m = mangle(t.id)
    init.append(f"(objectType {m} {t.type}Type)")
    init.append(f"(inReceptacle {m} {mangle(t.recep)})")
    init.append(f"(objectAtLocation {m} {mangle(receps[t.recep].loc)})")
    if t.type != _LAMP:
      init.append(f"(pickupable {m})")
    if t.type in c.MOVABLE_RECEPTACLES_SET:
      init.append(f"(isReceptacleObject {m})")
    for key, pred in props:
      if t.type in c.VAL_ACTION_OBJECTS[key]:
        init.append(f"({pred} {m})")
  goal = _GOALS[spec.task_type].format(obj=spec.object_target, recep=spec.parent_target,
                                       toggle=spec.toggle_target)
  lines = [f"(define (problem {name})", "(:domain alfred)", "(:objects", *decl, ")", "(:init", *init, ")",
           f"(:goal {goal})", ")"]
  return "\n".join(lines) + "\n"


def traj_data(spec: GameSpec) -> dict[str, Any]:
  """The minimal `traj_data.json`: what `AlfredTWEnv` and `alfworld-generate` read."""
  return {
    "task_type": spec.task_type,
    "pddl_params": {"object_target": spec.object_target, "parent_target": spec.parent_target,
                    "toggle_target": spec.toggle_target, "mrecep_target": "", "object_sliced": False},
    "scene": {"floor_plan": f"FloorPlan{spec.scene}", "scene_num": spec.scene},
    "turk_annotations": {"anns": [{"task_desc": spec.goal_text[:1].upper() + spec.goal_text[1:] + "."}]},
    "resd_generated": True,
  }


def solve(gamedata: dict[str, Any]) -> list[str] | None:
  """The planner's walkthrough if replaying it wins the game, else None."""
  import textworld
  from textworld.envs import PddlEnv
  from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
  env = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, policy_commands=True)))
  try:
    env.load(gamedata)
    state = env.reset()
    plan = list(state["policy_commands"] or [])
    if not plan:
      return None
    for cmd in plan:
      state, _, done = env.step(cmd)
    return plan if state["won"] else None
  except Exception:  # the planner / grammar rejects the problem: treat as unsolvable, the caller redraws
    return None
  finally:
    env.close()


def logic_paths() -> tuple[str, str]:
  from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
  return ALFRED_PDDL_PATH, ALFRED_TWL2_PATH


def _gamedata(spec: GameSpec, problem: str) -> dict[str, Any]:
  domain_path, grammar_path = logic_paths()
  with open(domain_path) as f:
    domain = f.read()
  with open(grammar_path) as f:
    grammar = f.read().replace("UNKNOWN GOAL", spec.goal_text)
  return {"pddl_domain": domain, "grammar": grammar, "pddl_problem": problem, "solvable": None,
          "walkthrough": None}


def _first_solvable(split: str, task_type: str, k: int, seed: int) -> tuple[GameSpec, str, str, dict]:
  """(spec, trial name, problem, game data with walkthrough) of game `k`: the first seeded draw that solves.
  Draws in scenes lacking what the task needs are cheap and not counted against the planner-run budget."""
  scenes = _scene_numbers(split)
  planner_runs = 0
  for draw in range(_MAX_DRAWS * 25):
    rng = random.Random(f"{seed}/{split}/{task_type}/{k}/{draw}")
    spec = draw_game(task_type, rng.choice(scenes), rng)
    if spec is None:
      continue
    problem = problem_pddl(spec, f"resd_{split}_{task_type}_{k}")
    gamedata = _gamedata(spec, problem)
    plan = solve(gamedata)
    planner_runs += 1
    if plan is not None:
      gamedata["solvable"], gamedata["walkthrough"] = True, plan
      return spec, f"trial_G{seed}_{k:04d}_{draw:03d}", problem, gamedata
    if planner_runs >= _MAX_DRAWS:
      break
  raise GenerationError(f"no solvable {task_type} game for split {split} after {planner_runs} planner runs "
                        f"(seed {seed}); try another seed")


def generate_split(root: str, split: str, task_type: str, n: int, seed: int) -> list[str]:
  """Writes `n` solvable games of one type into `root/json_2.1.1/split`; returns their trial dirs."""
  out = []
  for k in range(n):
    spec, trial, problem, gamedata = _first_solvable(split, task_type, k, seed)
    d = os.path.join(root, "json_2.1.1", split, spec.dirname, trial)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "initial_state.pddl"), "w") as f:
      f.write(problem)
    with open(os.path.join(d, "traj_data.json"), "w") as f:
      json.dump(traj_data(spec), f, indent=1, sort_keys=True)
    with open(os.path.join(d, "game.tw-pddl"), "w") as f:
      json.dump(gamedata, f)
    out.append(d)
  return out


def _manifest_key(n_per_type: int, seed: int, splits: tuple[str, ...], task_types: tuple[str, ...]) -> dict:
  return {"generator_version": GENERATOR_VERSION, "seed": seed, "n_per_type": n_per_type,
          "splits": list(splits), "task_types": list(task_types)}


def ensure_generated_games(root: str, n_per_type: int = 2, seed: int = 0,
                           splits: tuple[str, ...] = SPLITS,
                           task_types: tuple[str, ...] = tuple(TASK_TYPES.values())) -> str:
  """Makes `root` hold exactly the games for (n_per_type, seed, splits, task types); returns `root`.

  Reuses what is there when its manifest matches and every listed game file exists; otherwise wipes the
  generated parts (`json_2.1.1`, `logic`, manifest) and writes them again.
  """
  if n_per_type < 1:
    raise ValueError(f"n_per_type must be >= 1, got {n_per_type}")
  bad = [s for s in splits if s not in SPLITS] + [t for t in task_types if t not in TASK_TYPES.values()]
  if bad:
    raise ValueError(f"unknown split / task type {bad}; splits are {SPLITS}, "
                     f"task types {list(TASK_TYPES.values())}")
  root = os.path.abspath(os.path.expanduser(root))
  key = _manifest_key(n_per_type, seed, tuple(splits), tuple(task_types))
  manifest_path = os.path.join(root, MANIFEST)
  if os.path.exists(manifest_path):
    try:
      with open(manifest_path) as f:
        old = json.load(f)
      if old.get("key") == key and all(os.path.exists(os.path.join(root, g, "game.tw-pddl"))
                                       for g in old.get("games", [])):
        return root
    except (OSError, ValueError):
      pass  # unreadable manifest: regenerate
  for part in ("json_2.1.1", "logic", MANIFEST):
    p = os.path.join(root, part)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)
  os.makedirs(os.path.join(root, "logic"), exist_ok=True)
  for src in logic_paths():
    shutil.copy(src, os.path.join(root, "logic", os.path.basename(src)))
  games = []
  for split in splits:
    for task_type in task_types:
      games += generate_split(root, split, task_type, n_per_type, seed)
  rel = sorted(os.path.relpath(g, root) for g in games)
  counts = {s: len([g for g in rel if g.split(os.sep)[1] == s]) for s in splits}
  with open(manifest_path, "w") as f:
    json.dump({"key": key, "counts": counts, "games": rel}, f, indent=1)
  return root


def tree_digest(root: str) -> str:
  """sha256 over the relative paths and bytes of every generated file: equal digests = identical output."""
  h = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(root, "json_2.1.1", "**", "*"), recursive=True)):
    if os.path.isfile(path):
      h.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()
