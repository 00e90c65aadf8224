"""`fifa data show SHARD INDEX --out PNG`: one QA record drawn for a person.

Left: the image with each [SEG]'s Regional Artifact Mask filled in its own colour and
its Region Mask outlined; for R- tasks the queried region's outline in white, for B-
tasks the box in yellow.  Right: task, ids, labels, the prompt and the answer with
each `<p>phrase</p>[SEG]` shown as `phrase [k]`, k matching the colour legend.
OpenCV only (no PIL in .venv).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from fifa_jax import tokens
from fifa_jax.data import records

PANEL = 448
TEXT_W = 560
FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette(n: int) -> np.ndarray:
  """n distinct RGB colours (golden-ratio hues)."""
  hsv = np.stack([(np.arange(n) * 0.618034 % 1.0) * 179, np.full(n, 200), np.full(n, 255)], 1)
  return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def find_store(shard: Path) -> Path:
  """The mask store of a build: <build>/masks for <build>/qa/<split>/<shard>."""
  cand = shard.resolve().parent.parent.parent / "masks"
  if not (cand / records.MaskStore.INDEX).is_file():
    raise FileNotFoundError(f"{shard}: no mask store at {cand}; pass --masks")
  return cand


def _wrap(text: str, width: int, scale: float) -> list[str]:
  lines = []
  for para in text.split("\n"):
    cur = ""
    for word in para.split(" "):
      trial = f"{cur} {word}".strip()
      if cur and cv2.getTextSize(trial, FONT, scale, 1)[0][0] > width:
        lines.append(cur)
        cur = word
      else:
        cur = trial
    lines.append(cur)
  return lines


def render(rec: records.QARecord, entry: records.MaskEntry) -> np.ndarray:
  """HxWx3 uint8 RGB picture of one record."""
  img = cv2.imdecode(np.frombuffer(entry.image, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise ValueError(f"image {entry.image_id!r}: stored bytes are not a readable image")
  rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32)
  h, w = rgb.shape[:2]
  cols = palette(max(1, len(rec.seg_concepts)))
  art = entry.artifact_mask()
  for k, c in enumerate(rec.seg_concepts):
    m = entry.region_mask(c) & art
    rgb[m] = 0.45 * rgb[m] + 0.55 * cols[k]
  view = np.clip(rgb, 0, 255).astype(np.uint8)
  s = PANEL / max(h, w)
  view = cv2.resize(view, (round(w * s), round(h * s)), interpolation=cv2.INTER_NEAREST if s > 1 else cv2.INTER_AREA)

  def outline(mask, colour, thick):
    m = cv2.resize(mask.astype(np.uint8), view.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(view, cs, -1, tuple(int(v) for v in colour), thick)

  for k, c in enumerate(rec.seg_concepts):
    outline(entry.region_mask(c), cols[k], 1)
  if rec.region:
    outline(entry.region_mask(rec.region), (255, 255, 255), 2)
  if rec.box:
    x1, y1, x2, y2 = (round(v * s) for v in rec.box)
    cv2.rectangle(view, (x1, y1), (x2 - 1, y2 - 1), (255, 230, 0), 2)

  # Text: [SEG] k shown as "[k]" after its phrase.
  k = iter(range(len(rec.seg_concepts)))
  answer = re.sub(re.escape(tokens.P_OPEN) + r"(.*?)" + re.escape(tokens.P_CLOSE) + r"\s*" + re.escape(tokens.SEG),
                  lambda m: f"{m.group(1)} [{next(k)}]", rec.answer)
  labels = [f"task {tokens.TASK_NAMES[rec.task]} ({rec.task})   split {rec.split}",
            f"record {rec.record_id}", f"image {rec.image_id}   source {rec.source}"]
  if rec.technique:
    labels.append(f"technique {rec.technique}" + (f"   det {rec.det_label}" if rec.det_label is not None else "")
                  + (f"   cls {tokens.CLS_CLASSES[rec.cls_label]}" if rec.cls_label is not None else ""))
  if rec.region:
    labels.append(f"region: {rec.region} (white)")
  if rec.box:
    labels.append(f"box: {[round(v, 1) for v in rec.box]} px (yellow)")
  if rec.explainer:
    labels.append(f"explainer: {rec.explainer}")
  scale, lh = 0.42, 16
  body = [(t, (230, 230, 230)) for t in labels] + [("", None)]
  body += [(t, (150, 210, 255)) for t in _wrap("USER: " + rec.prompt.replace(tokens.IMAGE + "\n", tokens.IMAGE + " "),
                                                TEXT_W - 20, scale)] + [("", None)]
  body += [(t, (255, 255, 255)) for t in _wrap("ASSISTANT: " + answer, TEXT_W - 20, scale)] + [("", None)]
  body += [(f"[{i}] {c}", tuple(int(v) for v in cols[i])) for i, c in enumerate(rec.seg_concepts)]
  height = max(view.shape[0], 12 + lh * len(body))
  canvas = np.full((height, view.shape[1] + TEXT_W, 3), 24, np.uint8)
  canvas[:view.shape[0], :view.shape[1]] = view
  y = 18
  for text, colour in body:
    if colour is not None:
      cv2.putText(canvas, text, (view.shape[1] + 10, y), FONT, scale, colour, 1, cv2.LINE_AA)
    y += lh
  return canvas


def show(shard: str | os.PathLike, index: int, out: str | os.PathLike, masks: str | os.PathLike | None = None) -> records.QARecord:
  shard = Path(shard)
  payloads = records.read_shard(shard)
  if not 0 <= index < len(payloads):
    raise IndexError(f"{shard}: index {index} is out of range (the shard holds {len(payloads)} records)")
  rec = records.QARecord.from_bytes(payloads[index])
  store = records.MaskStore(Path(masks) if masks else find_store(shard))
  pic = render(rec, store[rec.image_id])
  store.close()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(out), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)):
    raise OSError(f"{out}: could not write the picture (is the extension .png?)")
  return rec
