"""New BouncingSim-MULTIOBJ scenes (family G) with ground truth from the `pymunk` physics engine.

Only data generation needs this module (and `pip install resd_jax[physics]`); grading needs nothing but the
assert strings stored in each row. Family G (docs/TASKS.md §2.1): no gravity, one static regular-polygon container
(3-6 sides, circumradius 375), small regular-polygon balls (3-6 sides, circumradius 20, rotation disabled),
perfectly elastic frictionless contacts. Easy: 3 balls at 400-600 units/s; medium: 4-5 balls at 600-800.

A scene is kept only if two simulations (dt = 1/3000 and 1/4000 s) agree within 15 units at t = 0.5, 1.0, 1.5
and every ball stays inside the container; otherwise it is redrawn. Everything is seeded: the same
(n, level, seed) gives identical rows.
"""
from __future__ import annotations

import math
import random
from typing import Any

LEVELS = {"easy": dict(difficulty=1, balls=(3, 3), speed=(400.0, 600.0)),
          "medium": dict(difficulty=2, balls=(4, 5), speed=(600.0, 800.0))}
CONTAINER_RADIUS = 375.0
CENTER = (750.0, 750.0)
BALL_RADIUS = 20.0
TIMES = tuple(round(0.1 * k, 2) for k in range(1, 16))  # 0.10 .. 1.50
TOLERANCE = 50.0
DT_FINE, DT_CHECK = 1 / 4000, 1 / 3000
AGREE_TIMES, AGREE_TOL = (0.5, 1.0, 1.5), 15.0


def _pymunk():
  try:
    import pymunk
  except ModuleNotFoundError:
    raise ModuleNotFoundError("BouncingSim scene generation needs pymunk: pip install 'resd_jax[physics]' "
                              "(grading does not need it)") from None
  return pymunk


def polygon(sides: int, radius: float, center: tuple[float, float], angle: float) -> list[tuple[float, float]]:
  """Vertices counter-clockwise, vertex 0 at `angle` from +x."""
  return [(center[0] + radius * math.cos(angle + 2 * math.pi * i / sides),
           center[1] + radius * math.sin(angle + 2 * math.pi * i / sides)) for i in range(sides)]


def random_scene(rng: random.Random, level: str) -> dict[str, Any]:
  """Draw one scene description (no physics yet)."""
  if level not in LEVELS:
    raise ValueError(f"BouncingSim level must be one of {sorted(LEVELS)}, got {level!r}")
  cfg = LEVELS[level]
  sides = rng.randint(3, 6)
  container = {"sides": sides, "radius": CONTAINER_RADIUS, "center": list(CENTER),
               "angle": rng.uniform(0.0, 2 * math.pi / sides)}
  free = CONTAINER_RADIUS * math.cos(math.pi / sides) - BALL_RADIUS - 10.0  # inside the inscribed circle
  n_balls = rng.randint(*cfg["balls"])
  balls: list[dict[str, Any]] = []
  while len(balls) < n_balls:
    r, a = free * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    pos = [CENTER[0] + r * math.cos(a), CENTER[1] + r * math.sin(a)]
    if any(math.dist(pos, b["position"]) < 2 * BALL_RADIUS + 10.0 for b in balls):
      continue
    speed, heading = rng.uniform(*cfg["speed"]), rng.uniform(0, 2 * math.pi)
    k = rng.randint(3, 6)
    balls.append({"sides": k, "radius": BALL_RADIUS, "position": pos,
                  "velocity": [speed * math.cos(heading), speed * math.sin(heading)],
                  "angle": rng.uniform(0.0, 2 * math.pi / k)})
  return {"family": "G", "level": level, "container": container, "balls": balls, "gravity": 0.0}


def simulate(scene: dict[str, Any], times: tuple[float, ...], dt: float) -> list[list[list[float]]]:
  """Ball centres at each time in `times` (sorted ascending), stepping pymunk with a fixed `dt`."""
  pm = _pymunk()
  space = pm.Space()
  space.iterations = 100
  space.gravity = (0.0, 0.0)
  c = scene["container"]
  verts = polygon(c["sides"], c["radius"], tuple(c["center"]), c["angle"])
  for a, b in zip(verts, verts[1:] + verts[:1]):
    wall = pm.Segment(space.static_body, a, b, 0.0)
    wall.elasticity, wall.friction = 1.0, 0.0
    space.add(wall)
  bodies = []
  for ball in scene["balls"]:
    shape_verts = polygon(ball["sides"], ball["radius"], (0.0, 0.0), ball["angle"])
    area = 0.5 * ball["sides"] * ball["radius"] ** 2 * math.sin(2 * math.pi / ball["sides"])
    body = pm.Body(area / 1000.0, float("inf"))  # uniform density; infinite moment = no rotation
    body.position, body.velocity = tuple(ball["position"]), tuple(ball["velocity"])
    shape = pm.Poly(body, shape_verts)
    shape.elasticity, shape.friction = 1.0, 0.0
    space.add(body, shape)
    bodies.append(body)
  out, step = [], 0
  for t in times:
    target = round(t / dt)
    while step < target:
      space.step(dt)
      step += 1
    out.append([[body.position.x, body.position.y] for body in bodies])
  return out


def _inside(scene: dict[str, Any], points: list[list[float]]) -> bool:
  c = scene["container"]
  apothem = c["radius"] * math.cos(math.pi / c["sides"])
  return all(math.dist(p, c["center"]) < apothem + 1e-6 or _in_polygon(scene, p) for p in points)


