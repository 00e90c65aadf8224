"""Reading answers and writing reports in the layout of the paper's Tables 3-5.

Det./Cls. answers are free text; `parse_det` and `parse_cls` read them the way
the templates in fifa_jax.tokens write them ("This face is fake, made by
attribute manipulation."), tolerant of paraphrase.  An answer that names no
class scores as wrong (-1), never as a guess.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

from fifa_jax import tokens

_FAKE = re.compile(r"\b(fake|forged|manipulated|tampered|synthesi[sz]ed|deepfake)\b", re.I)
_REAL = re.compile(r"\b(real|authentic|genuine|bona fide|pristine)\b", re.I)
_NEGATED_FAKE = re.compile(r"\bnot\s+(fake|forged|manipulated|tampered)\b", re.I)


def parse_det(text: str) -> int:
  """1 fake, 0 real, -1 when the answer commits to neither."""
  text = tokens.strip_markers(text)
  if _NEGATED_FAKE.search(text):
    return 0
  fake, real = _FAKE.search(text), _REAL.search(text)
  if fake and real:  # the first word that decides wins: "real ... not fake" is handled above
    return 1 if fake.start() < real.start() else 0
  return 1 if fake else 0 if real else -1


def parse_cls(text: str) -> int:
  """Index into tokens.CLS_CLASSES, or -1."""
  low = tokens.strip_markers(text).lower()
  hits = [(low.find(c), i) for i, c in enumerate(tokens.CLS_CLASSES[1:], 1) if c in low]
  if hits:
    return min(hits)[1]
  return 0 if parse_det(text) == 0 else -1


# Column order of Table 3 (two halves in the paper; one table here).
TABLE3 = (("Det.", "ACER"), ("Det.", "Acc."), ("Det.", "F1"), ("Cls.", "Acc."),
          ("I-TOE", "METEOR"), ("I-Loc.", "mIoU"), ("I-AGE", "METEOR"), ("I-AGE", "mIoU"),
          ("R-TOE", "METEOR"), ("R-Loc.", "mIoU"), ("R-AGE", "METEOR"), ("R-AGE", "mIoU"),
          ("B-TOE", "METEOR"), ("B-Loc.", "mIoU"), ("B-AGE", "METEOR"), ("B-AGE", "mIoU"))
TABLE4 = (("Det.", "Acc."), ("Det.", "Recall"), ("Det.", "Precision"), ("Det.", "F1"),
          ("I-TOE", "BLEU-4"), ("I-TOE", "CIDEr"), ("I-TOE", "ROUGE-L"), ("I-TOE", "METEOR"))
TABLE5 = (("Det.", "ACER"), ("Cls.", "Acc."), ("I-TOE", "ROUGE-L"))
LAYOUTS = {"fifa-bench": TABLE3, "dd-vqa": TABLE4, "dfa-bench": TABLE5}

# Report column -> key in a task's metric dict.
_KEYS = {"ACER": "ACER", "Acc.": "accuracy", "F1": "F1", "Recall": "recall",
         "Precision": "precision", "METEOR": "METEOR", "mIoU": "mIoU", "BLEU-4": "BLEU-4",
         "CIDEr": "CIDEr", "ROUGE-L": "ROUGE-L"}
_TASK = {tokens.TASK_NAMES[t]: t for t in tokens.TASKS}


def cell(metrics: Mapping[str, Mapping[str, float]], task_name: str, column: str) -> float:
  """A table cell in the paper's units: percentages, except CIDEr (as Table 4)."""
  value = metrics.get(_TASK[task_name], {}).get(_KEYS[column], math.nan)
  return value if column == "CIDEr" else value * 100


def table(metrics: Mapping[str, Mapping[str, float]], layout: str = "fifa-bench",
          name: str = "fifa-jax") -> dict:
  """{"columns": [...], "rows": [{"method": name, "Det. ACER": 4.47, ...}]}."""
  cols = LAYOUTS[layout]
  row = {"method": name}
  for task_name, column in cols:
    row[f"{task_name} {column}"] = cell(metrics, task_name, column)
  return {"layout": layout, "columns": [f"{t} {c}" for t, c in cols], "rows": [row]}


def markdown(tab: dict, digits: int = 2) -> str:
  cols = tab["columns"]

  def fmt(column: str, v) -> str:
    if isinstance(v, float) and math.isnan(v):
      return "-"
    return f"{v:.3f}" if column.endswith("CIDEr") else f"{v:.{digits}f}"

  lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for row in tab["rows"]:
    lines.append(f"| {row['method']} | " + " | ".join(fmt(c, row[c]) for c in cols) + " |")
  return "\n".join(lines) + "\n"


def to_json(tab: dict, metrics: Mapping) -> str:
  """The table plus every metric per task (NaN written as null)."""
  clean = lambda x: None if isinstance(x, float) and math.isnan(x) else x
  walk = lambda o: ({k: walk(v) for k, v in o.items()} if isinstance(o, Mapping)
                    else [walk(v) for v in o] if isinstance(o, (list, tuple)) else clean(o))
  return json.dumps({"table": walk(tab), "per_task": walk(metrics)}, indent=1)
