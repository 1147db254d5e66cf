"""The playbook: an ordered, sectioned list of one-line lessons with helpful / harmful counters.

The playbook is the textual memory RESD grows from failures. It is plain data (dataclasses of str and int),
JSON round-trips exactly, and renders to the text the models see:

    ## STRATEGIES AND INSIGHTS
    [str-00003] helpful=2 harmful=0 :: Check the empty-tape branch of every puller.

`parse_rendered` reads that text back; render -> parse -> render is the identity.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable

from resd_jax.context.text import one_line

# (section key, heading shown to models, id prefix), in render order.
SECTIONS: tuple[tuple[str, str, str], ...] = (
  ("strategies_and_insights", "STRATEGIES AND INSIGHTS", "str"),
  ("formulas_and_calculations", "FORMULAS AND CALCULATIONS", "calc"),
  ("code_snippets_and_templates", "CODE SNIPPETS AND TEMPLATES", "code"),
  ("common_mistakes_to_avoid", "COMMON MISTAKES TO AVOID", "err"),
  ("problem_solving_heuristics", "PROBLEM SOLVING HEURISTICS", "heur"),
  ("context_clues_and_indicators", "CONTEXT CLUES AND INDICATORS", "ctx"),
  ("others", "OTHERS", "misc"),
)
SECTION_KEYS = tuple(s[0] for s in SECTIONS)
_PREFIX = {key: prefix for key, _, prefix in SECTIONS}
_BY_HEADING = {heading: key for key, heading, _ in SECTIONS}
_HEADING = {key: heading for key, heading, _ in SECTIONS}
ID_DIGITS = 5
ID_RE = re.compile(r"^[a-z]+-\d{%d,}$" % ID_DIGITS)
_LINE_RE = re.compile(r"^\[([a-z]+-\d+)\] helpful=(\d+) harmful=(\d+) :: (.*)$")


def normalize_section(name: Any) -> str:
  """Map a model-written section name onto a known key: lower case, spaces -> `_`, `&` -> `and`.

  Unknown or non-string names land in `others`.
  """
  if not isinstance(name, str):
    return "others"
  key = name.strip().lower().replace("&", " and ")
  key = re.sub(r"[\s\-]+", "_", key).strip("_")
  return key if key in _PREFIX else "others"


@dataclasses.dataclass
class Entry:
  """One lesson. `last_tagged` is the playbook update count at which it was last tagged helpful/harmful
  (its creation update until then); staleness pruning compares it with `Playbook.update_count`."""
  id: str
  section: str
  content: str
  helpful: int = 0
  harmful: int = 0
  created_step: int = 0
  last_tagged: int = 0

  @property
  def value(self) -> int:
    """Net usefulness used to pick which entries to drop first when space runs out."""
    return self.helpful - self.harmful

  def render(self) -> str:
    return f"[{self.id}] helpful={self.helpful} harmful={self.harmful} :: {self.content}"


@dataclasses.dataclass
class Playbook:
  """Ordered entries plus the global id counter (never reused, even after pruning) and update count."""
  entries: list[Entry] = dataclasses.field(default_factory=list)
  next_id: int = 1
  update_count: int = 0

  # ----- access -----------------------------------------------------------------------------------------
  def __len__(self) -> int:
    return len(self.entries)

  def ids(self) -> list[str]:
    return [e.id for e in self.entries]

  def get(self, entry_id: Any) -> Entry | None:
    if not isinstance(entry_id, str):
      return None
    for e in self.entries:
      if e.id == entry_id:
        return e
    return None

  # ----- mutation ---------------------------------------------------------------------------------------
  def add(self, section: Any, content: str, step: int, max_chars: int = 500) -> Entry | None:
    """Append a new entry; returns None (nothing added) when the content is empty after cleaning."""
    content = one_line(content, max_chars)
    if not content:
      return None
    section = normalize_section(section)
    entry = Entry(id=f"{_PREFIX[section]}-{self.next_id:0{ID_DIGITS}d}", section=section, content=content,
                  created_step=step, last_tagged=self.update_count)
    self.next_id += 1
    self.entries.append(entry)
    return entry

  def remove(self, ids: Iterable[str]) -> int:
    drop = set(ids)
    before = len(self.entries)
    self.entries = [e for e in self.entries if e.id not in drop]
    return before - len(self.entries)

  def tag(self, entry_id: Any, tag: str) -> bool:
    """Apply one helpful / harmful / neutral tag; False when the id is unknown."""
    entry = self.get(entry_id)
    if entry is None:
      return False
    if tag == "helpful":
      entry.helpful += 1
      entry.last_tagged = self.update_count
    elif tag == "harmful":
      entry.harmful += 1
      entry.last_tagged = self.update_count
    return True

  def lowest_value_order(self) -> list[Entry]:
    """Entries from the first to drop to the last: lowest value, then longest untagged, then oldest id."""
    return sorted(self.entries, key=lambda e: (e.value, e.last_tagged, _id_number(e.id)))

  def subset(self, keep_ids: Iterable[str]) -> "Playbook":
    """A copy holding only `keep_ids` (order preserved); used to shrink the teacher's playbook."""
    keep = set(keep_ids)
    return Playbook([dataclasses.replace(e) for e in self.entries if e.id in keep], self.next_id,
                    self.update_count)

  # ----- text -------------------------------------------------------------------------------------------
  def render(self) -> str:
    """The text models see: a heading per non-empty section, one line per entry; "" when empty."""
    blocks = []
    for key in SECTION_KEYS:
      lines = [e.render() for e in self.entries if e.section == key]
      if lines:
        blocks.append("\n".join([f"## {_HEADING[key]}"] + lines))
    return "\n\n".join(blocks)

  @classmethod
  def parse_rendered(cls, text: str) -> "Playbook":
    """Read `render()` output back (counters and contents; step bookkeeping is not part of the text).

    Lines that are not headings or entries are ignored; `next_id` continues after the largest id seen.
    """
    pb = cls()
    section = "others"
    for line in text.splitlines():
      if line.startswith("## "):
        section = _BY_HEADING.get(line[3:].strip(), "others")
        continue
      m = _LINE_RE.match(line)
      if m:
        pb.entries.append(Entry(id=m.group(1), section=section, content=m.group(4),
                                helpful=int(m.group(2)), harmful=int(m.group(3))))
    if pb.entries:
      pb.next_id = max(_id_number(e.id) for e in pb.entries) + 1
    return pb

  # ----- stats ------------------------------------------------------------------------------------------
  def stats(self) -> dict[str, Any]:
    """Counts the curator sees and the trainer logs."""
    sections = {}
    for key in SECTION_KEYS:
      es = [e for e in self.entries if e.section == key]
      sections[key] = {"count": len(es), "helpful": sum(e.helpful for e in es),
                       "harmful": sum(e.harmful for e in es)}
    return {
      "total": len(self.entries),
      "high_performing": sum(e.helpful > 5 and e.harmful < 2 for e in self.entries),
      "problematic": sum(e.harmful >= e.helpful and e.harmful > 0 for e in self.entries),
      "unused": sum(e.helpful == 0 and e.harmful == 0 for e in self.entries),
      "sections": sections,
    }

  # ----- serialisation ----------------------------------------------------------------------------------
  def to_dict(self) -> dict[str, Any]:
    return {"entries": [dataclasses.asdict(e) for e in self.entries], "next_id": self.next_id,
            "update_count": self.update_count}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Playbook":
    try:
      entries = [Entry(**e) for e in d["entries"]]
      pb = cls(entries, int(d["next_id"]), int(d["update_count"]))
    except (KeyError, TypeError) as err:
      raise ValueError(f"playbook state is malformed ({err}); expected keys entries/next_id/update_count "
                       "as written by Playbook.to_dict") from None
    for e in pb.entries:
      if e.section not in _PREFIX:
        raise ValueError(f"playbook entry {e.id!r} has unknown section {e.section!r}; known: {SECTION_KEYS}")
    return pb

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Playbook":
    return cls.from_dict(json.loads(text))


def _id_number(entry_id: str) -> int:
  try:
    return int(entry_id.rsplit("-", 1)[1])
  except (IndexError, ValueError):
    return 0