def _in_polygon(scene: dict[str, Any], p: list[float]) -> bool:
  c = scene["container"]
  verts = polygon(c["sides"], c["radius"], tuple(c["center"]), c["angle"])
  return all((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0
             for a, b in zip(verts, verts[1:] + verts[:1]))


def ground_truth(scene: dict[str, Any]) -> list[list[list[float]]] | None:
  """Positions at TIMES, or None when the scene is numerically unstable or a ball escapes."""
  fine = simulate(scene, tuple(sorted(set(TIMES) | set(AGREE_TIMES))), DT_FINE)
  by_t = dict(zip(sorted(set(TIMES) | set(AGREE_TIMES)), fine))
  check = dict(zip(AGREE_TIMES, simulate(scene, AGREE_TIMES, DT_CHECK)))
  for t in AGREE_TIMES:
    if max(math.dist(p, q) for p, q in zip(by_t[t], check[t])) > AGREE_TOL:
      return None
  if not all(_inside(scene, by_t[t]) for t in TIMES):
    return None
  return [by_t[t] for t in TIMES]


def _f(v: float, nd: int = 2) -> str:
  return f"{0.0 if abs(v) < 0.5 * 10 ** -nd else v:.{nd}f}"


def _shape_name(sides: int) -> str:
  return "circle" if sides <= 2 else f"regular polygon ({sides} sides)"


def scene_prompt(scene: dict[str, Any]) -> str:
  """The user message for a scene: instructions, then the scene description."""
  c, balls = scene["container"], scene["balls"]
  containers = (f"- Container 1: regular polygon with {c['sides']} sides, radius {_f(c['radius'])} m, centre "
                f"({_f(c['center'][0])}, {_f(c['center'][1])}), initial orientation {_f(c['angle'], 3)} rad; "
                f"it neither rotates nor moves.")
  objects = "\n".join(
      f"- Ball {i + 1}: {_shape_name(b['sides'])}, radius {_f(b['radius'])} m, initial position "
      f"({_f(b['position'][0])}, {_f(b['position'][1])}), initial velocity ({_f(b['velocity'][0])}, "
      f"{_f(b['velocity'][1])}) m/s, initial orientation {_f(b['angle'], 3)} rad, no angular velocity."
      for i, b in enumerate(balls))
  return f"""## Polygon Dynamics Prediction

Write a Python function `predict_position(t)` that returns where every ball of the scene below is at time `t`
(seconds). Each call must work out the answer from the initial conditions alone: keep no state between calls.
An exact event-based (closed-form between collisions) computation is better than coarse time stepping.

### Mechanics (general)
- Between collisions bodies follow constant-acceleration kinematics (here: straight lines at constant speed).
- A collision with a wall reflects the velocity: v' = v - 2 (v . n) n, with n the unit normal pointing into
  the container.
- Balls are finite-size polygons: a contact happens when two polygons touch, not when centres meet.
- Ball-ball contacts are elastic too (restitution 1, no friction); masses are proportional to area.
- Units: metres, seconds, radians, metres per second. +X points right, +Y points up.

### Constraints
- Implement only `predict_position(t)`; no code or globals outside the function.
- Do not import anything except `math`. No input/output, printing or randomness.
- Round every coordinate with `round(v, 2)` and turn -0.0 into 0.0.

### Verification and output contract
- Return `[[x1, y1], [x2, y2], ...]`, one pair per ball in the order listed below.
- Every call is checked independently at several times; collisions with walls will be tested.

### Scene description
#### Containers
{containers}

#### Objects
{objects}

### Physics
- Gravity: none (treated as zero).

### Dynamics
- No additional time-varying mechanisms.

### Conventions for this scene
- "radius" is the circumradius: the distance from the centre to each vertex.
- Orientation is the angle of vertex 0 measured counter-clockwise from +X.
- Vertices are listed counter-clockwise, evenly spaced.
- Balls do not rotate; their orientation stays at its initial value.
- Containers are fixed (kinematic) and never react to collisions.
- Positions are the centres of the polygons.

### Task
There are {len(balls)} balls. Think step by step, then give your reasoning followed by the code in a single
```python block that defines `predict_position(t)`.

### Output
Required signature: `def predict_position(t: float) -> list[list[float]]`.
"""


def make_asserts(positions: list[list[list[float]]], times: tuple[float, ...] = TIMES,
                 tolerance: float = TOLERANCE) -> list[str]:
  """One assert string per time, in the dataset's format."""
  out = []
  for t, pts in zip(times, positions):
    expected = [[round(x, 2), round(y, 2)] for x, y in pts]
    out.append(f"assert check_distance(predict_position({t:.2f}), {expected}) <= {tolerance}")
  return out


def generate_rows(n: int, level: str = "easy", seed: int = 0, max_tries: int = 50) -> list[dict[str, Any]]:
  """`n` rows in the public HF schema (messages, ground_truth, dataset, id, difficulty) plus the scene."""
  if level not in LEVELS:
    raise ValueError(f"BouncingSim level must be one of {sorted(LEVELS)}, got {level!r}")
  rng = random.Random(f"bouncingsim-G-{level}-{seed}")
  rows = []
  for k in range(n):
    for _ in range(max_tries):
      scene = random_scene(rng, level)
      positions = ground_truth(scene)
      if positions is not None:
        break
    else:
      raise RuntimeError(f"no stable BouncingSim scene in {max_tries} tries (level {level}, seed {seed}, row {k})")
    rows.append({"messages": [{"role": "user", "content": scene_prompt(scene)}],
                 "ground_truth": make_asserts(positions), "dataset": "bouncingsim-generated",
                 "id": f"G_{level}_{seed}_{k}", "difficulty": LEVELS[level]["difficulty"],
                 "timestamps": list(TIMES), "tolerance": TOLERANCE, "scene": scene})
  return rows
