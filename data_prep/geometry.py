"""Raster helpers and the face frame shared by the parser and the region procedures.

The face frame: origin at the nasion (landmark 168); unit `ex` from the subject's
right eye centre to the left eye centre (towards the subject's LEFT); unit `ey`
perpendicular to it, pointing from the eyes towards the mouth (down the face); unit
length `s`, the distance between the two eye centres.  Frame coordinates (u, v)
are in units of s, so every threshold below scales with the face and is unchanged
by a horizontal flip (which swaps the eyes and so flips ex with the picture).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from data_prep import mesh


class FaceFrame:
  def __init__(self, landmarks: np.ndarray, shape: tuple[int, int]):
    self.lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    self.h, self.w = int(shape[0]), int(shape[1])
    c_r = self.lm[mesh.EYE].mean(0)
    c_l = self.lm[mesh.mirror(mesh.EYE)].mean(0)
    d = c_l - c_r
    self.s = float(max(np.hypot(*d), 1e-3))
    self.ex = d / self.s
    down = self.lm[[13, 14]].mean(0) - (c_r + c_l) / 2
    down = down - down.dot(self.ex) * self.ex
    n = np.hypot(*down)
    self.ey = down / n if n > 1e-6 else np.array([-self.ex[1], self.ex[0]])
    self.origin = self.lm[168].copy()

  # -- coordinates
  def uv(self, pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64) - self.origin
    return np.stack([p @ self.ex, p @ self.ey], -1) / self.s

  def xy(self, uv: np.ndarray) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64)
    return self.origin + self.s * (uv[..., :1] * self.ex + uv[..., 1:2] * self.ey)

  def pts(self, idx) -> np.ndarray:
    return self.lm[list(idx)]

  @functools.cached_property
  def v_map(self) -> np.ndarray:
    """Per-pixel v (float32, units of s), from a row and a column broadcast (no grids)."""
    gx = np.arange(self.w, dtype=np.float32) - np.float32(self.origin[0])
    gy = np.arange(self.h, dtype=np.float32) - np.float32(self.origin[1])
    return (gx * np.float32(self.ey[0] / self.s))[None, :] + (gy * np.float32(self.ey[1] / self.s))[:, None]

  @functools.cached_property
  def left(self) -> np.ndarray:
    """Pixels on the subject's left of the facial midline (bool HxW).

    The midline is the polyline of MediaPipe's 28 midline landmarks, ordered by v and
    continued straight up and down; everything beyond it towards +u is "left".
    """
    uv = self.uv(self.lm[mesh.MIDLINE])
    uv = uv[np.argsort(uv[:, 1], kind="stable")]
    far = 4.0 * max(self.h, self.w) / self.s + 4.0
    top = uv[0] + (uv[0] - uv[min(3, len(uv) - 1)]) / max(np.hypot(*(uv[0] - uv[min(3, len(uv) - 1)])), 1e-6) * far
    bot = uv[-1] + (uv[-1] - uv[-4]) / max(np.hypot(*(uv[-1] - uv[-4])), 1e-6) * far
    poly = np.concatenate([[top], uv, [bot], [[bot[0] + far, bot[1]]], [[top[0] + far, top[1]]]])
    return fill(self.shape, self.xy(poly))

  @property
  def shape(self) -> tuple[int, int]:
    return (self.h, self.w)

  def px(self, frac: float, minimum: int = 1) -> int:
    """A length of `frac` * s in whole pixels, at least `minimum`."""
    return max(minimum, int(round(frac * self.s)))


# --- rasterisation (cv2, SHIFT sub-pixel bits so thin shapes stay symmetric under flips)
SHIFT = 4
ONE = 1 << SHIFT


def fixed_point(pts) -> np.ndarray:
  """Points [N, 2] in pixels -> cv2's fixed-point int32 coordinates (SHIFT fraction bits)."""
  a = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
  a = np.clip(a, -1e6, 1e6)
  return np.round((a - 0.5) * ONE).astype(np.int32)  # pixel centres at integer + 0.5


