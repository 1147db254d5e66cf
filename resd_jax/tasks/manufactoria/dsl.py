"""Parser for the Manufactoria factory DSL: program text -> `Program` (nodes with their routes).

The accepted language is the one the RESD reference grader accepts (docs/TASKS.md §1.1); error messages carry the
same meaning and wording so that feedback shown to the model matches what the paper's runs saw.

Bound: programs longer than `MAX_PROGRAM_CHARS` are rejected up front with a `ParseError` (the reference has no
bound; no real factory comes anywhere near it). Everything else is a single linear pass over the lines.
"""
from __future__ import annotations

import dataclasses
import enum
import re

MAX_PROGRAM_CHARS = 200_000


class ParseError(Exception):
  """A program that does not follow the DSL. `str(e)` is `Line <n>: <text>` or just `<text>`."""

  def __init__(self, text: str, line: int | None = None):
    self.text = text
    self.line = line
    super().__init__(f"Line {line}: {text}" if line is not None else text)


class NodeType(enum.Enum):
  START = "START"
  END = "END"
  PULLER_RB = "PULLER_RB"
  PULLER_YG = "PULLER_YG"
  PAINTER_RED = "PAINTER_RED"
  PAINTER_BLUE = "PAINTER_BLUE"
  PAINTER_YELLOW = "PAINTER_YELLOW"
  PAINTER_GREEN = "PAINTER_GREEN"


# Colour a painter appends to the tape.
PAINT_COLOUR = {NodeType.PAINTER_RED: "R", NodeType.PAINTER_BLUE: "B", NodeType.PAINTER_YELLOW: "Y",
                NodeType.PAINTER_GREEN: "G"}
# Colours a puller can read (and therefore consume).
PULL_COLOURS = {NodeType.PULLER_RB: ("R", "B"), NodeType.PULLER_YG: ("Y", "G")}

_TYPES = "|".join(t.value for t in NodeType)
_DECL_RE = re.compile(rf"^({_TYPES})\s+(\w+)(:)?\s*(#.*)?$")
_PULL_RE = re.compile(r"^\[(R|B|Y|G|EMPTY)\]\s+(\w+)\s*(#.*)?$")
_NEXT_RE = re.compile(r"^NEXT\s+(\w+)\s*(#.*)?$")


@dataclasses.dataclass
class Node:
  """One declared node. `routes` keeps the listed order: (condition, target); condition "NEXT" for non-pullers."""
  id: str
  type: NodeType
  line: int  # 1-based line of the declaration
  routes: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  # condition -> target with the first listed route winning; filled by `parse` once the block is complete
  route_map: dict[str, str] = dataclasses.field(default_factory=dict)

  def target(self, condition: str) -> str:
    """Where this node sends the robot on `condition`; unlisted -> "NONE"."""
    return self.route_map.get(condition, "NONE")


@dataclasses.dataclass
class Program:
  nodes: dict[str, Node]  # by ID, in declaration order
  cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # e.g. the simulator's table


def _is_route_line(raw: str) -> bool:
  return raw.startswith("    ") or raw.startswith("\t")


def _clean_lines(text: str) -> list[tuple[int, str]]:
  """(line number, raw line) of every meaningful line: fences dropped, blanks and full-line comments dropped."""
  lines = text.strip().split("\n")
  numbered = list(enumerate(lines, start=1))
  if numbered and numbered[0][1].strip() == "```":
    numbered = numbered[1:]
  if numbered and numbered[-1][1].strip() == "```":
    numbered = numbered[:-1]
  return [(n, raw) for n, raw in numbered if raw.strip() and not raw.strip().startswith("#")]


def _check_block(node: Node) -> None:
  """Route-count rules, checked once a node's block is complete; then fixes the route table."""
  if node.type is NodeType.START and (len(node.routes) != 1 or node.routes[0][0] != "NEXT"):
    raise ParseError("START node must have exactly one NEXT route", node.line)
  if node.type in PAINT_COLOUR and (len(node.routes) != 1 or node.routes[0][0] != "NEXT"):
    raise ParseError("PAINTER nodes must have exactly one NEXT route", node.line)
  for cond, tgt in node.routes:
    node.route_map.setdefault(cond, tgt)


def _parse_route(node: Node, stripped: str, line: int) -> tuple[str, str]:
  if node.type is NodeType.END:
    raise ParseError("END nodes cannot have routes", line)
  if node.type in PULL_COLOURS:
    m = _PULL_RE.match(stripped)
    if not m:
      raise ParseError(f"Invalid puller route format: {stripped}", line)
    cond = m.group(1)
    if cond != "EMPTY" and cond not in PULL_COLOURS[node.type]:
      raise ParseError(f"Invalid condition '{cond}' for {node.type.value}", line)
    return cond, m.group(2)
  m = _NEXT_RE.match(stripped)
  if not m:
    raise ParseError(f"Invalid NEXT route format: {stripped}", line)
  return "NEXT", m.group(1)


def _parse_decl(stripped: str, line: int, nodes: dict[str, Node]) -> Node:
  m = _DECL_RE.match(stripped)
  if not m:
    raise ParseError(f"Invalid node declaration: {stripped}", line)
  ntype, nid = NodeType(m.group(1)), m.group(2)
  has_colon = ":" in stripped.split("#", 1)[0]
  if ntype is NodeType.END and has_colon:
    raise ParseError("END nodes should not have a colon", line)
  if ntype is not NodeType.END and not has_colon:
    raise ParseError(f"{ntype.value} nodes must have a colon", line)
  if nid in nodes:
    raise ParseError(f"Duplicate node ID: {nid}", line)
  if ntype is NodeType.START and nid != "start":
    raise ParseError("START node must have ID 'start'", line)
  if ntype is NodeType.END and nid != "end":
    raise ParseError("END node must have ID 'end'", line)
  return Node(nid, ntype, line)


def parse(text: str) -> Program:
  """Parse program text; raises `ParseError` on the first problem found."""
  if not isinstance(text, str):
    raise ParseError("Program must be text")
  if len(text) > MAX_PROGRAM_CHARS:
    raise ParseError(f"Program too long ({len(text)} characters; the limit is {MAX_PROGRAM_CHARS})")
  lines = _clean_lines(text)
  if not lines:
    raise ParseError("Empty program")
  nodes: dict[str, Node] = {}
  current: Node | None = None
  for line, raw in lines:
    stripped = raw.strip()
    if current is not None and _is_route_line(raw):
      current.routes.append(_parse_route(current, stripped, line))
      continue
    if current is not None:
      _check_block(current)
    current = _parse_decl(stripped, line, nodes)
    nodes[current.id] = current
  if current is not None:
    _check_block(current)
  if not any(n.type is NodeType.START for n in nodes.values()):
    raise ParseError("Program must have a START node")
  if not any(n.type is NodeType.END for n in nodes.values()):
    raise ParseError("Program must have an END node")
  for node in nodes.values():
    for _, tgt in node.routes:
      if tgt not in ("NONE", "END") and tgt not in nodes:
        raise ParseError(f"Node '{node.id}' references undefined node '{tgt}'", node.line)
  return Program(nodes)
