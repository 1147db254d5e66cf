"""GRPO batch assembly: group advantages vs hand values, padding rows inert, host RNG state round trip."""
import random

import numpy as np
import pytest

from resd_jax.loop import host_sync
from resd_jax.loop.single_turn import grpo_batch
from resd_jax.context import BatchShape, GradedSample, Metrics
from resd_jax.models import tokenizer as tk
from resd_jax.tasks.base import Example, Grade


@pytest.fixture(scope="module")
def tokenizer():
  return tk.load_embedded_tokenizer()


def test_group_advantages_and_padding(tokenizer):
  exs = [Example(f"e{i}", ({"role": "user", "content": f"q{i}"},)) for i in range(2)]
  rewards = [1.0, 0.0, 0.0, 0.0]  # group 0 has signal, group 1 none
  samples = [GradedSample(exs[i // 2], "r", [5, 6, 7][: 1 + i % 3], [-.5] * (1 + i % 3), Grade(r, r))
             for i, r in enumerate(rewards)]
  m = Metrics()
  b = grpo_batch(samples, 2, True, 0, BatchShape(6, 64, 64, 4), tokenizer, None, m)
  # Group 0: mean .5, std .5 -> (+1, -1) (up to eps); group 1: all zero; rows 4, 5 are padding.
  np.testing.assert_allclose(b.advantages, [1, -1, 0, 0, 0, 0], atol=1e-5)
  np.testing.assert_array_equal(b.sample_weight, [1, 1, 1, 1, 0, 0])
  assert b.response_mask[4:].sum() == 0 and b.response_mask[1].sum() == 2
  np.testing.assert_allclose(b.rollout_logprobs[1, :2], [-.5, -.5])
  assert m["grpo/groups_with_signal"] == (1.0, 2)


def test_host_rng_state_round_trip():
  random.seed(3)
  np.random.seed(4)
  state = host_sync.host_rng_state()
  a = (random.random(), np.random.rand())
  random.seed(99)
  np.random.seed(99)
  host_sync.set_host_rng_state(state)
  assert (random.random(), np.random.rand()) == a
  assert host_sync.broadcast_json({"x": [1, "ü"]}) == {"x": [1, "ü"]}  # one process: identity
