"""Who writes the context: the reflector, the success tagger and the curator, each bound to the policy (the
paper), a second frozen local model, or an OpenAI-compatible chat-completions endpoint (docs/roles.md)."""
from resd_jax.roles.config import BACKENDS, LOCAL_SOURCES, PHASE_OF_ROLE, ROLES, RoleConfig, roles_from_config
from resd_jax.roles.generators import RoleGenerators

__all__ = ["BACKENDS", "LOCAL_SOURCES", "PHASE_OF_ROLE", "ROLES", "RoleConfig", "RoleGenerators",
           "roles_from_config"]
