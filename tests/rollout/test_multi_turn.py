"""Multi-turn rollouts and their distillation rows.

- the history window keeps the head, drops the oldest exchanges first and respects history_turns / the budget;
- run_episodes makes one sampler call per turn for the live episodes and records the exact prompt tokens;
- masks: the response mask selects exactly each turn's sampled tokens; environment text only sits in prompts;
- alignment: at every turn the teacher prompt = enriched head + the student's own history, and the teacher
  log-probs read from the assembled (padded) batch equal an un-padded forward of the teacher sequence;
- on the real engine (skipped without alfworld), scripted replies of the walkthrough win the game.
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resd_jax.loop.multi_turn import episode_sample, grpo_turn_batch, rows_batch, teacher_turn_rows
from resd_jax.context import BatchShape, Metrics, TeacherContextConfig
from resd_jax.context.playbook import Playbook
from resd_jax.context.updater import UpdateResult
from resd_jax.models import tokenizer as tk
from resd_jax.models.config import ModelConfig
from resd_jax.models.transformer import Transformer
from resd_jax.rollout.multi_turn import MultiTurnConfig, RolloutTimes, run_episodes, window


@pytest.fixture(scope="module")
def tokenizer():
  return tk.load_embedded_tokenizer()


# ----- a scripted environment with the AlfworldEnvs surface -----------------------------------------------------
@dataclasses.dataclass
class _Action:
  command: str


@dataclasses.dataclass
class _State:
  index: int
  game_id: str
  gamefile: str
  task_type: str = "pick_and_place_simple"
  task: str = "put a mug in cabinet 1"
  observation: str = ""
  admissible: list = dataclasses.field(default_factory=lambda: ["look", "inventory"])
  done: bool = False
  won: bool = False
  truncated: bool = False
  crashed: bool = False
  steps: int = 0
  invalid_actions: int = 0
  format_failures: int = 0
  last_action: _Action | None = None


class ScriptedEnvs:
  """Game `g<k>` is won by the command 'win' and truncated after `max_steps`; answers name the step."""

  def __init__(self, max_steps):
    self.max_steps = max_steps
    self.states = []

  def reset(self, gamefiles):
    self.states = [_State(i, g, g, observation=f"You are in room {g}. Your task is to: put a mug in cabinet 1.")
                   for i, g in enumerate(gamefiles)]
    return self.states

  def live(self):
    return [s.index for s in self.states if not s.done]

  def step(self, replies):
    for i, text in replies.items():
      s = self.states[i]
      cmd = text.rsplit("Action:", 1)[-1].strip()
      s.last_action, s.steps = _Action(cmd), s.steps + 1
      s.observation = f"ENVANSWER{i}x{s.steps} nothing happens"
      if cmd == "win":
        s.won = s.done = True
      elif s.steps >= self.max_steps:
        s.done = s.truncated = True
    return self.states


class _Roll:
  def __init__(self, prompt_tokens, response_tokens, text):
    self.prompt_tokens, self.response_tokens, self.text = prompt_tokens, response_tokens, text
    self.logprobs = [-0.25 * (k + 1) for k in range(len(response_tokens))]
    self.finish_reason = "stop"


def scripted_sampler(tokenizer, plan):
  """plan[game] = list of commands by turn. Records every call."""
  calls = []

  def sample(convs, turn):
    calls.append((turn, len(convs)))
    out = []
    for conv in convs:
      game = conv[1]["content"].split("room ", 1)[1].split(".", 1)[0]
      text = f"I think. Action: {plan[game][turn]}"
      out.append(_Roll(tk.chat_tokens(tokenizer, conv), tk.encode(tokenizer, text), text))
    return out
  return sample, calls


def play(tokenizer, plan, max_steps=4, **mt):
  envs = ScriptedEnvs(max_steps)
  sample, calls = scripted_sampler(tokenizer, plan)
  times = RolloutTimes()
  eps = run_episodes(envs, list(plan), sample, tokenizer, MultiTurnConfig(**{"max_prompt_len": 2048, **mt}), times)
  return eps, calls, times


# ----- window -------------------------------------------------------------------------------------------------------
def test_window_keeps_head_and_drops_oldest_first():
  head = [{"role": "system", "content": "s" * 10}, {"role": "user", "content": "u" * 10}]
  ex = [(f"a{i}" * 5, f"o{i}" * 5) for i in range(4)]  # 10 + 10 chars per exchange
  count = lambda msgs: sum(len(m["content"]) for m in msgs)
  msgs, dropped = window(head, ex, 0, 1000, count)
  assert dropped == 0 and msgs[:2] == head and len(msgs) == 2 + 8 and msgs[-1]["content"] == "o3" * 5
  msgs, dropped = window(head, ex, 2, 1000, count)  # history_turns caps
  assert dropped == 2 and [m["content"][:2] for m in msgs[2:]] == ["a2", "o2", "a3", "o3"]
  msgs, dropped = window(head, ex, 0, 20 + 30, count)  # budget: head + 1 exchange (+10 spare) only
  assert dropped == 3 and [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
  assert window(head, ex, 0, 39, count) is None  # even the latest exchange does not fit
  assert window(head, [], 0, 20, count) == (head, 0)


def test_config_validation():
  with pytest.raises(ValueError, match="history_turns"):
    MultiTurnConfig(history_turns=-1)
  with pytest.raises(ValueError, match="max_prompt_len"):
    MultiTurnConfig(max_prompt_len=3)


# ----- run_episodes -------------------------------------------------------------------------------------------------
def test_one_sampler_call_per_turn_and_exact_prompts(tokenizer):
  plan = {"g0": ["look", "win"], "g1": ["look", "look", "look", "look"], "g2": ["win"]}
  eps, calls, times = play(tokenizer, plan)
  assert calls == [(0, 3), (1, 2), (2, 1), (3, 1)]  # only live episodes each turn
  assert times.sampler_calls == 4 and times.env_steps == 7
  assert [(e.won, e.steps, e.truncated, len(e.turns)) for e in eps] == [(True, 2, False, 2), (False, 4, True, 4),
                                                                       (True, 1, False, 1)]
  g1 = eps[1]
  assert [t.command for t in g1.turns] == ["look"] * 4
  for j, t in enumerate(g1.turns):
    assert t.prompt_tokens == tk.chat_tokens(tokenizer, t.messages)
    assert len(t.messages) == 2 + 2 * j  # head + j exchanges
    if j:  # the previous reply and the environment's answer to it are the last two messages
      assert t.messages[-2] == {"role": "assistant", "content": g1.turns[j - 1].text}
      assert f"ENVANSWER1x{j} nothing happens" in t.messages[-1]["content"]
      assert "Commands you can use now: look, inventory" in t.messages[-1]["content"]
    if j > 1:  # older answers do not repeat the (stale) command list
      assert "Commands you can use now" not in t.messages[-3]["content"]
  assert "Outcome: failure, ran out of steps (4/4 steps)" in g1.feedback(4)
  assert "> look" in g1.summary() and "ENVANSWER1x4" in g1.summary()


def test_history_window_and_context_overflow(tokenizer):
  plan = {"g0": ["look"] * 6}
  eps, _, _ = play(tokenizer, plan, max_steps=6, history_turns=2)
  assert [len(t.messages) for t in eps[0].turns] == [2, 4, 6, 6, 6, 6]
  assert [t.exchanges_dropped for t in eps[0].turns] == [0, 0, 0, 1, 2, 3]
  head_len = len(tk.chat_tokens(tokenizer, eps[0].head))
  eps, _, _ = play(tokenizer, plan, max_steps=6, max_prompt_len=head_len + 1)  # no exchange ever fits
  assert eps[0].context_overflow and len(eps[0].turns) == 1 and eps[0].steps == 1


# ----- rows, masks, alignment ---------------------------------------------------------------------------------------
def _rows(tokenizer, eps, playbook=None, reflections=None, cfg=None, max_teacher=4096):
  samples = [episode_sample(e, 4) for e in eps]
  result = UpdateResult(reflections or ["The agent kept looking instead of acting."] * len(eps), [None] * len(eps),
                        Metrics())
  m = Metrics()
  rows = teacher_turn_rows(eps, samples, result, playbook or Playbook(), cfg or TeacherContextConfig(), tokenizer,
                           max_teacher, metrics=m)
  return rows, m


def test_masks_select_exactly_the_assistant_tokens(tokenizer):
  eps, _, _ = play(tokenizer, {"g0": ["look", "win"], "g1": ["look"] * 4})
  rows, m = _rows(tokenizer, eps)
  assert [(r.episode, r.turn) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
  shape = BatchShape(8, 1024, 2048, 24)
  b = rows_batch(rows, eps, shape, tk.pad_token_id(tokenizer), metrics=m)
  for k, r in enumerate(rows):
    turn = eps[r.episode].turns[r.turn]
    n = len(turn.response_tokens)
    np.testing.assert_array_equal(b.response_mask[k], [1.0] * n + [0.0] * (24 - n))
    np.testing.assert_array_equal(b.response_tokens[k, :n], turn.response_tokens)
    np.testing.assert_array_equal(b.student_tokens[k, 1024 - len(turn.prompt_tokens):1024], turn.prompt_tokens)
    np.testing.assert_allclose(b.rollout_logprobs[k, :n], turn.logprobs)
    masked = tk.decode(tokenizer, b.response_tokens[k][b.response_mask[k] > 0])
    assert "ENVANSWER" not in masked and "Action:" in masked  # environment text never in the response
    if r.turn:  # ...it sits in the prompt of the next turn instead
      assert f"ENVANSWER{r.episode}x{r.turn}" in tk.decode(tokenizer, turn.prompt_tokens)
  assert b.response_mask[len(rows):].sum() == 0 and b.sample_weight[len(rows):].sum() == 0
  np.testing.assert_array_equal(b.sd_mask[:len(rows)], 1.0)
  assert b.response_mask.sum() == sum(len(t.response_tokens) for e in eps for t in e.turns)


def test_teacher_is_enriched_head_plus_identical_history(tokenizer):
  eps, _, _ = play(tokenizer, {"g0": ["look", "look", "win"]})
  pb = Playbook()
  pb.add("strategies", "Open a receptacle before taking from it.", 0)
  rows, _ = _rows(tokenizer, eps, playbook=pb)
  head_no_gen = tk.chat_tokens(tokenizer, eps[0].head, add_generation_prompt=False)
  for r in rows:
    st, te = r.student_prompt, r.teacher_prompt
    assert st[:len(head_no_gen)] == head_no_gen
    tail = st[len(head_no_gen):]  # the history + generation prompt, token for token the same in the teacher
    assert te[len(te) - len(tail):] == tail and len(te) > len(st)
    teacher_text = tk.decode(tokenizer, te)
    assert "Open a receptacle before taking from it." in teacher_text  # playbook
    assert "kept looking" in teacher_text  # reflection
    assert "### A solution that succeeded\n1. > look" in teacher_text and "3. > win" in teacher_text  # own win
  # A failed episode: its feedback (outcome + last exchanges) reaches the teacher instead of a solution.
  eps, _, _ = play(tokenizer, {"g0": ["look"] * 4})
  rows, _ = _rows(tokenizer, eps)
  text = tk.decode(tokenizer, rows[-1].teacher_prompt)
  assert "Outcome: failure, ran out of steps (4/4 steps)" in text and "A solution that succeeded" not in text
  # SDPO: only solution / feedback; with no success and no feedback slot the teacher equals the student.
  eps, _, _ = play(tokenizer, {"g0": ["look"] * 4})
  rows, _ = _rows(tokenizer, eps, cfg=TeacherContextConfig.sdpo(use_feedback=False))
  assert all(r.sd_mask == 0 and r.teacher_prompt == r.student_prompt for r in rows)


@functools.partial(nnx.jit, static_argnums=3)
def _response_logprobs(model, tokens, mask, r):
  """log p(token) of the last r tokens of each row: [B, r]."""
  hidden, _ = model(tokens, attn_mask=mask)
  logits = model.logits(hidden[:, tokens.shape[1] - r - 1:tokens.shape[1] - 1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[:, -r:][..., None], axis=-1)[..., 0]


def test_teacher_logprobs_from_batch_equal_unpadded_forward(tokenizer):
  eps, _, _ = play(tokenizer, {"g0": ["look", "win"], "g1": ["look", "look"]}, max_steps=2)
  rows, _ = _rows(tokenizer, eps)
  r_len = 24
  shape = BatchShape(len(rows), 384, 768, r_len)
  b = rows_batch(rows, eps, shape, tk.pad_token_id(tokenizer))
  model = Transformer(ModelConfig.preset("tiny", vocab_size=len(tokenizer)), rngs=nnx.Rngs(0))
  teacher = np.asarray(_response_logprobs(model, jnp.asarray(b.teacher_tokens), jnp.asarray(b.teacher_mask), r_len))
  student = np.asarray(_response_logprobs(model, jnp.asarray(b.student_tokens), jnp.asarray(b.student_mask), r_len))
  assert len(rows) == 4 and all(r.sd_mask == 1 for r in rows)
  for k, r in enumerate(rows):  # every turn of both episodes
    n = len(r.response)
    for prompt, batched in ((r.teacher_prompt, teacher), (r.student_prompt, student)):
      seq = jnp.asarray([prompt + r.response], jnp.int32)
      alone = np.asarray(_response_logprobs(model, seq, jnp.ones(seq.shape, bool), n))[0]
      np.testing.assert_allclose(batched[k, :n], alone, rtol=2e-4, atol=2e-4)
    assert not np.allclose(teacher[k, :n], student[k, :n], atol=1e-3)  # the teacher context does change them


def test_grpo_rows_carry_the_episode_advantage(tokenizer):
  # Two games x G=2 episodes: game a has one win (signal), game b none.
  envs_plan = {"a0": ["win"], "a1": ["look", "look"], "b0": ["look", "look"], "b1": ["look", "look"]}
  eps, _, _ = play(tokenizer, envs_plan, max_steps=2)
  m = Metrics()
  b = grpo_turn_batch(eps, 2, True, BatchShape(8, 1024, 1024, 24), tk.pad_token_id(tokenizer), m)
  # rows: a0 t0 | a1 t0, t1 | b0 t0, t1 | b1 t0, t1 -> 7 rows; a: (+1, -1), b: (0, 0)
  np.testing.assert_allclose(b.advantages, [1, -1, -1, 0, 0, 0, 0, 0], atol=1e-4)
  np.testing.assert_array_equal(b.sample_weight, [1] * 7 + [0])
  assert m["grpo/groups_with_signal"] == (1.0, 2)


# ----- the real engine ----------------------------------------------------------------------------------------------
def test_walkthrough_replies_win_on_the_real_engine(tokenizer):
  pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install alfworld==0.4.2 textworld==1.7.0")
  from resd_jax.tasks.alfworld import AlfworldEnvConfig, AlfworldEnvs, ensure_generated_games, list_games
  root = ensure_generated_games(os.path.expanduser("~/.cache/resd_jax/alfworld_generated/n1_s0"), n_per_type=1,
                                seed=0)  # the games of configs/alfworld.py:tiny (generated once, then reused)
  games = list_games(root, "train")[:2]
  plans = []
  for g in games:
    with open(g) as f:
      plans.append(json.load(f)["walkthrough"])

  heads = {}  # first user message -> game index (turn 0 lists every slot in order)

  def sample(convs, turn):
    if turn == 0:
      heads.update({conv[1]["content"]: k for k, conv in enumerate(convs)})
    out = []
    for conv in convs:
      text = f"Action: {plans[heads[conv[1]['content']]][turn]}"
      out.append(_Roll(tk.chat_tokens(tokenizer, conv), tk.encode(tokenizer, text), text))
    return out

  envs = AlfworldEnvs(AlfworldEnvConfig(max_steps=40))
  eps = run_episodes(envs, games, sample, tokenizer, MultiTurnConfig(max_prompt_len=4096, history_turns=3))
  envs.close()
  for ep, plan in zip(eps, plans):
    assert ep.won and ep.steps == len(plan) and [t.command for t in ep.turns] == plan
    assert "Outcome: success" in ep.feedback(40)
