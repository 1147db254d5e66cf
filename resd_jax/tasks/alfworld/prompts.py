"""Our own prompt text for the ALFWorld agent: the system message and how each turn is shown to the model."""
from __future__ import annotations

PROMPT_VERSION = 1
MAX_LISTED_COMMANDS = 60  # admissible lists in large official rooms can exceed 100 entries

SYSTEM = (
  "You are a household robot in a text world. Each turn you read what you observe and answer with exactly "
  "one command that moves you toward the task. Useful commands: go to <receptacle>, open <receptacle>, "
  "close <receptacle>, take <object> from <receptacle>, move <object> to <receptacle>, "
  "clean <object> with <sinkbasin>, heat <object> with <microwave>, cool <object> with <fridge>, "
  "use <lamp>, examine <something>, look, inventory. Objects are named with numbers, e.g. \"mug 2\". "
  "You may think first, then end your reply with a final line of the form:\nAction: <command>"
)


def render_commands(admissible: list[str], limit: int = MAX_LISTED_COMMANDS) -> str:
  """The admissible commands as one comma-separated line, cut to `limit` entries."""
  shown = list(admissible[:limit])
  more = len(admissible) - len(shown)
  return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


def first_user_message(observation: str, admissible: list[str] | None = None) -> str:
  """The first user turn: the room and the task as the engine describes them."""
  text = f"{observation.strip()}\n"
  if admissible:
    text += f"\nCommands you can use now: {render_commands(admissible)}\n"
  return text + "\nWhat do you do?"


def turn_user_message(feedback: str, admissible: list[str] | None = None) -> str:
  """A later user turn: the engine's answer to the previous command."""
  text = f"Observation: {feedback.strip()}\n"
  if admissible:
    text += f"Commands you can use now: {render_commands(admissible)}\n"
  return text


def episode_feedback(task: str, transcript: list[tuple[str, str]], won: bool, steps: int, max_steps: int,
                     cap: int = 2000) -> str:
  """The text feedback of a whole episode, for the reflector / teacher: the outcome and, for a failure, the
  last exchanges (command -> engine answer), most recent last, within `cap` characters."""
  if won:
    return f"Task: {task}\nOutcome: success in {steps} steps."
  why = "ran out of steps" if steps >= max_steps else "stopped before the task was done"
  head = f"Task: {task}\nOutcome: failure, {why} ({steps}/{max_steps} steps).\nLast steps:\n"
  lines: list[str] = []
  budget = cap - len(head)
  for command, answer in reversed(transcript):
    line = f"> {command[:120]}\n{answer.strip()[:300]}\n"
    if len(line) > budget:
      break
    lines.append(line)
    budget -= len(line)
  return head + "".join(reversed(lines))
