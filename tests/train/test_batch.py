"""Batch assembly: exact layout, errors, pytree/jit, and teacher/student alignment with a real tiny model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resd_jax.train.batch import Batch, BatchShape, assemble_batch
from resd_jax.context.types import Metrics

PAD = 0
SHAPE = BatchShape(batch_size=3, max_prompt_len=4, max_teacher_prompt_len=6, max_response_len=3)


def _two_samples(**over):
  args = dict(student_prompts=[[11, 12], [21, 22, 23, 24]], teacher_prompts=[[31, 32, 33, 34, 35], [41]],
              responses=[[7, 8], [9, 10, 5]], rollout_logprobs=[[-0.5, -1.0], None], sample_weights=[1.0, 0.5],
              sd_masks=[1, 0])
  args.update(over)
  return args


def test_layout_exact():
  b = assemble_batch(**_two_samples(), shape=SHAPE, pad_id=PAD)
  np.testing.assert_array_equal(b.student_tokens, [[0, 0, 11, 12, 7, 8, 0], [21, 22, 23, 24, 9, 10, 5],
                                                   [0] * 7])
  np.testing.assert_array_equal(b.student_mask, [[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1], [0] * 7])
  np.testing.assert_array_equal(b.teacher_tokens, [[0, 31, 32, 33, 34, 35, 7, 8, 0],
                                                   [0, 0, 0, 0, 0, 41, 9, 10, 5], [0] * 9])
  np.testing.assert_array_equal(b.teacher_mask, [[0, 1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1],
                                                 [0] * 9])
  np.testing.assert_array_equal(b.response_tokens, [[7, 8, 0], [9, 10, 5], [0, 0, 0]])
  np.testing.assert_array_equal(b.response_mask, [[1, 1, 0], [1, 1, 1], [0, 0, 0]])
  # The response occupies the last R positions of both sequences.
  np.testing.assert_array_equal(b.student_tokens[:, -3:], b.teacher_tokens[:, -3:])
  np.testing.assert_allclose(b.rollout_logprobs, [[-0.5, -1.0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_allclose(b.sample_weight, [1.0, 0.5, 0.0])
  np.testing.assert_allclose(b.sd_mask, [1, 0, 0])
  assert b.student_tokens.dtype == np.int32 and b.response_mask.dtype == np.float32


def test_teacher_overlong_falls_back_to_student_prompt():
  m = Metrics()
  b = assemble_batch(**_two_samples(teacher_prompts=[list(range(100, 107)), [41]]), shape=SHAPE, pad_id=PAD,
                     metrics=m)
  np.testing.assert_array_equal(b.teacher_tokens[0], [0, 0, 0, 0, 11, 12, 7, 8, 0])
  assert b.sd_mask[0] == 0 and m["batch/teacher_overlong"] == (1.0, 2)


@pytest.mark.parametrize("over, msg", [
  (dict(student_prompts=[[1] * 5, [1]]), "student prompt has 5 tokens > max_prompt_len=4"),
  (dict(responses=[[1] * 4, [1]], rollout_logprobs=[None, None]), "response has 4 tokens > max_response_len=3"),
  (dict(sd_masks=[1]), "different lengths"),
  (dict(rollout_logprobs=[[0.0], None]), "1 rollout logprobs for 2 response tokens"),
])
def test_bad_inputs_raise_clear_errors(over, msg):
  with pytest.raises(ValueError, match=msg):
    assemble_batch(**_two_samples(**over), shape=SHAPE, pad_id=PAD)


def test_too_many_samples_and_bad_shape():
  args = {k: v * 2 for k, v in _two_samples().items()}
  with pytest.raises(ValueError, match="do not fit batch_size=3"):
    assemble_batch(**args, shape=SHAPE, pad_id=PAD)
  with pytest.raises(ValueError, match="max_response_len must be > 0"):
    BatchShape(2, 4, 4, 0)
  with pytest.raises(ValueError, match="must be >= max_prompt_len"):
    BatchShape(2, 4, 3, 2)


def test_batch_is_a_pytree_for_jit():
  b = assemble_batch(**_two_samples(), shape=SHAPE, pad_id=PAD)
  assert len(jax.tree_util.tree_leaves(b)) == 9
  out = jax.jit(lambda x: jnp.sum(x.response_tokens * x.response_mask) + x.sd_mask.sum())(b)
  assert float(out) == 7 + 8 + 9 + 10 + 5 + 1
  moved = jax.tree_util.tree_map(jnp.asarray, b)
  assert isinstance(moved, Batch)


def test_teacher_logprobs_align_with_unpadded_forward():
  models = pytest.importorskip("resd_jax.models")
  from flax import nnx
  model = models.Transformer(models.ModelConfig.preset("tiny"), rngs=nnx.Rngs(0))

  @nnx.jit
  def logprobs(model, tokens, mask):
    hidden, _ = model(tokens, attn_mask=mask)
    return jax.nn.log_softmax(model.logits(hidden), axis=-1)            # [B, L, V]

  rng = np.random.default_rng(0)
  V = model.config.vocab_size
  shape = BatchShape(batch_size=3, max_prompt_len=6, max_teacher_prompt_len=13, max_response_len=5)
  R = shape.max_response_len
  # Prompt + response lengths are equal per role, so each role's references run as one un-padded forward.
  sp = [list(rng.integers(1, V, n)) for n in (4, 6)]
  tp = [list(rng.integers(1, V, n)) for n in (11, 13)]
  resp = [list(rng.integers(1, V, n)) for n in (5, 3)]
  b = assemble_batch(sp, tp, resp, [None, None], [1.0, 1.0], [1, 1], shape, pad_id=PAD)
  for name, tokens, mask, prompts, P in (("teacher", b.teacher_tokens, b.teacher_mask, tp, 13),
                                         ("student", b.student_tokens, b.student_mask, sp, 6)):
    logp = np.asarray(logprobs(model, jnp.asarray(tokens), jnp.asarray(mask)))
    # Position P - 1 + j predicts response token j (teacher and student alike: last R slots of both).
    batched = np.take_along_axis(logp[:, P - 1:P - 1 + R], b.response_tokens[:, :, None], -1)[..., 0]
    seqs = np.asarray([prompts[i] + resp[i] for i in range(2)], np.int32)      # [2, L], no padding
    ref = np.asarray(logprobs(model, jnp.asarray(seqs), jnp.ones(seqs.shape, bool)))
    for i in range(2):
      n, p = len(resp[i]), len(prompts[i])
      expect = ref[i, np.arange(p - 1, p - 1 + n), resp[i]]
      np.testing.assert_allclose(batched[i, :n], expect, rtol=2e-5, atol=2e-5, err_msg=f"{name} sample {i}")
