"""Step 5 of FiFa-Annotator: B-AGE boxes (Section 3.2).

`bage_boxes(...)` draws `n_boxes` (20) random boxes per image and keeps those that
encompass at least `min_concepts` (3) artifact-existing Atomic Concepts.

* Sampling: width and height drawn independently and uniformly from
  [`min_side`, `max_side`] (0.15, 0.6) of the image's width and height, the corner
  uniformly so the box lies inside the image; integers, [x0, y0, x1, y1) in pixel
  edges.  The generator is seeded with (`seed`, CRC-32 of the image key), so an
  image gets the same boxes whichever worker handles it and in whatever order.
* Coverage rule: an artifact-existing Atomic Concept is encompassed by a box when
  the box holds at least `min_cover` (50%) of that concept's Regional Artifact Mask
  pixels (its Region Mask AND the artifact mask).
"""

from __future__ import annotations

import dataclasses
import zlib

import cv2
import numpy as np



@dataclasses.dataclass
class BageRule:
  n_boxes: int = 20
  min_concepts: int = 3
  min_cover: float = 0.5
  min_side: float = 0.15
  max_side: float = 0.6
  seed: int = 0


def sample_boxes(height: int, width: int, rule: BageRule, key: str = "") -> np.ndarray:
  rng = np.random.default_rng([rule.seed, zlib.crc32(key.encode("utf-8"))])
  bw = np.maximum(1, np.round(rng.uniform(rule.min_side, rule.max_side, rule.n_boxes) * width)).astype(int)
  bh = np.maximum(1, np.round(rng.uniform(rule.min_side, rule.max_side, rule.n_boxes) * height)).astype(int)
  x0 = np.floor(rng.uniform(0, 1, rule.n_boxes) * (width - bw + 1)).astype(int)
  y0 = np.floor(rng.uniform(0, 1, rule.n_boxes) * (height - bh + 1)).astype(int)
  return np.stack([x0, y0, x0 + bw, y0 + bh], 1).astype(np.int32)


def _artifact_mask(mask, artifact: np.ndarray):
  """(y0, x0, bool array) holding the pixels of a Region Mask (HxW bool or
  data_prep.sparse.Sp) that are also artifact pixels, on a box around them."""
  if hasattr(mask, "box"):  # sparse: only its box
    y0, y1, x0, x1 = mask.box
    return y0, x0, mask.a & artifact[y0:y1, x0:x1]
  m = np.logical_and(mask, artifact)
  x0, y0, bw, bh = cv2.boundingRect(m.view(np.uint8))
  return y0, x0, m[y0:y0 + bh, x0:x0 + bw]


def box_concepts(atomic, artifact: np.ndarray, existing_atomic: np.ndarray, boxes: np.ndarray,
                 min_cover: float) -> np.ndarray:
  """(n_boxes, 112) bool: artifact-existing atomic concept k is encompassed by box b.

  atomic: the 112 Region Masks in fict.ATOMIC order: HxW bool arrays (an array or a
  list of views) or data_prep.sparse.Sp masks.  Pixels inside each box are counted
  with a summed-area table of the concept's Regional Artifact Mask.
  """
  artifact = np.asarray(artifact, bool)
  out = np.zeros((len(boxes), len(atomic)), bool)
  b = np.asarray(boxes, np.int64)
  for k in np.flatnonzero(existing_atomic):
    y0, x0, m = _artifact_mask(atomic[k], artifact)
    if not m.any():
      continue
    sat = cv2.integral(m.view(np.uint8))  # (h+1, w+1): sat[y, x] = pixels above and left
    h, w = m.shape
    bx0, bx1 = np.clip(b[:, 0] - x0, 0, w), np.clip(b[:, 2] - x0, 0, w)
    by0, by1 = np.clip(b[:, 1] - y0, 0, h), np.clip(b[:, 3] - y0, 0, h)
    inside = sat[by1, bx1] - sat[by0, bx1] - sat[by1, bx0] + sat[by0, bx0]
    out[:, k] = inside >= min_cover * sat[h, w]
  return out


def bage_boxes(atomic, artifact: np.ndarray, existing_atomic: np.ndarray,
               rule: BageRule | None = None, key: str = "") -> dict:
  """{"bage_boxes": (n,4) int32, "bage_concepts": (n,112) bool, "bage_keep": (n,) bool}."""
  rule = rule or BageRule()
  h, w = artifact.shape
  boxes = sample_boxes(h, w, rule, key)
  conc = box_concepts(atomic, artifact, np.asarray(existing_atomic, bool), boxes, rule.min_cover)
  return {"bage_boxes": boxes, "bage_concepts": conc, "bage_keep": conc.sum(1) >= rule.min_concepts}
