"""The streaming trainer (docs/DESIGN.md §1): one pass over the training prompts in fixed order, batches of
B prompts, K inner updates per batch. One inner update:

  rollout (N samples per prompt) -> grade -> context update (reflection, tagging, curation, pruning, solution
  buffer; the policy itself writes) -> teacher contexts + fixed-shape batch -> one jitted optimizer step
  (the teacher update happens inside the step).

Validation runs before training and after every `eval.every_outer` outer batches. Checkpoints (arrays + the
JSON side state: playbook, solution buffer, data cursor, host RNG states, validation history, config) are
written every `checkpoint.every` steps, at the end, and on SIGTERM. Every random draw is keyed by
(seed, purpose, step), so a resumed run continues exactly as if it had not stopped.

SDPO and GRPO run through the same loop (`sdpo.py`, `grpo.py` hold their switches): `Trainer.kind` selects
the context phases, the teacher template and the step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import random
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resd_jax import checkpointing as ck
from resd_jax import config_schema, evaluation
from resd_jax import metrics as mx
from resd_jax.algorithms import runtime
from resd_jax.context import ContextUpdater, GradedSample, Metrics, distillation_batch
from resd_jax.distill import losses
from resd_jax.parallel import placement
from resd_jax.parallel import sharding as shd
from resd_jax.roles import roles_from_config
from resd_jax.roles.binding import RoleBindings
from resd_jax.roles.generators import RoleGenerators
from resd_jax.sampling import SamplingParams, generate_rollouts
from resd_jax.sampling import engine as engine_lib
from resd_jax.tasks.base import Grade
from resd_jax.train import step as step_lib
from resd_jax.train.optim import make_optimizer
from resd_jax.train.state import init_train_state, split_model

log = logging.getLogger(__name__)

# Purposes of random keys: key = fold_in(fold_in(fold_in(PRNGKey(seed), purpose), step), call).
ROLLOUT, CONTEXT, EVAL = 1, 2, 3


@dataclasses.dataclass
class Cursor:
  """Where the stream stands: the next (epoch, outer batch, inner update) to run and the optimizer step."""
  epoch: int = 0
  outer: int = 0
  inner: int = 0
  step: int = 0

  def to_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class RunSummary:
  status: str                      # finished | preempted | max_steps
  step: int
  workdir: str
  checkpoint_steps: list[int]
  validation: dict[str, dict[str, float]]
  best_step_by_rank: int | None


def _host_rng_state() -> dict[str, Any]:
  version, internal, gauss = random.getstate()
  name, keys, pos, has_gauss, cached = np.random.get_state()
  return {"python": [version, list(internal), gauss],
          "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_host_rng_state(state: dict[str, Any]) -> None:
  version, internal, gauss = state["python"]
  random.setstate((version, tuple(internal), gauss))
  name, keys, pos, has_gauss, cached = state["numpy"]
  np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))


def broadcast_json(obj: Any) -> Any:
  """Process 0's JSON-able object on every process (identity on one process)."""
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils
  data = json.dumps(obj, default=_json_scalar).encode() if jax.process_index() == 0 else b""
  n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
  buf = np.zeros(n, np.uint8)
  if jax.process_index() == 0:
    buf[:] = np.frombuffer(data, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return json.loads(buf.tobytes().decode())


def _json_scalar(x: Any) -> Any:
  if hasattr(x, "item"):  # numpy / JAX scalars
    return x.item()
  raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def sync_grades(grades: list[Grade]) -> list[Grade]:
  """Multi-host: process 0's grades on every process. Grading may depend on wall time (sandboxed code under a
  time limit), and every process must build the same context updates and batches from the same grades."""
  if jax.process_count() == 1:
    return grades
  rows = broadcast_json([dataclasses.asdict(g) for g in grades])
  return [Grade(**row) for row in rows]


def _floats(metrics: dict[str, Any]) -> dict[str, tuple[float, float]]:
  """Device (sum, count) pairs -> host floats."""
  host = placement.to_host(metrics)
  return {k: (float(v[0]), float(v[1])) for k, v in host.items()}


class Trainer:
  """RESD / SDPO / GRPO on one config. `Trainer(cfg, workdir).run()`; resumes from `workdir` automatically."""

  def __init__(self, cfg: Any, workdir: str | pathlib.Path, *, eval_only: bool = False, eval_step: int | None = None):
    """eval_only: read the checkpoint of `workdir` (latest, or `eval_step`) without writing anything there."""
    self.cfg = cfg
    self.kind = str(cfg.algorithm)
    self.workdir = pathlib.Path(workdir)
    self.parts = config_schema.validate(cfg, jax.device_count())
    self.is_main = jax.process_index() == 0
    self.mesh = runtime.make_mesh(cfg)
    self.rules = shd.DEFAULT_RULES
    self.tokenizer = runtime.load_tokenizer(cfg)
    model = runtime.load_model(cfg, self.mesh, self.tokenizer)
    self.engine = engine_lib.engine_config(cfg)   # the rollout engine; its pool must hold one longest row
    engine_lib.check_startup(model.config, self.engine,
                             int(cfg.rollout.max_prompt_len) + int(cfg.rollout.max_response_len))
    self.graphdef, params = split_model(model)
    del model
    self.task = runtime.make_task(cfg, partial_credit=self.kind == "grpo" and bool(cfg.grpo.partial_credit))
    self.data = runtime.load_examples(cfg, self.task, self.tokenizer)
    step_cfg = self.parts.step
    self.optimizer = make_optimizer(step_cfg.optim)
    make = step_lib.make_grpo_step if self.kind == "grpo" else step_lib.make_sd_step
    self.step_fn = make(self.graphdef, step_cfg, self.mesh, self.rules)
    # On the mesh before any restore: checkpoints are read onto these shardings (on every process).
    self.state = self._place(init_train_state(params, self.optimizer, step_cfg.teacher, int(cfg.seed)))
    self.updater = ContextUpdater(self.context_config(), int(cfg.seed))
    # Who writes reflections, tags and playbook edits (docs/roles.md); a local role model is loaded here.
    self.roles = RoleBindings(cfg, roles_from_config(cfg), config_schema.used_roles(cfg), policy_fn=self.policy,
                              tokenizer=self.tokenizer, key_fn=lambda step, call: self.key(CONTEXT, step, call),
                              mesh=self.mesh, mesh_ctx=self._mesh_ctx, engine=self.engine)
    self.cursor = Cursor()
    self.history: dict[str, dict[str, float]] = {}
    self.base_key = jax.random.PRNGKey(int(cfg.seed))
    # Host RNGs (used by no part of ours, but maybe by a task or library): seeded here, saved and restored.
    random.seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    self.resumed_from: int | None = None
    if eval_only:
      self.ckpt = None
      self.resumed_from, arrays, side = ck.restore_readonly(self.workdir, ck.abstract_like(self.state), eval_step)
      self.state = arrays
      self.cursor = Cursor(**side["cursor"])
      self.writer = mx.MetricWriter(self.workdir, enabled=False)
    else:
      self.ckpt = ck.Checkpointer(self.workdir / "checkpoints", every=int(cfg.checkpoint.every),
                                  keep=int(cfg.checkpoint.keep), best_metric=evaluation.kept_best_metric(cfg))
      self._restore_or_init()
      if self.is_main:  # which model played which role (no secrets), next to metrics.jsonl
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "roles.json").write_text(json.dumps(self.roles.describe(), indent=1, sort_keys=True) + "\n")
      log.info("context roles: %s", json.dumps(self.roles.describe(), sort_keys=True))
      self.writer = mx.MetricWriter(self.workdir, enabled=self.is_main, tensorboard=bool(cfg.metrics.tensorboard),
                                    wandb_project=cfg.metrics.wandb_project or None, wandb_config=cfg.to_dict(),
                                    console=bool(cfg.metrics.console))
    self.state = self._place(self.state)

  def say(self, message: str) -> None:
    """A progress line on the terminal (process 0, `metrics.console`); also logged at INFO."""
    log.info(message)
    if self.is_main and bool(self.cfg.metrics.console):
      print(message, flush=True)

  # ----- algorithm switches (overridden by the baselines' helpers via `kind`) ------------------------------
  def context_config(self):
    cfg = self.parts.context
    if self.kind in ("sdpo", "sdpo_ss", "grpo"):  # no reflection, tagging or curation; buffer only
      cfg = dataclasses.replace(cfg, reflect=False, tag_successes=False, curate=False)
    return cfg

  @property
  def per_prompt(self) -> int:
    return int(self.cfg.grpo.group_size) if self.kind == "grpo" else int(self.cfg.rollout.samples_per_prompt)

  # ----- keys, mesh ------------------------------------------------------------------------------------------
  def key(self, purpose: int, step: int, call: int = 0) -> jax.Array:
    k = jax.random.fold_in(jax.random.fold_in(self.base_key, purpose), step)
    return jax.random.fold_in(k, call)

  def _mesh_ctx(self):
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(shd.axis_rules(self.rules))
    stack.enter_context(jax.set_mesh(self.mesh))
    return stack

  def _place(self, state):
    return placement.put_tree(state, step_lib.state_shardings(state, self.mesh, self.rules))

  def policy(self):
    from flax import nnx
    return nnx.merge(self.graphdef, self.state.params)

  # ----- checkpoint state --------------------------------------------------------------------------------
  def side_state(self) -> dict[str, Any]:
    return {"cursor": self.cursor.to_dict(), "context": self.updater.state_dict(), "history": self.history,
            "host_rng": _host_rng_state(), "config": json.loads(self.cfg.to_json()), "algorithm": self.kind,
            "roles": self.roles.describe()}

  def _restore_or_init(self) -> None:
    abstract = ck.abstract_like(self.state)
    found = self.ckpt.restore_latest(abstract)
    if found is not None:
      step, arrays, side = found
      self.state = arrays
      self.cursor = Cursor(**side["cursor"])
      self.updater.load_state_dict(side["context"])
      self.history = dict(side.get("history", {}))
      _set_host_rng_state(side["host_rng"])
      self.resumed_from = step
      if side.get("config") != json.loads(self.cfg.to_json()):
        log.warning("resuming step %d of %s with a config that differs from the saved one", step, self.workdir)
      if self.is_main:
        self._trim_metrics(step)
      self.say(f"resumed from checkpoint step {step} in {self.ckpt.directory}")
      return
    if self.cfg.init_from:
      src_step, arrays, side = ck.restore_readonly(self.cfg.init_from, abstract)
      self.state = init_train_state(arrays.params, self.optimizer, self.parts.step.teacher, int(self.cfg.seed))
      if self.cfg.init_playbook:
        self.updater.load_state_dict(side["context"])
      self.say(f"initialised from {self.cfg.init_from} (step {src_step})"
               + (" with its playbook and solution buffer" if self.cfg.init_playbook else ""))

  def _trim_metrics(self, step: int) -> None:
    """Drop metric lines past the restored step (written by the run that was killed after its checkpoint)."""
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return
    keep = [json.dumps(r, sort_keys=True) for r in mx.read_jsonl(path) if int(r.get("step", 0)) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

  def save(self, val_metrics: dict[str, float] | None = None) -> None:
    step = self.cursor.step
    if val_metrics is not None and str(self.cfg.checkpoint.best_rule) == "rank":
      val_metrics = evaluation.rank_best_marker(self.history, step)
    self.ckpt.save(step, self.state, self.side_state(), metrics=val_metrics)
    if self.is_main:
      mx.write_playbook_text(self.workdir / "playbooks", step, self.updater.playbook.render())

  # ----- one inner update ----------------------------------------------------------------------------------
  def rollouts(self, examples: Sequence[Any], per_prompt: int, params: SamplingParams, key: jax.Array):
    convs = [list(ex.messages) for ex in examples for _ in range(per_prompt)]
    with self._mesh_ctx():
      return generate_rollouts(self.policy(), self.tokenizer, convs, params, key,
                               self.cfg.model.enable_thinking, int(self.cfg.rollout.sample_batch), self.engine)

  def generate_text_fn(self, step: int) -> RoleGenerators:
    """The context engine's generators of this step: one per role (policy, local model or endpoint), each with
    its own sampling settings; model-backed roles keyed per (step, call)."""
    return self.roles.for_step(step)

  def inner_update(self, examples: Sequence[Any]) -> dict[str, Any]:
    cfg, step = self.cfg, self.cursor.step
    m = Metrics()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    r = cfg.rollout
    params = SamplingParams(temperature=float(r.temperature), top_p=float(r.top_p), top_k=int(r.top_k),
                            max_new_tokens=int(r.max_response_len))
    rolls = self.rollouts(examples, self.per_prompt, params, self.key(ROLLOUT, step))
    times["rollout"] = time.perf_counter() - t0
    n_tokens = sum(len(x.response_tokens) for x in rolls)

    t0 = time.perf_counter()
    exs = [ex for ex in examples for _ in range(self.per_prompt)]
    grades = sync_grades([self.task.grade(ex, ro.text, truncated=ro.truncated) for ex, ro in zip(exs, rolls)])
    samples = []
    for ex, ro, grade in zip(exs, rolls, grades):
      samples.append(GradedSample(ex, ro.text, list(ro.response_tokens), list(ro.logprobs), grade, ro.truncated))
      m.add("rollout/reward", grade.reward)
      m.add("rollout/acc", grade.acc)
      m.add("rollout/success", float(grade.success))
      m.add("rollout/truncated", float(ro.truncated))
      m.add("rollout/response_tokens", len(ro.response_tokens))
      for k, v in grade.info.items():
        if isinstance(v, (bool, int, float)):
          m.add(f"grade/{k}", float(v))
    times["grade"] = time.perf_counter() - t0

    if self.kind == "grpo":
      t0 = time.perf_counter()
      batch = self.grpo_batch(samples, m)
      times["batch"] = time.perf_counter() - t0
    else:
      t0 = time.perf_counter()
      result = self.updater.update(samples, self.generate_text_fn(step), step)
      result = self.sync_context(result)
      times["context"] = time.perf_counter() - t0
      m.merge(result.metrics)
      t0 = time.perf_counter()
      batch = self.distill_batch(samples, result, m)
      times["batch"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    self.state, step_metrics = self.step_fn(self.state, batch)
    step_metrics = _floats(step_metrics)
    times["step"] = time.perf_counter() - t0
    out: dict[str, Any] = dict(m)
    out.update({f"train/{k}": v for k, v in step_metrics.items()})
    out.update({f"time/{k}": v for k, v in times.items()})
    out["throughput/rollout_tokens_per_s"] = n_tokens / max(times["rollout"], 1e-9)
    return out

  def sync_context(self, result):
    """Multi-host: every process ran the same (collective) generation; process 0's context state wins."""
    if jax.process_count() == 1:
      return result
    payload = broadcast_json({"state": self.updater.state_dict(), "reflections": result.reflections,
                              "solutions_before": result.solutions_before})
    self.updater.load_state_dict(payload["state"])
    return dataclasses.replace(result, reflections=payload["reflections"],
                               solutions_before=payload["solutions_before"])

  def distill_batch(self, samples: list[GradedSample], result, m: Metrics):
    weights = None
    d = self.cfg.distill
    if d.success_weights:
      success = jnp.asarray([float(s.grade.success) for s in samples])
      weights = np.asarray(losses.success_rate_weights(success, float(d.success_a), float(d.success_b))).tolist()
    batch, _ = distillation_batch(samples, result, self.updater.playbook, self.parts.teacher_context,
                                  self.tokenizer, self.parts.batch_shape, sample_weights=weights,
                                  enable_thinking=self.cfg.model.enable_thinking, metrics=m)
    return batch

  def grpo_batch(self, samples: list[GradedSample], m: Metrics):
    from resd_jax.algorithms.grpo import grpo_batch
    return grpo_batch(samples, self.cfg, self.parts.batch_shape, self.tokenizer, m)

  # ----- validation ----------------------------------------------------------------------------------------
  def validate(self) -> dict[str, float]:
    cfg, step = self.cfg, self.cursor.step
    if not self.data.test:
      return {}
    e = cfg.eval
    params = SamplingParams(temperature=float(e.temperature), top_p=float(e.top_p),
                            max_new_tokens=int(e.max_response_len or cfg.rollout.max_response_len))

    def generate_n(examples, n):
      rolls = self.rollouts(examples, n, params, self.key(EVAL, step))
      return [[(ro.text, ro.truncated) for ro in rolls[i * n:(i + 1) * n]] for i in range(len(examples))]

    t0 = time.perf_counter()
    res = evaluation.evaluate(self.task, self.data.test, generate_n, int(e.num_samples), ks=tuple(e.best_k),
                              bootstrap=bool(e.bootstrap), seed=int(cfg.seed), best_of=str(e.best_of))
    if jax.process_count() > 1:  # grading may depend on wall time; the checkpoint policy reads these
      metrics, info_sums = broadcast_json([dict(res.metrics), dict(res.info_sums)])
      res = dataclasses.replace(res, metrics=metrics, info_sums={k: tuple(v) for k, v in info_sums.items()})
    self.history[str(step)] = dict(res.metrics)
    out: dict[str, Any] = {f"val/{k}": v for k, v in res.metrics.items()}
    out.update({f"val/grade/{k}": v for k, v in res.info_sums.items()})
    out["time/validation"] = time.perf_counter() - t0
    best, _ = evaluation.rank_rule({int(s): v for s, v in self.history.items()})
    out["val/rank_rule_best_step"] = float(best)
    self.writer.write(step, out)
    return dict(res.metrics)

  # ----- the loop ------------------------------------------------------------------------------------------
  def outer_batches(self) -> list[list[Any]]:
    b = int(self.cfg.rollout.batch_prompts)
    train = self.data.train
    batches = [train[i:i + b] for i in range(0, len(train), b)]
    if self.cfg.data.drop_last and batches and len(batches[-1]) < b:  # the reference drops the partial batch
      batches.pop()
      if not batches:
        raise config_schema.ConfigError(f"data.drop_last leaves no outer batch: {len(train)} training prompts < "
                                        f"rollout.batch_prompts={b}; lower batch_prompts or set data.drop_last=False")
    return batches

  def run(self) -> RunSummary:
    cfg, cur = self.cfg, self.cursor
    K, epochs, max_steps = int(cfg.rollout.inner_updates), int(cfg.data.epochs), int(cfg.train.max_steps)
    every_outer = int(cfg.eval.every_outer)
    batches = self.outer_batches()
    status = "finished"
    saved_step = self.resumed_from
    with ck.PreemptionFlag() as flag:
      if self.resumed_from is None and cur.step == 0 and cfg.eval.before_training:
        self.say("validation before training ...")
        self.validate()
      self.say(f"training: {len(batches)} outer batches x {K} inner updates per epoch, {epochs} epoch(s)"
               + (f", stopping at step {max_steps}" if max_steps else "") + f"; next step {cur.step + 1}")
      progress = mx.progress(total=epochs * len(batches) * K, desc=f"{self.kind} steps",
                             enabled=None if cfg.metrics.progress else False)
      progress.update(cur.step)
      while cur.epoch < epochs:
        if cur.outer >= len(batches):
          cur.epoch, cur.outer, cur.inner = cur.epoch + 1, 0, 0
          continue
        if max_steps and cur.step >= max_steps:
          status = "max_steps"
          break
        metrics = self.inner_update(batches[cur.outer])
        cur.step += 1
        cur.inner += 1
        outer_done = cur.inner == K
        if outer_done:
          cur.outer, cur.inner = cur.outer + 1, 0
        metrics.update({"cursor/epoch": cur.epoch, "cursor/outer": cur.outer, "cursor/inner": cur.inner})
        self.writer.write(cur.step, metrics)
        progress.update(1)
        val = None
        if outer_done and every_outer and (cur.step // K) % every_outer == 0:
          val = self.validate()
        stop = placement.any_process(flag.requested)  # multi-host: a signal to one process stops all together
        if self.ckpt.should_save(cur.step) or stop:
          self.save(val)
          saved_step = cur.step
        if stop:
          status = "preempted"
          break
      progress.close()
      if saved_step != cur.step:
        self.save(None)
    self.ckpt.wait()
    best = None
    if self.history:
      best = evaluation.rank_rule({int(s): v for s, v in self.history.items()})[0]
    summary = RunSummary(status, cur.step, str(self.workdir), self.ckpt.steps(), dict(self.history), best)
    return summary

  def close(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()
    self.writer.close()


def evaluate_checkpoint(cfg: Any, run_dir: str | pathlib.Path, step: int | None = None, *,
                        trainer_cls: type = Trainer) -> tuple[int, dict[str, float]]:
  """Validation metrics (config's `eval.*`) of a run's checkpoint (latest or `step`); writes nothing there.

  `trainer_cls`: the Trainer (sub)class that knows how to run the task's episodes (e.g. the multi-turn one)."""
  trainer = trainer_cls(cfg, run_dir, eval_only=True, eval_step=step)
  try:
    return int(trainer.resumed_from), trainer.validate()
  finally:
    trainer.close()


def train(cfg: Any, workdir: str | pathlib.Path) -> RunSummary:
  """Run (or resume) the configured algorithm in `workdir`."""
  trainer = Trainer(cfg, workdir)
  try:
    return trainer.run()
  finally:
    trainer.close()
