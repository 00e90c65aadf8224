"""A labelled colour picture of the Region Masks, for a person to check.

Eight panels: the face parsing, then the 112 Atomic Concepts in seven groups (each
mask filled in its own colour with its outline, a number at its most interior point,
and a legend of number -> concept name).  Small images are enlarged (nearest
neighbour for masks) so each panel is about `panel` pixels.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from data_prep.parsing import CLASSES

try:
  from fifa_jax import fict
except ImportError as e:  # pragma: no cover
  raise ImportError("data_prep needs fifa_jax.fict") from e


def _s(side_fmt: str) -> list[str]:
  return [side_fmt.format(s) for s in ("left", "right")]


GROUPS: list[tuple[str, list[str]]] = [
    ("hair, neck, clothing, adornments, background",
     [f"hair near {s} {p}" for s in ("left", "right")
      for p in ("part of forehead", "temple", "ear", "cheek", "part of jaws")]
     + _s("{} part of outer hair") + ["neck", "clothing", "hat", "eyeglasses"] + _s("{} earring")
     + _s("{} part of background")),
    ("forehead, temples, eyebrows",
     [f"{u} {s} part of forehead" for u in ("upper", "lower") for s in ("left", "right")] + _s("{} temple")
     + [f"{p} of {s} eyebrow" for s in ("left", "right") for p in ("headstart", "middle part", "tail")]
     + ["region between eyebrows"]),
    ("eyes",
     _s("iris of {} eye") + _s("sclera of {} eye") + _s("upper eyelid of {} eye") + _s("lower eyelid of {} eye")
     + _s("eye bag of {} eye") + _s("upper eye socket of {} eye") + _s("lower eye socket of {} eye")
     + ["region between eyes"]),
    ("nose, cheeks, mouth",
     ["nasion", "nose bridge", "nasal ala of left side", "nasal ala of right side", "nose base"]
     + [f"{u} part of {s} cheek" for s in ("left", "right") for u in ("upper", "lower")]
     + _s("nasolabial fold of {} side") + ["upper lip", "lower lip", "oral cavity", "philtrum"]),
    ("jaws, chin, ears",
     [f"{s} part of {u} jaw" for s in ("left", "right") for u in ("upper", "lower")] + _s("{} part of chin")
     + [f"{u} part of {s} ear" for s in ("left", "right") for u in ("upper", "lower")]),
    ("face edge, hair edges, outer edges",
     [f"face edge near {s} {p}" for s in ("left", "right")
      for p in ("part of forehead", "temple", "ear", "cheek", "part of jaws")]
     + ["inner edge of hair", "outer edge of hair", "edges of neck", "edges of clothing", "edges of hat",
        "edges of eyeglasses", "edges of earrings"]),
    ("edges of facial features",
     ["top edge of forehead", "bottom edge of forehead"] + _s("edges of {} temple")
     + [f"{t} edge of {s} eyebrow" for s in ("left", "right") for t in ("top", "bottom")]
     + [f"{t} edge of {s} eye" for s in ("left", "right") for t in ("top", "bottom")]
     + _s("edges of {} ear") + ["edges of nose"] + _s("edges of {} cheek")
     + ["top edge of mouth", "bottom edge of mouth", "top edge of jaws", "bottom edge of jaws", "edges of chin"]),
]


def _check_groups():
  flat = [n for _, g in GROUPS for n in g]
  assert sorted(flat) == sorted(fict.ATOMIC), (set(fict.ATOMIC) ^ set(flat))


_check_groups()


def palette(n: int) -> np.ndarray:
  cols = []
  for i in range(n):
    h = (i * 0.61803398875) % 1.0
    s, v = (0.85, 1.0) if i % 2 == 0 else (0.65, 0.85)
    cols.append([int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
  return np.array(cols, np.uint8)


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img, s, org, scale=0.4, color=(255, 255, 255), thick=1):
  cv2.putText(img, s, org, _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
  cv2.putText(img, s, org, _FONT, scale, color, thick, cv2.LINE_AA)


def _anchor(mask: np.ndarray):
  """The mask's most interior pixel (x, y), or None when empty."""
  if not mask.any():
    return None
  d = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
  y, x = np.unravel_index(int(np.argmax(d)), d.shape)
  return int(x), int(y)