def fill(shape, *polys) -> np.ndarray:
  """Bool mask of the union of polygons (pixel coordinates, x right, y down)."""
  m = np.zeros(shape, np.uint8)
  cv2.fillPoly(m, [fixed_point(p) for p in polys if len(p) >= 3], 1, cv2.LINE_8, SHIFT)
  return m.view(bool)


def paint(img: np.ndarray, pts, value: int) -> None:
  """Set the pixels of one polygon (the pixels of `fill`) to `value`, in place."""
  if len(pts) >= 3:
    cv2.fillPoly(img, [fixed_point(pts)], int(value), cv2.LINE_8, SHIFT)


def polyline_band(shape, pts, half_width: float) -> np.ndarray:
  """Pixels within about `half_width` of an open polyline."""
  m = np.zeros(shape, np.uint8)
  t = max(1, int(round(2 * half_width)))
  cv2.polylines(m, [fixed_point(pts)], False, 1, t, cv2.LINE_8, SHIFT)
  return m.view(bool)


def ellipse(shape, center, axes, angle_deg: float) -> np.ndarray:
  m = np.zeros(shape, np.uint8)
  c = tuple(int(v) for v in fixed_point([center])[0])
  ax = tuple(max(1, int(round(a * ONE))) for a in axes)
  cv2.ellipse(m, c, ax, angle_deg, 0, 360, 1, -1, cv2.LINE_8, SHIFT)
  return m.view(bool)


def halfplane(shape, point, normal) -> np.ndarray:
  """Pixels whose centre c has (c - point) . normal > 0 (exact, so crops agree with the whole)."""
  h, w = shape
  px, py = float(point[0]), float(point[1])
  nx, ny = float(normal[0]), float(normal[1])
  ys = (np.arange(h, dtype=np.float64) + 0.5 - py) * ny  # row term
  xs = (np.arange(w, dtype=np.float64) + 0.5 - px)
  if abs(nx) < 1e-12:
    return np.broadcast_to((ys > 0)[:, None], (h, w)).copy()
  thr = -ys / nx
  return xs[None, :] > thr[:, None] if nx > 0 else xs[None, :] < thr[:, None]


@functools.lru_cache(maxsize=64)
def _disk(r: int) -> np.ndarray:
  return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _bbox(mask: np.ndarray, margin: int):
  rows = np.flatnonzero(mask.any(1))
  if rows.size == 0:
    return None
  cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(0))
  h, w = mask.shape
  return (max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin),
          max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin))


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
  """Grow a mask by r pixels with a square (fast; used for neighbourhoods, not shapes)."""
  if r <= 0:
    return mask.copy()
  out = np.zeros_like(mask)
  b = _bbox(mask, r + 1)
  if b is None:
    return out
  y0, y1, x0, x1 = b
  k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
  out[y0:y1, x0:x1] = cv2.dilate(mask[y0:y1, x0:x1].view(np.uint8), k).view(bool)
  return out


def _morph(op, img: np.ndarray, r: int, **kw) -> np.ndarray:
  """Dilate/erode by a disk of radius r; large disks as two smaller ones (a disk of
  radius a+b is the Minkowski sum of disks of radii a and b), which is cheaper."""
  if r <= 4:
    return op(img, _disk(r), **kw)
  a = r // 2
  return op(op(img, _disk(a), **kw), _disk(r - a), **kw)


def edge_band(mask: np.ndarray, r: int) -> np.ndarray:
  """Band of about 2r+1 pixels centred on the boundary of `mask` (inside and outside).

  The image border is not a boundary (regions that leave the picture get no edge there).
  """
  out = np.zeros_like(mask)
  b = _bbox(mask, r + 1)
  if b is None:
    return out
  y0, y1, x0, x1 = b
  crop = mask[y0:y1, x0:x1].view(np.uint8)
  d = _morph(cv2.dilate, crop, r)
  e = _morph(cv2.erode, crop, r, borderType=cv2.BORDER_REPLICATE)
  out[y0:y1, x0:x1] = (d > e)
  return out
