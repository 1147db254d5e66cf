"""From graded samples + update result to a Batch, with a byte-level stand-in chat tokenizer."""
import numpy as np
import pytest

from context_fakes import ByteChatTokenizer, sample
from resd_jax.context.assemble import distillation_batch
from resd_jax.train.batch import BatchShape
from resd_jax.context.playbook import Playbook
from resd_jax.context.teacher_context import TeacherContextConfig
from resd_jax.context.types import Metrics
from resd_jax.context.updater import UpdateResult

TOK = ByteChatTokenizer()


def _toks(messages):
  return TOK.apply_chat_template(messages)


def test_distillation_batch_end_to_end():
  samples = [sample("a", False, feedback="fail: x"), sample("b", False, feedback=""), sample("c", True)]
  result = UpdateResult(reflections=["Error: e", "", ""], solutions_before=[None, None, None], metrics=Metrics())
  pb = Playbook()
  shape = BatchShape(batch_size=4, max_prompt_len=64, max_teacher_prompt_len=400, max_response_len=3)
  batch, ctxs = distillation_batch(samples, result, pb, TeacherContextConfig(), TOK, shape)
  assert [c.sd_mask for c in ctxs] == [1, 0, 1]  # b: no feedback, reflection, playbook or solution
  np.testing.assert_allclose(batch.sd_mask, [1, 0, 1, 0])
  student = _toks(samples[1].example.messages)
  # Sample b: teacher prompt == student prompt, so both rows hold the same tokens (left-padded differently).
  n = len(student)
  np.testing.assert_array_equal(batch.teacher_tokens[1, 400 - n:], batch.student_tokens[1, 64 - n:])
  teacher_a = _toks(ctxs[0].messages)
  np.testing.assert_array_equal(batch.teacher_tokens[0, 400 - len(teacher_a):400], teacher_a)
  np.testing.assert_array_equal(batch.response_tokens[:3], [[1, 2, 3]] * 3)
  assert "answer for c" in ctxs[2].messages[0]["content"]  # own success as the solution (RESD)


def test_shrinks_with_exact_template_length():
  pb = Playbook()
  for i in range(6):
    pb.add("others", f"lesson {i} " + "x" * 20, 0).helpful = i
  s = [sample("a", False, feedback="fail")]
  result = UpdateResult(["Error: e"], [None], Metrics())
  full = distillation_batch(s, result, pb, TeacherContextConfig(),
                            TOK, BatchShape(1, 64, 2000, 3))[1][0]
  n_full = len(_toks(full.messages))
  shape = BatchShape(1, 64, n_full - 100, 3)  # about two entry lines too long
  m = Metrics()
  batch, ctxs = distillation_batch(s, result, pb, TeacherContextConfig(), TOK, shape, metrics=m)
  assert len(_toks(ctxs[0].messages)) <= n_full - 100 and ctxs[0].playbook_entries_dropped == 2
  assert "lesson 0" not in ctxs[0].messages[0]["content"] and "lesson 5" in ctxs[0].messages[0]["content"]
  assert batch.sd_mask[0] == 1 and m["batch/teacher_overlong"] == (0.0, 1)


def test_result_of_other_samples_is_rejected():
  with pytest.raises(ValueError, match="same samples"):
    distillation_batch([sample("a", False)], UpdateResult([], [], Metrics()), Playbook(), TeacherContextConfig(),
                       TOK, BatchShape(1, 8, 8, 3))