def _panel(base: np.ndarray, masks: list[np.ndarray], names: list[str], title: str, legend_w: int):
  h, w = base.shape[:2]
  img = (base.astype(np.float32) * 0.55).astype(np.uint8)
  cols = palette(len(masks))
  over = img.copy()
  for m, c in zip(masks, cols):
    over[m] = c
  img = cv2.addWeighted(over, 0.6, img, 0.4, 0)
  for m, c in zip(masks, cols):
    if m.any():
      cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
      cv2.drawContours(img, cnts, -1, tuple(int(v) for v in c), 1, cv2.LINE_AA)
  for i, m in enumerate(masks):
    a = _anchor(m)
    if a is not None:
      s = str(i + 1)
      (tw, th), _ = cv2.getTextSize(s, _FONT, 0.35, 1)
      _text(img, s, (a[0] - tw // 2, a[1] + th // 2), 0.35)
  line_h = 14
  panel_h = max(h, 24 + line_h * len(names) + 6)
  out = np.full((panel_h + 22, w + legend_w, 3), 24, np.uint8)
  out[22:22 + h, :w] = img
  _text(out, title, (6, 16), 0.5, (255, 255, 160))
  for i, (n, c) in enumerate(zip(names, cols)):
    y = 22 + 8 + i * line_h
    cv2.rectangle(out, (w + 6, y), (w + 16, y + 10), tuple(int(v) for v in c), -1)
    empty = "" if masks[i].any() else "  (empty)"
    _text(out, f"{i + 1} {n}{empty}", (w + 20, y + 9), 0.36, (255, 255, 255) if not empty else (150, 150, 150))
  return out


FULL_VIEW = ("face parsing", GROUPS[0][0])  # panels that show the whole picture; the rest zoom on the face


def face_box(landmarks: np.ndarray, shape, margin: float = 0.85):
  """A square (x0, y0, x1, y1) around the landmarks, clipped to the image."""
  lm = np.asarray(landmarks)[:, :2]
  c = (lm.min(0) + lm.max(0)) / 2
  half = margin * max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]))
  h, w = shape[:2]
  x0, y0 = max(0, int(c[0] - half)), max(0, int(c[1] - half))
  x1, y1 = min(w, int(np.ceil(c[0] + half))), min(h, int(np.ceil(c[1] + half)))
  return x0, y0, x1, y1


def render(rgb: np.ndarray, atomic: np.ndarray, labels: np.ndarray | None = None, *, panel: int = 420,
           title: str = "", columns: int = 4, landmarks: np.ndarray | None = None) -> np.ndarray:
  """The overlay picture (RGB uint8).  atomic: (112, H, W) bool in fict.ATOMIC order.

  With `landmarks`, the panels of facial concepts zoom on the face.
  """
  legend_w = 250
  views = {}

  def view(box):
    if box not in views:
      x0, y0, x1, y1 = box
      h, w = y1 - y0, x1 - x0
      scale = panel / max(h, w)
      size = (max(1, round(w * scale)), max(1, round(h * scale)))
      crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
      base = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
      views[box] = (base, lambda m: cv2.resize(np.ascontiguousarray(m[y0:y1, x0:x1]).astype(np.uint8), size,
                                               interpolation=cv2.INTER_NEAREST).astype(bool))
    return views[box]

  full = (0, 0, rgb.shape[1], rgb.shape[0])
  zoom = face_box(landmarks, rgb.shape) if landmarks is not None else full
  panels = []
  if labels is not None:
    base, rs = view(full)
    present = [k for k in range(1, len(CLASSES)) if (labels == k).any()]
    panels.append(_panel(base, [rs(labels == k) for k in present], [CLASSES[k] for k in present],
                         "face parsing", legend_w))
  idx = {n: i for i, n in enumerate(fict.ATOMIC)}
  for gtitle, names in GROUPS:
    base, rs = view(full if gtitle in FULL_VIEW else zoom)
    panels.append(_panel(base, [rs(atomic[idx[n]]) for n in names], names, gtitle, legend_w))
  ph = max(p.shape[0] for p in panels)
  pw = max(p.shape[1] for p in panels)
  rows = []
  for r in range(0, len(panels), columns):
    row = [np.pad(p, ((0, ph - p.shape[0]), (0, pw - p.shape[1]), (0, 0)), constant_values=24)
           for p in panels[r:r + columns]]
    row += [np.full((ph, pw, 3), 24, np.uint8)] * (columns - len(row))
    rows.append(np.concatenate(row, 1))
  grid = np.concatenate(rows, 0)
  if title:
    head = np.full((26, grid.shape[1], 3), 12, np.uint8)
    _text(head, title, (8, 18), 0.55, (200, 255, 200))
    grid = np.concatenate([head, grid], 0)
  return grid
