"""Task interfaces shared by every task: examples, grades, the Task protocol and a registry.

A single-turn task turns a dataset row into an `Example` (chat messages + metadata) and grades one response
text into a `Grade`. Multi-turn tasks (ALFWorld) additionally expose an `Env`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

# Hard cap for any feedback string handed to the teacher / reflector.
FEEDBACK_CAP = 2000


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt. `id` is stable across runs (used by the solution buffer and the data cursor)."""
  id: str
  messages: tuple[dict[str, str], ...]  # chat messages [{"role": ..., "content": ...}]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # task-specific (tests, gold, split, ...)

  @property
  def prompt_text(self) -> str:
    """The last user message: what reflection / curation prompts quote as "the task"."""
    users = [m["content"] for m in self.messages if m.get("role") == "user"]
    return users[-1] if users else ""


@dataclasses.dataclass(frozen=True)
class Grade:
  """The outcome of grading one response.

  reward: the scalar training reward (sparse: 1.0 only when every test passes, unless a task says otherwise).
  acc: fraction of tests passed in [0, 1].
  feedback: text for the teacher / reflector; "" means "no feedback".
  info: flat dict of numeric flags logged as metrics (incorrect_format, truncated, timed_out, ...).
  """
  reward: float
  acc: float
  feedback: str = ""
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def success(self) -> bool:
    return self.reward >= 1.0


@runtime_checkable
class Task(Protocol):
  """A single-turn task."""
  name: str

  def prompts(self, split: str) -> Iterable[Example]:
    """Examples of `split` ("train" / "test") in a deterministic order."""

  def grade(self, example: Example, response_text: str, *, truncated: bool = False) -> Grade:
    """Grade one response. Never raises on bad model output.

    truncated: the response has no end-of-sequence token (generation hit max length). It changes feedback
      wording only, never the score.
    """


@runtime_checkable
class Env(Protocol):
  """A multi-turn environment: feedback text goes in `info["feedback"]`."""

  def reset(self) -> str: ...

  def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]: ...


class RunTask:
  """What a registered task tells the training loop, with the defaults of a single-turn task. Tasks inherit it.

  from_run(run, **options): the task built from the typed run config (`resd_jax.run_config.RunConfig`); the
    task reads its own keys here, so the loop never names a task. options come from the algorithm
    (`Algorithm.task_options`, e.g. GRPO's partial credit) and may be ignored.
  check_run(run): the task's own config rules (one-line `ConfigError`), run once by `config_schema.validate`.
  multi_turn: episodes through `make_envs()` (the loop's multi-turn interaction) instead of single responses.
  turns_per_sample(run): train rows one sample can fill (multi-turn: one row per assistant turn).
  needs_data: no generator, so `data.train_path` and `data.test_path` are required.
  """
  multi_turn: bool = False
  needs_data: bool = False

  @classmethod
  def from_run(cls, run: Any, **options: Any) -> Any:
    return cls()

  @classmethod
  def check_run(cls, run: Any) -> None:
    return None

  @classmethod
  def turns_per_sample(cls, run: Any) -> int:
    return 1


_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Class decorator: `@register("manufactoria")` makes the task constructible by name."""
  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"task {name!r} is registered twice")
    _with_run_hooks(factory)
    _REGISTRY[name] = factory
    return factory
  return wrap


def _with_run_hooks(factory: Any) -> None:
  """A task that does not inherit `RunTask` gets its defaults (a single-turn task built with no arguments)."""
  for attr in ("multi_turn", "needs_data", "from_run", "check_run", "turns_per_sample"):
    if hasattr(factory, attr):
      continue
    if isinstance(factory, type):
      setattr(factory, attr, RunTask.__dict__[attr])
    elif attr == "from_run":
      setattr(factory, attr, lambda run, **options: factory())
    elif attr in ("multi_turn", "needs_data"):
      setattr(factory, attr, False)
    else:
      setattr(factory, attr, (lambda run: None) if attr == "check_run" else (lambda run: 1))


def make(name: str, **kwargs) -> Any:
  """Build a registered task by name, e.g. `make("finer", path=...)`."""
  _import_builtin_tasks()
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; known tasks: {sorted(_REGISTRY)}")
  return _REGISTRY[name](**kwargs)


def task_class(name: str) -> type:
  """The registered class of task `name` (its `RunTask` hooks: from_run, check_run, multi_turn, ...)."""
  _import_builtin_tasks()
  if name not in _REGISTRY:
    raise ValueError(f"task.name={name!r} is not a registered task; known tasks: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def registered() -> list[str]:
  _import_builtin_tasks()
  return sorted(_REGISTRY)


def _import_builtin_tasks() -> None:
  import importlib
  for mod in ("resd_jax.tasks.manufactoria", "resd_jax.tasks.bouncingsim", "resd_jax.tasks.finer",
              "resd_jax.tasks.alfworld"):
    try:
      importlib.import_module(mod)
    except ModuleNotFoundError as e:  # a task module not written yet / optional dependency missing
      if e.name is None or not e.name.startswith("resd_jax"):
        raise


def iter_batches(examples: Iterable[Example], batch_size: int) -> Iterator[list[Example]]:
  batch: list[Example] = []
  for ex in examples:
    batch.append(ex)
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch
