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


_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Class decorator: `@register("manufactoria")` makes the task constructible by name."""
  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"task {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory
  return wrap


def make(name: str, **kwargs) -> Any:
  """Build a registered task by name, e.g. `make("finer", path=...)`."""
  _import_builtin_tasks()
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; known tasks: {sorted(_REGISTRY)}")
  return _REGISTRY[name](**kwargs)


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
