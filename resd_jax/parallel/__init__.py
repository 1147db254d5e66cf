"""Meshes and logical-axis sharding."""
from resd_jax.parallel.mesh import AXES, MeshConfig, batch_divisor, make_mesh, maybe_initialize_distributed
from resd_jax.parallel.sharding import DEFAULT_RULES, axis_rules, check_sharded, constrain, spec_for, state_shardings

__all__ = ["AXES", "MeshConfig", "make_mesh", "batch_divisor", "maybe_initialize_distributed", "DEFAULT_RULES",
           "axis_rules", "constrain", "spec_for", "state_shardings", "check_sharded"]
