"""The streaming trainer (docs/DESIGN.md §1): one pass over the training prompts in fixed order, batches of B
prompts, K inner updates per batch. One inner update:

  collect experience (the task's interaction: responses, or episodes for a multi-turn task)
  -> context update (reflection, tagging, curation, pruning, solution buffer), if the algorithm has one
  -> the algorithm's batch -> its jitted optimizer step (a teacher update happens inside the step).

The loop names no algorithm and no task: `algorithms.get(run.algorithm)` says what differs (samples per prompt,
context phases, teacher context, batch, step), the task's `multi_turn` picks the interaction.

Validation runs before training and after every `eval.every_outer` outer batches. Checkpoints (arrays + the JSON
side state: playbook, solution buffer, data cursor, host RNG states, validation history, config) are written
every `checkpoint.every` steps, at the end, and on SIGTERM. Every random draw is keyed by (seed, purpose, step),
so a resumed run continues exactly as if it had not stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import random
import time
from typing import Any, Sequence

import jax
import numpy as np

from resd_jax import algorithms
from resd_jax import checkpointing as ck
from resd_jax import config_schema, evaluation
from resd_jax import metrics as mx
from resd_jax.context import ContextUpdater, Metrics
from resd_jax.loop import host_sync, setup
from resd_jax.loop.multi_turn import MultiTurn
from resd_jax.loop.single_turn import SingleTurn
from resd_jax.parallel import placement
from resd_jax.parallel import sharding as shd
from resd_jax.roles.binding import RoleBindings
from resd_jax.sampling import SamplingParams, generate_rollouts
from resd_jax.sampling import engine as engine_lib
from resd_jax.tasks import base as task_base
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


def outer_batches(train: Sequence[Any], batch_prompts: int, drop_last: bool) -> list[list[Any]]:
  """The training prompts in consecutive batches of B (the last partial one dropped with `drop_last`)."""
  b = batch_prompts
  batches = [list(train[i:i + b]) for i in range(0, len(train), b)]
  if drop_last and batches and len(batches[-1]) < b:  # the reference drops the partial batch
    batches.pop()
    if not batches:
      raise config_schema.ConfigError(f"data.drop_last leaves no outer batch: {len(train)} training prompts < "
                                      f"rollout.batch_prompts={b}; lower batch_prompts or set data.drop_last=False")
  return batches


def _floats(metrics: dict[str, Any]) -> dict[str, tuple[float, float]]:
  """Device (sum, count) pairs -> host floats."""
  host = placement.to_host(metrics)
  return {k: (float(v[0]), float(v[1])) for k, v in host.items()}


class Trainer:
  """Any registered algorithm on any registered task. `Trainer(cfg, workdir).run()`; resumes from `workdir`.

  cfg: the ConfigDict (validated here) or a `RunConfig` that `config_schema.validate` returned (not re-checked).
  eval_only: read the checkpoint of `workdir` (latest, or `eval_step`) without writing anything there."""

  def __init__(self, cfg: Any, workdir: str | pathlib.Path, *, eval_only: bool = False, eval_step: int | None = None):
    from resd_jax.run_config import RunConfig
    run = cfg if isinstance(cfg, RunConfig) else config_schema.validate(cfg, jax.device_count())
    self.cfg = run
    self.algo = algorithms.get(run.algorithm)
    self.workdir = pathlib.Path(workdir)
    if not eval_only and str(workdir) != run.workdir:  # validate checked run.workdir
      config_schema.check_workdir(str(workdir))
    self.is_main = jax.process_index() == 0
    self.mesh = setup.make_mesh(run)
    self.rules = shd.DEFAULT_RULES
    self.tokenizer = setup.load_tokenizer(run)
    model = setup.load_model(run, self.mesh, self.tokenizer)
    self.engine = run.engine_config()   # the rollout engine; its pool must hold one longest row
    engine_lib.check_startup(model.config, self.engine, run.rollout.max_prompt_len + run.rollout.max_response_len)
    self.graphdef, params = split_model(model)
    del model
    self.task = setup.make_task(run, **self.algo.task_options(run))
    self.data = setup.load_examples(run, self.task, self.tokenizer)
    interaction = MultiTurn if task_base.task_class(run.task.name).multi_turn else SingleTurn
    self.interaction = interaction(run, self.task, self.data, self.tokenizer, self.generate)
    self.step_cfg = run.step_config()
    self.teacher_context = self.algo.teacher_context(run)
    self.batch_shape = run.batch_shape(config_schema.rows_per_step(run))
    self.optimizer = make_optimizer(self.step_cfg.optim)
    self.step_fn = self.algo.make_step(self.graphdef, self.step_cfg, self.mesh, self.rules)
    # On the mesh before any restore: checkpoints are read onto these shardings (on every process).
    self.state = self._place(init_train_state(params, self.optimizer, self.step_cfg.teacher, run.seed))
    self.updater = ContextUpdater(self.algo.context_config(run), run.seed)
    # Who writes reflections, tags and playbook edits (docs/roles.md); a local role model is loaded here.
    self.roles = RoleBindings(run, run.role_configs(), self.algo.used_roles(run), policy_fn=self.policy,
                              tokenizer=self.tokenizer, key_fn=lambda step, call: self.key(CONTEXT, step, call),
                              mesh=self.mesh, mesh_ctx=self._mesh_ctx, engine=self.engine)
    self.cursor = Cursor()
    self.history: dict[str, dict[str, float]] = {}
    self.base_key = jax.random.PRNGKey(run.seed)
    # Host RNGs (used by no part of ours, but maybe by a task or library): seeded here, saved and restored.
    random.seed(run.seed)
    np.random.seed(run.seed % 2**32)
    self.resumed_from: int | None = None
    if eval_only:
      self.ckpt = None
      self.resumed_from, arrays, side = ck.restore_readonly(self.workdir, ck.abstract_like(self.state), eval_step)
      self.state = arrays
      self.cursor = Cursor(**side["cursor"])
      self.writer = mx.MetricWriter(self.workdir, enabled=False)
    else:
      self.ckpt = ck.Checkpointer(self.workdir / "checkpoints", every=run.checkpoint.every,
                                  keep=run.checkpoint.keep, best_metric=evaluation.kept_best_metric(run))
      self._restore_or_init()
      if self.is_main:  # which model played which role (no secrets), next to metrics.jsonl
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "roles.json").write_text(json.dumps(self.roles.describe(), indent=1, sort_keys=True) + "\n")
      log.info("context roles: %s", json.dumps(self.roles.describe(), sort_keys=True))
      self.writer = mx.MetricWriter(self.workdir, enabled=self.is_main, tensorboard=run.metrics.tensorboard,
                                    wandb_project=run.metrics.wandb_project or None, wandb_config=run.source(),
                                    console=run.metrics.console)
    self.state = self._place(self.state)

  def say(self, message: str) -> None:
    """A progress line on the terminal (process 0, `metrics.console`); also logged at INFO."""
    log.info(message)
    if self.is_main and self.cfg.metrics.console:
      print(message, flush=True)

  # ----- keys, mesh, policy ----------------------------------------------------------------------------------
  def key(self, purpose: int, step: int, call: int = 0) -> jax.Array:
    k = jax.random.fold_in(jax.random.fold_in(self.base_key, purpose), step)
    return jax.random.fold_in(k, call)

  def _mesh_ctx(self):
    stack = contextlib.ExitStack()
    stack.enter_context(shd.axis_rules(self.rules))
    stack.enter_context(jax.set_mesh(self.mesh))
    return stack

  def _place(self, state):
    from resd_jax.train import step as step_lib
    return placement.put_tree(state, step_lib.state_shardings(state, self.mesh, self.rules))

  def policy(self):
    from flax import nnx
    return nnx.merge(self.graphdef, self.state.params)

  def generate(self, convs: list, params: SamplingParams, key: jax.Array) -> list:
    """The policy's responses to chat conversations (the rollout engine), one per conversation."""
    with self._mesh_ctx():
      return generate_rollouts(self.policy(), self.tokenizer, convs, params, key, self.cfg.model.enable_thinking,
                               self.cfg.rollout.sample_batch, self.engine)

  def generate_text_fn(self, step: int) -> Any:
    """The context engine's generators of this step: one per role (policy, local model or endpoint), each with
    its own sampling settings; model-backed roles keyed per (step, call)."""
    return self.roles.for_step(step)

  # ----- checkpoint state --------------------------------------------------------------------------------
  def side_state(self) -> dict[str, Any]:
    return {"cursor": self.cursor.to_dict(), "context": self.updater.state_dict(), "history": self.history,
            "host_rng": host_sync.host_rng_state(), "config": self.cfg.source(), "algorithm": self.cfg.algorithm,
            "roles": self.roles.describe()}

  def _restore_or_init(self) -> None:
    abstract = ck.abstract_like(self.state)
    found = self.ckpt.restore_latest(abstract)
    run = self.cfg
    if found is not None:
      step, arrays, side = found
      self.state = arrays
      self.cursor = Cursor(**side["cursor"])
      self.updater.load_state_dict(side["context"])
      self.history = dict(side.get("history", {}))
      host_sync.set_host_rng_state(side["host_rng"])
      self.resumed_from = step
      if side.get("config") != run.source():
        log.warning("resuming step %d of %s with a config that differs from the saved one", step, self.workdir)
      if self.is_main:
        self._trim_metrics(step)
      self.say(f"resumed from checkpoint step {step} in {self.ckpt.directory}")
      return
    if run.init_from:
      src_step, arrays, side = ck.restore_readonly(run.init_from, abstract)
      self.state = init_train_state(arrays.params, self.optimizer, self.step_cfg.teacher, run.seed)
      if run.init_playbook:
        self.updater.load_state_dict(side["context"])
      self.say(f"initialised from {run.init_from} (step {src_step})"
               + (" with its playbook and solution buffer" if run.init_playbook else ""))

  def _trim_metrics(self, step: int) -> None:
    """Drop metric lines past the restored step (written by the run that was killed after its checkpoint)."""
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return
    keep = [json.dumps(r, sort_keys=True) for r in mx.read_jsonl(path) if int(r.get("step", 0)) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

  def save(self, val_metrics: dict[str, float] | None = None) -> None:
    step = self.cursor.step
    if val_metrics is not None and self.cfg.checkpoint.best_rule == "rank":
      val_metrics = evaluation.rank_best_marker(self.history, step)
    self.ckpt.save(step, self.state, self.side_state(), metrics=val_metrics)
    if self.is_main:
      mx.write_playbook_text(self.workdir / "playbooks", step, self.updater.playbook.render())

  # ----- one inner update ----------------------------------------------------------------------------------
  def inner_update(self, examples: Sequence[Any]) -> dict[str, Any]:
    run, step, algo = self.cfg, self.cursor.step, self.algo
    m = Metrics()
    times: dict[str, float] = {}
    r = run.rollout
    params = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_response_len)
    exp = self.interaction.collect(examples, algo.samples_per_prompt(run), params, self.key(ROLLOUT, step), m, times)
    result = None
    if algo.updates_context:
      t0 = time.perf_counter()
      result = self.sync_context(self.updater.update(exp.samples, self.generate_text_fn(step), step))
      times["context"] = time.perf_counter() - t0
      m.merge(result.metrics)
    t0 = time.perf_counter()
    kit = algorithms.BatchKit(run, self.tokenizer, self.batch_shape, self.teacher_context, self.updater.playbook, m)
    batch = algo.build_batch(exp, result, kit)
    times["batch"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    self.state, step_metrics = self.step_fn(self.state, batch)
    step_metrics = _floats(step_metrics)
    times["step"] = time.perf_counter() - t0
    out: dict[str, Any] = dict(m)
    out.update({f"train/{k}": v for k, v in step_metrics.items()})
    out.update({f"time/{k}": v for k, v in times.items()})
    out["throughput/rollout_tokens_per_s"] = exp.n_tokens / max(times["rollout"], 1e-9)
    out.update(exp.throughput)
    return out

  def sync_context(self, result):
    """Multi-host: every process ran the same (collective) generation; process 0's context state wins."""
    if jax.process_count() == 1:
      return result
    payload = host_sync.broadcast_json({"state": self.updater.state_dict(), "reflections": result.reflections,
                                        "solutions_before": result.solutions_before})
    self.updater.load_state_dict(payload["state"])
    return dataclasses.replace(result, reflections=payload["reflections"],
                               solutions_before=payload["solutions_before"])

  # ----- validation ----------------------------------------------------------------------------------------
  def validate(self) -> dict[str, float]:
    step = self.cursor.step
    t0 = time.perf_counter()
    res, extra = self.interaction.validate(self.key(EVAL, step))
    if not res and not extra:
      return {}
    self.history[str(step)] = dict(res)
    out: dict[str, Any] = {f"val/{k}": v for k, v in res.items()}
    out.update(extra)
    out["time/validation"] = time.perf_counter() - t0
    best, _ = evaluation.rank_rule({int(s): v for s, v in self.history.items()})
    out["val/rank_rule_best_step"] = float(best)
    self.writer.write(step, out)
    return dict(res)

  # ----- the loop ------------------------------------------------------------------------------------------
  def outer_batches(self) -> list[list[Any]]:
    return outer_batches(self.data.train, self.cfg.rollout.batch_prompts, self.cfg.data.drop_last)

  def run(self) -> RunSummary:
    run, cur = self.cfg, self.cursor
    K, epochs, max_steps = run.rollout.inner_updates, run.data.epochs, run.train.max_steps
    every_outer = run.eval.every_outer
    batches = self.outer_batches()
    status = "finished"
    saved_step = self.resumed_from
    with ck.PreemptionFlag() as flag:
      if self.resumed_from is None and cur.step == 0 and run.eval.before_training:
        self.say("validation before training ...")
        self.validate()
      self.say(f"training: {len(batches)} outer batches x {K} inner updates per epoch, {epochs} epoch(s)"
               + (f", stopping at step {max_steps}" if max_steps else "") + f"; next step {cur.step + 1}")
      progress = mx.progress(total=epochs * len(batches) * K, desc=f"{run.algorithm} steps",
                             enabled=None if run.metrics.progress else False)
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
    return RunSummary(status, cur.step, str(self.workdir), self.ckpt.steps(), dict(self.history), best)

  def close(self) -> None:
    try:
      self.interaction.close()
    finally:
      if self.ckpt is not None:
        self.ckpt.close()
      self.writer.close()


def evaluate_checkpoint(cfg: Any, run_dir: str | pathlib.Path, step: int | None = None) -> tuple[int, dict[str, float]]:
  """Validation metrics (the config's `eval.*`) of a run's checkpoint (latest or `step`); writes nothing there."""
  trainer = Trainer(cfg, run_dir, eval_only=True, eval_step=step)
  try:
    return int(trainer.resumed_from), trainer.validate()
  finally:
    trainer.close()


def train(cfg: Any, workdir: str | pathlib.Path) -> RunSummary:
  """Run (or resume) the configured algorithm on the configured task in `workdir`."""
  trainer = Trainer(cfg, workdir)
  try:
    return trainer.run()
  finally:
    trainer.close()
