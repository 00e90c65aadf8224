"""`fifa agent`: reports for a manifest (resumable), one image's verdict with its evidence drawn.

A manifest is JSONL, one image per line:
  {"image": "fake/0001.png", "label": "fake", "domain": "face"}
`image` is the image's id and, relative to the manifest's folder, its path (or give
`path`); `label` (real/fake) is needed for `fifa agent eval` only; `domain` groups the
table's rows (face, edit, semantic...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fifa_jax.agent import evaluate
from fifa_jax.agent.reports import Report, ReportError, mask_from_json
from fifa_jax.infer import overlay as overlay_lib


def read_manifest(path: str | os.PathLike, need_label: bool = False) -> list[dict]:
  """Rows with "image", "path" (resolved) and, where given, "label" and "domain"."""
  path = Path(path)
  try:
    lines = path.read_text().splitlines()
  except OSError as e:
    raise ReportError(f"{path}: cannot read the manifest ({e.strerror})") from None
  rows, seen = [], set()
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ReportError(f"{path}:{i}: not JSON ({e.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("image"), str):
      raise ReportError(f"{path}:{i}: a manifest line needs an \"image\" string")
    if need_label and row.get("label") not in ("real", "fake"):
      raise ReportError(f"{path}:{i}: label {row.get('label')!r} is not real or fake")
    if row["image"] in seen:
      raise ReportError(f"{path}:{i}: image {row['image']!r} is listed twice")
    seen.add(row["image"])
    p = Path(row.get("path") or row["image"])
    rows.append({**row, "path": str(p if p.is_absolute() else path.parent / p)})
  if not rows:
    raise ReportError(f"{path}: the manifest lists no image")
  return rows


def _done(out: Path) -> set[tuple[str, str]]:
  """(image, expert) pairs already in `out`; a line cut short by an interruption is dropped."""
  if not out.exists():
    return set()
  keep, done = [], set()
  for line in out.read_text().splitlines():
    try:
      r = Report.from_json(json.loads(line))
    except (json.JSONDecodeError, ReportError, TypeError):
      continue  # the last line of an interrupted run
    keep.append(line)
    done.add((r.image, r.expert))
  tmp = out.with_name(out.name + ".tmp")
  tmp.write_text("".join(l + "\n" for l in keep))
  os.replace(tmp, out)
  return done


def collect(experts: Sequence, rows: Sequence[dict], out: str | os.PathLike, *,
            chunk: int = 8, progress: bool = True) -> dict[str, int]:
  """Every expert's report on every row, appended to `out` (JSONL) as they come; a rerun
  asks only for what `out` lacks.  Returns {"written", "skipped", "abstained"}."""
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  done = _done(out)
  counts = {"written": 0, "skipped": 0, "abstained": 0}
  todo = []
  for e in experts:
    items = [(r["image"], r["path"]) for r in rows if (r["image"], e.name) not in done]
    counts["skipped"] += len(rows) - len(items)
    todo += [(e, items[i:i + chunk]) for i in range(0, len(items), chunk)]
  bar = tqdm(total=sum(len(items) for _, items in todo), desc="reports", unit="report",
             disable=not progress)
  with out.open("a") as f:
    for expert, items in todo:
      for r in expert.report_many(items):
        f.write(json.dumps(r.validate().to_json()) + "\n")
        counts["written"] += 1
        counts["abstained"] += r.label == "abstain"
      f.flush()
      os.fsync(f.fileno())
      bar.update(len(items))
  bar.close()
  return counts


ROUND_COLOURS = [(255, 64, 64), (255, 160, 0), (255, 230, 0), (64, 220, 64)]  # rounds 0..3


def _box(image: np.ndarray, box, colour, label: str, scale: int, thick: int = 1, below: bool = False) -> None:
  x1, y1, x2, y2 = (int(round(v)) for v in box)
  cv2.rectangle(image, (x1, y1), (x2, y2), colour, scale * thick)
  y = y2 + 12 * scale if below else y1 + 12 * scale
  cv2.putText(image, label, (x1 + 2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, colour, scale)


def evidence_picture(rgb: np.ndarray, reports: Sequence[Report], title: str | None = None) -> np.ndarray:
  """Each verification round's box (red, orange, yellow, green by round) and the final
  evidence box (white, thick), then the experts' evidence masks blended in, with a legend."""
  image = np.ascontiguousarray(rgb[..., :3]).copy()
  scale = max(1, round(max(image.shape[:2]) / 256))
  for r in reports:
    rounds = r.meta.get("rounds") or []
    for k, rnd in enumerate(rounds):
      if rnd.get("box"):
        _box(image, rnd["box"], ROUND_COLOURS[min(k, len(ROUND_COLOURS) - 1)], f"r{k}", scale)
    if rounds and r.boxes:  # the box in force at the end: the report's evidence
      _box(image, r.boxes[0], (255, 255, 255), "final", scale, thick=3, below=True)
  masks, labels = [], []
  for r in reports:
    names = r.meta.get("mask_labels") or []
    for k, m in enumerate(r.masks):
      masks.append(mask_from_json(m))
      labels.append(f"{r.expert}: {names[k]}" if k < len(names) else f"{r.expert} evidence {k + 1}")
  text = " ".join(f"[{r.expert}: {r.label}]" for r in reports)
  return overlay_lib.draw_overlay(image, masks, labels, title=title, text=text)


def run_one(experts: Sequence, image: str, out: str | os.PathLike, aggregators: Sequence[str],
            accuracy=None, tie: str = "fake", llm=None, learned=None) -> dict:
  """One image: every expert's report, each aggregator's verdict, the evidence picture."""
  from fifa_jax import api  # noqa: PLC0415  (jax and the model's API, only when an image is asked about)
  rgb = api.to_rgb(image)
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  reports = [r for e in experts for r in e.report_many([(image, image)])]
  verdicts = {a: evaluate.aggregator(a, accuracy, tie, llm, learned)(reports).to_json()
              for a in aggregators}
  (out / "reports.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in reports))
  (out / "verdict.json").write_text(json.dumps(verdicts, indent=1))
  title = ", ".join(f"{a}: {v['label']}" for a, v in verdicts.items())
  overlay_lib.save_png(out / "evidence.png", evidence_picture(rgb, reports, title))
  return {"reports": reports, "verdicts": verdicts}
