"""TrainState: everything a train step reads and writes, as one pytree (donated to the jitted step)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from resd_jax.distill.teacher import TeacherConfig, init_teacher
from resd_jax.models import lora


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  """params / teacher: nnx.State of the model's Params; opt_state: optax state; counters are int32 scalars.

  For a model with LoRA adapters, opt_state and teacher hold only the adapter leaves (models/lora.py).

  step counts calls of the step (applied or skipped); skipped counts updates dropped for non-finite gradients.
  """
  params: Any
  opt_state: Any
  teacher: Optional[Any]
  step: jax.Array
  skipped: jax.Array
  rng: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params) of an NNX model whose state is only Params."""
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def init_train_state(params: Any, optimizer: optax.GradientTransformation, teacher_cfg: TeacherConfig,
                     seed: int = 0) -> TrainState:
  """A fresh TrainState for params (step 0, nothing skipped, rng from seed).

  With LoRA adapters in params, the optimizer state and the teacher's kept weights cover the adapters only.
  """
  train = lora.trainable(params)
  return TrainState(params=params, opt_state=optimizer.init(train), teacher=init_teacher(train, teacher_cfg),
                    step=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32), rng=jax.random.key(seed))
