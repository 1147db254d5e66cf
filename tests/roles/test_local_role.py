"""A second, frozen local model plays roles: loaded once (shared by roles naming the same model), on the
policy's mesh, sampled with the role's settings and a per-(step, call) key; the policy is never called."""
import contextlib

import jax
import pytest

from resd_jax.loop import setup as runtime
from resd_jax.parallel import sharding as shd
from resd_jax.roles import roles_from_config
from resd_jax.roles.binding import RoleBindings, load_local_model

pytestmark = pytest.mark.slow  # ~20-50 s: loads a preset and compiles the sampler


def tiny_cfg():
  from tests.algorithms.tiny_run import tiny_config  # one module object per process: tiny_words registers once
  c = tiny_config("resd")
  for name in ("reflector", "curator"):
    r = c.roles[name]
    r.backend, r.model_source, r.model_path, r.max_new_tokens, r.temperature = "local", "preset", "tiny", 6, 0.0
  return c


def test_local_role_model_loaded_once_and_sampled_instead_of_the_policy():
  cfg = tiny_cfg()
  mesh = runtime.make_mesh(cfg)
  loads = []

  def load(c, rc, m):
    loads.append((rc.name, rc.model_source, rc.model_path))
    return load_local_model(c, rc, m)

  def policy():
    raise AssertionError("the policy must not play a local role")

  def mesh_ctx():
    stack = contextlib.ExitStack()
    stack.enter_context(shd.axis_rules(shd.DEFAULT_RULES))
    stack.enter_context(jax.set_mesh(mesh))
    return stack

  roles = RoleBindings(cfg, roles_from_config(cfg), ("reflector", "tagger", "curator"), policy_fn=policy,
                       tokenizer=runtime.load_tokenizer(cfg), key_fn=lambda s, c: jax.random.PRNGKey(1000 * s + c),
                       mesh=mesh, mesh_ctx=mesh_ctx, load_local=load)
  assert loads == [("reflector", "preset", "tiny")]  # the curator names the same model: shared
  model, _ = roles.local[("preset", "tiny")]
  leaf = jax.tree_util.tree_leaves(__import__("flax").nnx.state(model))[0]
  assert leaf.sharding.mesh.shape == mesh.shape  # on the policy's mesh
  conv = [[{"role": "user", "content": "Write a lesson."}]]
  gens = roles.for_step(3)
  first = gens["reflector"](conv)
  metrics = gens["reflector"].take_metrics()
  assert metrics["role/reflector/calls"] == (1.0, 1) and 1 <= metrics["role/reflector/response_tokens"][0] <= 6
  assert roles.for_step(3)["reflector"](conv) == first  # greedy and keyed: replayable
  assert gens["curator"].params.max_new_tokens == 6 and gens["curator"].params.temperature == 0.0
  assert gens["tagger"].model_fn is policy  # the tagger stays on the policy
  d = roles.describe()
  assert d["reflector"]["backend"] == "local" and d["reflector"]["model"] == "preset:tiny"
  assert d["tagger"] == {**d["tagger"], "backend": "policy", "model": "preset:tiny"}
