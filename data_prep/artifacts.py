"""Artifact masks and Step 2 of FiFa-Annotator (Section 3.2).

Step 1, `artifact_mask_from_pair(real, fake, PairRule())`: the whole-image artifact
mask of an attribute-manipulated image from its real source.
  1. Sizes: a fake of another size is compared with the real resized to the fake's
     size (INTER_AREA) when their aspect ratios agree within 1%; otherwise rejected.
  2. Alignment: the pair is rejected when the grey images correlate less than
     `min_corr` (0.8; not the same picture) or when phase correlation finds a global
     shift larger than `max_shift` pixels (1.0; misaligned).
  3. Difference: |real - fake| per RGB channel, converted to grey (ITU-R 601 weights
     0.299, 0.587, 0.114), optionally Gaussian-blurred (`blur_sigma`, 0 = off).
  4. Threshold: the top `top_percent` (5%) of grey values: mask = grey >= t where t is
     the value of the ceil(5% x pixels)-th largest pixel (ties at t included), and
     never below `min_diff` (1 grey level), so unchanged pixels are never artifacts.
  The mask has the fake's size.

Step 2, `step2(allm, artifact, Thresholds())` (or `step2_sparse` on sparse masks): for every FICT concept, the
Regional Artifact Mask (Region Mask AND artifact mask), its pixel count, the
artifact coverage ratio (artifact pixels / Region Mask pixels; 0 for an empty
region) and the artifact-existing flag: rank <= X in descending coverage ratio (ties
broken by FICT order), ratio >= Y% and artifact pixels >= Z (X, Y, Z = 50, 10, 50).
Ranks are taken among the Atomic Concepts and among the Parent Concepts separately
(`rank_scope="separate"`, the default: the paper flags "Atomic/Parent Concepts") or
over all 184 together (`rank_scope="joint"`).  The four default parents (whole
facial image, foreground, region around head, region around face) are always
flagged; any other concept with an empty Region Mask never is.  `parent_boxes` are
the bounding boxes of the Parent Concepts' Region Masks (Step 4, for the box-level
tasks), [x0, y0, x1, y1) in pixel edges, -1 when empty.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from data_prep import masks
from data_prep import regions, sparse

from fifa_jax import fict

NAMES = fict.NAMES
IS_ATOMIC = np.array([fict.get(n).is_atomic for n in NAMES])
DEFAULT_IDX = np.array([NAMES.index(n) for n in fict.DEFAULT_ARTIFACT_PARENTS])


class PairError(ValueError):
  """A real/fake pair that cannot give an artifact mask; the message says why."""


@dataclasses.dataclass
class PairRule:
  top_percent: float = 5.0
  min_diff: float = 1.0
  blur_sigma: float = 0.0
  max_shift: float = 1.0
  min_corr: float = 0.8
  resize: bool = True


def _grey(rgb: np.ndarray) -> np.ndarray:
  return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def check_alignment(real: np.ndarray, fake: np.ndarray, rule: PairRule) -> dict:
  """Correlation and global shift of two same-size RGB images; raises PairError."""
  g0, g1 = _grey(real), _grey(fake)
  a, b = g0.ravel() - g0.mean(), g1.ravel() - g1.mean()
  den = float(np.sqrt((a * a).sum() * (b * b).sum()))
  corr = float((a * b).sum() / den) if den > 0 else (1.0 if np.array_equal(g0, g1) else 0.0)
  if corr < rule.min_corr:
    raise PairError(f"not the same picture: grey correlation {corr:.3f} < min_corr {rule.min_corr}")
  win = cv2.createHanningWindow(g0.shape[::-1], cv2.CV_32F)
  (dx, dy), _ = cv2.phaseCorrelate(g0, g1, win)
  shift = math.hypot(dx, dy)
  if shift > rule.max_shift:
    raise PairError(f"misaligned: the fake is shifted by ({dx:+.2f}, {dy:+.2f}) px from the real "
                    f"(|shift| {shift:.2f} > max_shift {rule.max_shift})")
  return {"corr": corr, "shift": [float(dx), float(dy)]}


def artifact_mask_from_pair(real: np.ndarray, fake: np.ndarray, rule: PairRule | None = None):
  """(mask HxW bool in the fake's size, info dict); raises PairError for unusable pairs."""
  rule = rule or PairRule()
  if real.shape != fake.shape:
    (h0, w0), (h1, w1) = real.shape[:2], fake.shape[:2]
    if not rule.resize or abs(w0 / h0 - w1 / h1) > 0.01 * (w1 / h1):
      raise PairError(f"sizes differ: real {w0}x{h0}, fake {w1}x{h1}")
    real = cv2.resize(real, (w1, h1), interpolation=cv2.INTER_AREA if w0 > w1 else cv2.INTER_LINEAR)
  info = check_alignment(real, fake, rule)
  diff = np.abs(real.astype(np.int16) - fake.astype(np.int16)).astype(np.float32)
  grey = diff @ np.array([0.299, 0.587, 0.114], np.float32)
  if rule.blur_sigma > 0:
    grey = cv2.GaussianBlur(grey, (0, 0), rule.blur_sigma)
  k = max(1, math.ceil(rule.top_percent / 100.0 * grey.size))
  flat = grey.ravel()
  t = float(np.partition(flat, flat.size - k)[flat.size - k])
  t = max(t, float(rule.min_diff))
  mask = grey >= t
  info.update(threshold=t, fraction=float(mask.mean()))
  return mask, info


@dataclasses.dataclass
class Thresholds:
  max_rank: int = 50         # X
  min_ratio: float = 10.0    # Y, percent
  min_pixels: int = 50       # Z
  rank_scope: str = "separate"  # or "joint"
  defaults: tuple = fict.DEFAULT_ARTIFACT_PARENTS


def ranks(ratio: np.ndarray, scope: str = "separate") -> np.ndarray:
  """1-based rank of each of the 184 concepts by descending ratio, ties by FICT order."""
  if scope not in ("separate", "joint"):
    raise ValueError(f"rank_scope must be 'separate' or 'joint', not {scope!r}")
  out = np.zeros(len(ratio), np.int32)
  groups = [IS_ATOMIC, ~IS_ATOMIC] if scope == "separate" else [np.ones(len(ratio), bool)]
  for g in groups:
    idx = np.flatnonzero(g)
    order = idx[np.lexsort((idx, -ratio[idx]))]
    out[order] = np.arange(1, len(order) + 1)
  return out


def step2(allm: np.ndarray, artifact: np.ndarray, th: Thresholds | None = None) -> dict:
  """Coverage, ranks and flags (arrays over concepts in fict.NAMES order).

  allm: (184, H, W) bool Region Masks in fict.NAMES order (regions.fill_concepts or
  regions.all_from_atomic); artifact: (H, W) bool whole-image artifact mask.
  """
  artifact = np.ascontiguousarray(artifact, dtype=bool)
  if allm.shape != (len(NAMES),) + artifact.shape:
    raise ValueError(f"Region Masks {allm.shape} and artifact mask {artifact.shape} disagree")
  region_px = region_pixels(allm)
  x0, y0, bw, bh = cv2.boundingRect(artifact.view(np.uint8))  # artifact pixels lie in this box
  art = artifact[y0:y0 + bh, x0:x0 + bw]
  tmp = np.empty(art.shape, bool)
  art_px = np.array([np.count_nonzero(np.logical_and(allm[i, y0:y0 + bh, x0:x0 + bw], art, out=tmp))
                     for i in range(len(NAMES))], np.int64)
  return step2_from_counts(region_px, art_px, th)


def step2_sparse(allm: list, artifact: np.ndarray, th: Thresholds | None = None) -> dict:
  """step2 from the 184 sparse Region Masks (regions.sparse_all), counting inside boxes."""
  artifact = np.ascontiguousarray(artifact, dtype=bool)
  x0, y0, bw, bh = cv2.boundingRect(artifact.view(np.uint8))
  box = (y0, y0 + bh, x0, x0 + bw)
  region_px = np.array([m.count() for m in allm], np.int64)
  art_px = np.array([sparse.count_and(m, artifact, box) for m in allm], np.int64)
  return step2_from_counts(region_px, art_px, th)


def step2_from_counts(region_px: np.ndarray, art_px: np.ndarray, th: Thresholds | None = None) -> dict:
  """Coverage, ranks and flags from Region Mask and Regional Artifact Mask pixel counts."""
  th = th or Thresholds()
  ratio = np.where(region_px > 0, art_px / np.maximum(region_px, 1), 0.0)
  rank = ranks(ratio, th.rank_scope)
  flags = (rank <= th.max_rank) & (art_px * 100 >= th.min_ratio * region_px) & (art_px >= th.min_pixels)
  flags &= region_px > 0
  for n in th.defaults:
    flags[NAMES.index(n)] = True
  return {"region_pixels": region_px, "artifact_pixels": art_px, "coverage": ratio.astype(np.float64),
          "rank": rank, "artifact_existing": flags}


def step2_from_atomic(atomic: np.ndarray, artifact: np.ndarray, th: Thresholds | None = None) -> dict:
  """step2 from the (112, H, W) bool atomic masks."""
  return step2(regions.all_from_atomic(np.asarray(atomic, bool)), artifact, th)


def region_pixels(allm: np.ndarray) -> np.ndarray:
  return np.array([np.count_nonzero(allm[i]) for i in range(allm.shape[0])], np.int64)


PARENT_POS = np.array([NAMES.index(p) for p in fict.PARENTS])


def parent_boxes(allm: np.ndarray) -> np.ndarray:
  """(72, 4) int32 [x0, y0, x1, y1) (pixel edges) of the Parent Concepts' Region Masks
  in fict.PARENTS order; -1s when empty."""
  out = np.full((len(PARENT_POS), 4), -1, np.int32)
  for j, i in enumerate(PARENT_POS):
    x, y, w, h = cv2.boundingRect(allm[i].view(np.uint8))
    if w > 0 and h > 0:
      out[j] = (x, y, x + w, y + h)
  return out


def parent_boxes_sparse(allm: list) -> np.ndarray:
  """parent_boxes from the 184 sparse, tight Region Masks (regions.sparse_all)."""
  out = np.full((len(PARENT_POS), 4), -1, np.int32)
  for j, i in enumerate(PARENT_POS):
    e = allm[i].edges()
    if e is not None:
      out[j] = e
  return out


def regional_artifact_masks(atomic: np.ndarray, artifact: np.ndarray) -> np.ndarray:
  """Regional Artifact Masks: Region Masks AND the artifact mask (bool, or packed with
  the artifact packed to match)."""
  art = masks.pack(artifact) if atomic.dtype == np.uint8 else np.asarray(artifact, bool)
  return atomic & art[None]
