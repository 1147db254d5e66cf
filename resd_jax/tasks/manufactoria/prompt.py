"""The student prompt for a Manufactoria problem (our own wording; the section structure of docs/TASKS.md §1.6)."""
from __future__ import annotations

_HEADER = """# Manufactoria Factory Language

Write a factory program in the language below that sorts robots exactly as the task asks.

Robots arrive carrying a tape of coloured symbols. Your factory is a network of nodes: each robot enters at the \
start node, is passed from node to node, and either reaches the end node or is thrown out.

## Game Mechanics

Tape colours: R (red) and B (blue) are the basic colours; Y (yellow) and G (green) appear in harder puzzles. A tape \
is written as a string of these letters, for example `RBYG`; the empty tape is the empty string.

What nodes can do:
- pull: read the colour at the front of the tape and remove it;
- paint: add a colour at the back of the tape;
- route: send the robot on to another node.
"""

_OBJECTIVE_SIMPLE = """## Objective

A robot is accepted when it reaches the end node. It is rejected when it is sent to NONE, never reaches the end \
node, or keeps looping without finishing.
"""

_OBJECTIVE_OUTPUT = """## Objective

A robot is accepted when it reaches the end node and its tape at that moment meets the task's requirements. It is \
rejected when it is sent to NONE, keeps looping without finishing, or reaches the end node with a tape that does \
not meet the requirements.
"""

_SYNTAX = """## DSL Syntax

Every program has one start node and one end node:

```manufactoria
START start:
    NEXT <node_id>

END end
```

Node types:

A red/blue puller reads the front colour when it is R or B:
```manufactoria
PULLER_RB <node_id>:
    [R] <node_id>      # front was R: it is removed, go here
    [B] <node_id>      # front was B: it is removed, go here
    [EMPTY] <node_id>  # tape empty, or front is Y/G (left on the tape): go here
```

A yellow/green puller reads the front colour when it is Y or G:
```manufactoria
PULLER_YG <node_id>:
    [Y] <node_id>      # front was Y: it is removed, go here
    [G] <node_id>      # front was G: it is removed, go here
    [EMPTY] <node_id>  # tape empty, or front is R/B (left on the tape): go here
```

Painters add one colour at the back of the tape, then move on:
```manufactoria
PAINTER_RED <node_id>:
    NEXT <node_id>

PAINTER_BLUE <node_id>:
    NEXT <node_id>

PAINTER_YELLOW <node_id>:
    NEXT <node_id>

PAINTER_GREEN <node_id>:
    NEXT <node_id>
```

A puller branch you leave out sends the robot to NONE, which rejects it. You can also write NONE as a target.

## Syntax Rules

1. Node IDs are unique and use only letters, digits and underscores.
2. `#` starts a comment that runs to the end of the line.
3. Indent every route under its node with four spaces or a tab.
4. Colours are written in upper case: R, B, Y, G.
5. {termination}
6. Put your final program inside a block fenced with triple backticks (```manufactoria ... ```).

## Example

A factory that accepts exactly the tapes whose first colour is red:

```manufactoria
START start:
    NEXT first

PULLER_RB first:
    [R] end     # starts with red: accept
    [B] NONE    # starts with blue: reject
                # empty tape or a Y/G front has no branch here: reject

END end
```
"""

_TERMINATION_SIMPLE = "A robot that reaches the end node is accepted; one sent to NONE is rejected."
_TERMINATION_OUTPUT = ("A robot that reaches the end node is accepted if its tape meets the requirements; one sent "
                       "to NONE is rejected.")


def build_prompt(criteria: str, *, check_output: bool = False, colour_note: str = "") -> str:
  """The user message for a problem. `check_output`: some test also checks the final tape."""
  objective = _OBJECTIVE_OUTPUT if check_output else _OBJECTIVE_SIMPLE
  syntax = _SYNTAX.replace("{termination}", _TERMINATION_OUTPUT if check_output else _TERMINATION_SIMPLE)
  task = "# Task\n\nBuild a factory that does the following.\n\n" + criteria.strip()
  if colour_note:
    task += " " + colour_note.strip()
  return "\n".join([_HEADER, objective, syntax, task])
