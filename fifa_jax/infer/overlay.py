"""Mask overlays for people: each grounded phrase in its own colour, with a legend.

OpenCV only (the .venv has no PIL).  Images are RGB uint8 [H, W, 3] in and out.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def palette(n: int) -> list[tuple[int, int, int]]:
  """`n` well-separated, saturated RGB colours (golden-ratio hues)."""
  out = []
  for i in range(n):
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
    out.append((int(r * 255), int(g * 255), int(b * 255)))
  return out


def _wrap(text: str, width: int) -> list[str]:
  lines, cur = [], ""
  for word in text.split():
    if cur and len(cur) + 1 + len(word) > width:
      lines.append(cur)
      cur = word
    else:
      cur = f"{cur} {word}".strip()
  return lines + ([cur] if cur else [])


def draw_overlay(image: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[str], *,
                 title: str | None = None, text: str | None = None,
                 box: Sequence[float] | None = None, face: Sequence[float] | None = None,
                 alpha: float = 0.5, legend_width: int = 360) -> np.ndarray:
  """The image with each mask blended in its colour and contoured, plus a legend.

  masks[i] (bool [H, W], the image's size) is labelled labels[i]; `box` (x1, y1,
  x2, y2 pixels) is drawn as the query box, `face` (x0, y0, side) as the face crop
  a photo's answer is about (yellow); `text` (the answer) is wrapped under the legend.
  """
  img = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
  if img.ndim != 3:
    raise ValueError(f"image must be [H, W, 3], got {image.shape}")
  if len(masks) != len(labels):
    raise ValueError(f"{len(masks)} masks for {len(labels)} labels")
  h, w = img.shape[:2]
  scale = max(1.0, 512 / max(h, w))  # small faces are enlarged so labels stay legible
  if scale > 1:
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
  H, W = img.shape[:2]
  out = img.astype(np.float32)
  colours = palette(len(masks))
  contours = []
  for m, c in zip(masks, colours):
    m = np.asarray(m, bool)
    if m.shape != (h, w):
      raise ValueError(f"mask of shape {m.shape} does not match the image's {(h, w)}")
    if scale > 1:
      m = cv2.resize(m.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c, np.float32)
    cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours.append((cs, c))
  out = out.astype(np.uint8)
  for cs, c in contours:
    cv2.drawContours(out, cs, -1, c, 1, cv2.LINE_AA)
  if face is not None:
    x0, y0, side = (round(v * scale) for v in face)
    cv2.rectangle(out, (x0, y0), (x0 + side, y0 + side), (255, 210, 0), 1, cv2.LINE_AA)
  if box is not None:
    x1, y1, x2, y2 = (round(v * scale) for v in box)
    cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 2, cv2.LINE_AA)

  # Legend panel: title, one swatch per label (with its mask's area), the wrapped answer.
  font, fs, lh = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 18
  rows = ([title] if title else []) + [""] * len(labels)
  answer_lines = _wrap(text, legend_width // 8) if text else []
  panel_h = max(H, 16 + lh * (len(rows) + len(answer_lines) + 2))
  canvas = np.full((panel_h, W + legend_width, 3), 24, np.uint8)
  canvas[:H, :W] = out
  y = 20
  if title:
    cv2.putText(canvas, title, (W + 10, y), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    y += lh + 4
  for lab, c, m in zip(labels, colours, masks):
    cv2.rectangle(canvas, (W + 10, y - 11), (W + 24, y + 3), c, -1)
    area = int(np.asarray(m, bool).sum())
    cv2.putText(canvas, f"{lab}  ({area} px)" if area else f"{lab}  (empty)", (W + 30, y), font, fs,
                (235, 235, 235), 1, cv2.LINE_AA)
    y += lh
  if answer_lines:
    y += lh // 2
    for line in answer_lines:
      cv2.putText(canvas, line, (W + 10, y), font, 0.4, (200, 200, 200), 1, cv2.LINE_AA)
      y += lh - 2
  return canvas


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
  """Write an RGB image atomically."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise ValueError(f"could not encode {path} as PNG")
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data.tobytes())
  os.replace(tmp, path)


def draw_comparison(image: np.ndarray, pred_masks: Sequence[np.ndarray], pred_labels: Sequence[str],
                    true_masks: Sequence[np.ndarray], true_labels: Sequence[str], *,
                    title: str = "", pred_text: str | None = None, true_text: str | None = None,
                    box: Sequence[float] | None = None) -> np.ndarray:
  """Prediction (left) beside ground truth (right), as the paper's Figures 4-9.

  The k-th predicted mask and the k-th true one share a colour (they are scored
  as a pair).
  """
  left = draw_overlay(image, pred_masks, pred_labels, title=f"prediction  {title}".strip(),
                      text=pred_text, box=box)
  right = draw_overlay(image, true_masks, true_labels, title="ground truth", text=true_text, box=box)
  h = max(left.shape[0], right.shape[0])
  pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=24)
  gap = np.full((h, 6, 3), 255, np.uint8)
  return np.concatenate([pad(left), gap, pad(right)], axis=1)
