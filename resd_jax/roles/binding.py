"""Binding the roles of a run: which generator plays the reflector, the tagger and the curator.

`RoleBindings` is built once per run (a local model is loaded once, shared by the roles that name the same
model, sharded on the policy's mesh and never trained); `for_step(step)` gives the `RoleGenerators` of one
context update. Model-backed roles draw their keys from `key_fn(step, call)` with one call counter per step
shared by all roles (the calls happen in a fixed order: reflector, tagger, curator).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from resd_jax.roles.config import ROLES, RoleConfig
from resd_jax.roles.endpoint import EndpointRole
from resd_jax.roles.engine import EngineRole
from resd_jax.roles.generators import RoleGenerators
from resd_jax.sampling import SamplingParams

log = logging.getLogger(__name__)


def load_local_model(run: Any, rc: RoleConfig, mesh: Any) -> tuple[Any, Any]:
  """(model, tokenizer) of a local role: the run's model loader on a copy of the run config whose `model`
  section points at the role's model (same dtypes, same mesh and sharding rules as the policy; no LoRA)."""
  from resd_jax.loop import setup  # noqa: PLC0415
  if rc.model_source == "preset":  # a different random model than a preset policy
    model = dict(source="preset", preset=rc.model_path, path="", tokenizer="")
    c = run.with_(model=model, lora=dict(enabled=False), seed=run.seed + 1)
  else:
    c = run.with_(model=dict(source=rc.model_source, path=rc.model_path, tokenizer=""), lora=dict(enabled=False))
  tokenizer = setup.load_tokenizer(c)
  return setup.load_model(c, mesh, tokenizer), tokenizer


class RoleBindings:
  """The run's roles. used: the roles the run's phases call (others are bound to nothing and load nothing)."""

  def __init__(self, cfg: Any, roles: dict[str, RoleConfig], used: tuple[str, ...], *, policy_fn: Callable[[], Any],
               tokenizer: Any, key_fn: Callable[[int, int], Any], mesh: Any = None,
               mesh_ctx: Callable[[], Any] | None = None,
               load_local: Callable[[Any, RoleConfig, Any], tuple[Any, Any]] = load_local_model,
               engine: Any = None):
    """engine: the rollout engine's EngineConfig (resd_jax/sampling/engine.py) for model-backed roles."""
    from resd_jax.config_schema import as_run  # noqa: PLC0415
    cfg = as_run(cfg)  # the typed run config (a ConfigDict is read here)
    self.cfg, self.roles, self.used = cfg, roles, tuple(r for r in ROLES if r in used)
    self.engine = engine
    self.policy_fn, self.tokenizer, self.key_fn, self.mesh_ctx = policy_fn, tokenizer, key_fn, mesh_ctx
    self.max_response_len = int(cfg.rollout.max_response_len)
    self.batch_size = int(cfg.rollout.sample_batch)
    self.local: dict[tuple[str, str], tuple[Any, Any]] = {}
    self.endpoints: dict[str, EndpointRole] = {}
    for name in self.used:
      rc = roles[name]
      rc.check_environment()
      if rc.backend == "local" and (rc.model_source, rc.model_path) not in self.local:
        log.info("loading %s:%s to play the %s", rc.model_source, rc.model_path or "-", name)
        self.local[(rc.model_source, rc.model_path)] = load_local(cfg, rc, mesh)
      elif rc.backend == "endpoint":
        self.endpoints[name] = EndpointRole(rc, rc.budget(self.max_response_len))

  def sampling(self, rc: RoleConfig) -> SamplingParams:
    return SamplingParams(temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.budget(self.max_response_len))

  def for_step(self, step: int) -> RoleGenerators:
    calls = [0]

    def next_key():
      calls[0] += 1
      return self.key_fn(step, calls[0])

    gens: dict[str, Any] = {}
    for name in ROLES:
      rc = self.roles[name]
      if name not in self.used:
        gens[name] = _unused(name)
      elif rc.backend == "endpoint":
        gens[name] = self.endpoints[name]
      elif rc.backend == "local":
        model, tok = self.local[(rc.model_source, rc.model_path)]
        gens[name] = EngineRole(name, lambda m=model: m, tok, self.sampling(rc), next_key, rc.enable_thinking,
                                self.batch_size, self._ctx(), engine=self.engine)
      else:
        think = rc.enable_thinking if rc.enable_thinking is not None else self.cfg.model.enable_thinking
        gens[name] = EngineRole(name, self.policy_fn, self.tokenizer, self.sampling(rc), next_key, think,
                                self.batch_size, self._ctx(), engine=self.engine)
    return RoleGenerators(gens)

  def _ctx(self) -> Callable[[], Any]:
    import contextlib  # noqa: PLC0415
    return self.mesh_ctx or contextlib.nullcontext

  def describe(self) -> dict[str, dict[str, Any]]:
    """Which model plays each role (no secrets); roles the run never calls are marked unused."""
    policy = self.cfg.model.describe()
    return {name: {**self.roles[name].describe(policy), "used": name in self.used} for name in ROLES}


def _unused(role: str):
  def generate(convs):
    raise RuntimeError(f"the {role} role is not used by this run (its phase is switched off) but was called")
  return generate
