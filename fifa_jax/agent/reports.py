"""One report schema for every forensic expert, and JSONL in and out.

A report is what one expert says about one image:
  image      the image's path or id
  expert     the expert's name ("face", "edit", "semantic", ...)
  label      "real", "fake" or "abstain" (no face, an unparsed answer, an error)
  p_fake     the expert's probability that the image is fake, or None when it gives none
  text       its explanation
  boxes      [[x1, y1, x2, y2], ...] evidence boxes in image pixels
  masks      [{"size": [h, w], "counts": [...]}, ...] evidence masks (the project's RLE)
  meta       anything else (the verification rounds, the model, the reason for abstaining)

Every expert's own output format is normalised into this by its adapter, so the
aggregators see one thing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fifa_jax.data import records

LABELS = ("real", "fake", "abstain")


class ReportError(ValueError):
  """A report that breaks the schema; the message names the field."""


@dataclasses.dataclass
class Report:
  image: str
  expert: str
  label: str
  p_fake: float | None = None
  text: str = ""
  boxes: list[list[float]] = dataclasses.field(default_factory=list)
  masks: list[dict] = dataclasses.field(default_factory=list)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def validate(self) -> Report:
    where = f"report of {self.expert!r} on {self.image!r}"
    if not isinstance(self.image, str) or not self.image:
      raise ReportError(f"{where}: image must be a non-empty string")
    if not isinstance(self.expert, str) or not self.expert:
      raise ReportError(f"{where}: expert must be a non-empty string")
    if self.label not in LABELS:
      raise ReportError(f"{where}: label {self.label!r} is not one of {', '.join(LABELS)}")
    if self.p_fake is not None:
      if not isinstance(self.p_fake, (int, float)) or math.isnan(self.p_fake) \
          or not 0.0 <= self.p_fake <= 1.0:
        raise ReportError(f"{where}: p_fake {self.p_fake!r} is not a probability in [0, 1]")
    for b in self.boxes:
      if (not isinstance(b, (list, tuple)) or len(b) != 4
          or not all(isinstance(v, (int, float)) for v in b) or not (b[0] < b[2] and b[1] < b[3])):
        raise ReportError(f"{where}: box {b!r} is not [x1, y1, x2, y2] with x1 < x2, y1 < y2")
    for m in self.masks:
      if not isinstance(m, dict) or set(m) != {"size", "counts"}:
        raise ReportError(f"{where}: a mask must be {{'size': [h, w], 'counts': [...]}}")
    return self

  @property
  def says_fake(self) -> bool | None:
    """True/False for a verdict, None for an abstention."""
    return None if self.label == "abstain" else self.label == "fake"

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Any) -> Report:
    if not isinstance(d, dict):
      raise ReportError(f"a report must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ReportError(f"unknown report fields {sorted(unknown)}; expected {sorted(names)}")
    missing = {"image", "expert", "label"} - set(d)
    if missing:
      raise ReportError(f"report without {', '.join(sorted(missing))}")
    return cls(**d).validate()


def mask_json(mask: np.ndarray) -> dict:
  """A boolean mask as the report's RLE: {"size": [h, w], "counts": [run, ...]}."""
  rle = records.rle_encode(mask)
  return {"size": rle["size"], "counts": np.frombuffer(rle["counts"], "<u4").tolist()}


def mask_from_json(m: dict) -> np.ndarray:
  return records.rle_decode({"size": m["size"], "counts": np.asarray(m["counts"], "<u4").tobytes()})


def mask_box(mask: np.ndarray) -> list[float] | None:
  ys, xs = np.nonzero(mask)
  if not len(xs):
    return None
  return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def box_iou(a, b) -> float:
  """IoU of two [x1, y1, x2, y2] boxes."""
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def abstain(image: str, expert: str, reason: str, **meta) -> Report:
  """An expert that has nothing to say about this image, and why."""
  return Report(image=image, expert=expert, label="abstain", meta={"reason": reason, **meta})


def write_reports(path: str | os.PathLike, reports: Iterable[Report]) -> int:
  """Write reports as JSONL (to a temporary name, renamed when complete)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  n = 0
  with tmp.open("w") as f:
    for r in reports:
      f.write(json.dumps(r.validate().to_json()) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def read_reports(path: str | os.PathLike) -> Iterator[Report]:
  """Reports from JSONL; a bad line is a ReportError naming the file and line."""
  with Path(path).open() as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield Report.from_json(json.loads(line))
      except (json.JSONDecodeError, ReportError, TypeError) as e:
        raise ReportError(f"{path}:{i}: {e}") from None
