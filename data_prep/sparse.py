"""Sparse boolean masks for the region procedures: a box and the pixels inside it.

Most Region Masks cover a small part of the picture (an eyelid, a third of a brow),
so each mask is kept as `Sp(y0, x0, a)`: the bool array `a` over rows y0.. and
columns x0.. of the image, False everywhere else.  `&`, `|` and `~` work on the
boxes only: A & B is computed on the intersection of their boxes, A | B on the union
box, and `~B` is only ever used as `A & ~B` (computed on A's box).  Unbounded sets
(half-planes, thresholds of a per-pixel map) are `Field`s, evaluated on the box of
whatever they are ANDed with.

The rasterisers below draw the same pixels as their `data_prep.geometry` namesakes
on the whole image: points are converted to fixed point in image coordinates first
and then shifted by whole pixels, which cv2 rasterises identically, and the
morphology runs on the same crop geometry uses (tests/prep/test_regions.py checks
every mask against the dense implementation).
"""

from __future__ import annotations

import cv2
import numpy as np

from data_prep import geometry


class Sp:
  """A mask that is `a` on rows [y0, y0+h) and columns [x0, x0+w) of an image of
  size `shape`, False elsewhere."""

  __slots__ = ("y0", "x0", "a", "shape")

  def __init__(self, y0: int, x0: int, a: np.ndarray, shape):
    self.y0, self.x0, self.a, self.shape = int(y0), int(x0), a, shape

  @classmethod
  def empty(cls, shape) -> "Sp":
    return cls(0, 0, np.zeros((0, 0), bool), shape)

  @classmethod
  def full(cls, a: np.ndarray) -> "Sp":
    return cls(0, 0, a, a.shape)

  @property
  def box(self) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1)."""
    return self.y0, self.y0 + self.a.shape[0], self.x0, self.x0 + self.a.shape[1]

  def crop(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The mask on a box: a view when the box lies inside ours, else a padded copy."""
    sy0, sy1, sx0, sx1 = self.box
    if sy0 <= y0 and y1 <= sy1 and sx0 <= x0 and x1 <= sx1:
      return self.a[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0]
    out = np.zeros((y1 - y0, x1 - x0), bool)
    iy0, iy1, ix0, ix1 = max(y0, sy0), min(y1, sy1), max(x0, sx0), min(x1, sx1)
    if iy1 > iy0 and ix1 > ix0:
      out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = self.a[iy0 - sy0:iy1 - sy0, ix0 - sx0:ix1 - sx0]
    return out

  def clip(self, y0: int, y1: int, x0: int, x1: int) -> "Sp":
    """The part of the mask inside a box (a view)."""
    sy0, sy1, sx0, sx1 = self.box
    y0, y1, x0, x1 = max(y0, sy0), min(y1, sy1), max(x0, sx0), min(x1, sx1)
    if y1 <= y0 or x1 <= x0:
      return Sp.empty(self.shape)
    return Sp(y0, x0, self.a[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0], self.shape)

  def __and__(self, o):
    if isinstance(o, Not):
      return Sp(self.y0, self.x0, np.greater(self.a, _values(o.m, self.box)), self.shape)
    if isinstance(o, Field):
      return Sp(self.y0, self.x0, self.a & o.fn(*self.box), self.shape)
    (ay0, ay1, ax0, ax1), (by0, by1, bx0, bx1) = self.box, o.box
    b = max(ay0, by0), min(ay1, by1), max(ax0, bx0), min(ax1, bx1)
    if b[1] <= b[0] or b[3] <= b[2]:
      return Sp.empty(self.shape)
    return Sp(b[0], b[2], self.crop(*b) & o.crop(*b), self.shape)

  __rand__ = __and__

  def __or__(self, o: "Sp") -> "Sp":
    if o.a.size == 0:
      return self
    if self.a.size == 0:
      return o
    (ay0, ay1, ax0, ax1), (by0, by1, bx0, bx1) = self.box, o.box
    y0, y1, x0, x1 = min(ay0, by0), max(ay1, by1), min(ax0, bx0), max(ax1, bx1)
    out = Sp(y0, x0, np.zeros((y1 - y0, x1 - x0), bool), self.shape)
    out.or_in(self)
    out.or_in(o)
    return out

  def or_in(self, o: "Sp") -> None:
    """self |= o, where o's box lies inside self's."""
    if o.a.size:
      y0, y1, x0, x1 = o.box
      v = self.a[y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]
      np.bitwise_or(v, o.a, out=v)

  def __invert__(self) -> "Not":
    return Not(self)

  def any(self) -> bool:
    return bool(self.a.any())

  def count(self) -> int:
    return int(np.count_nonzero(self.a))

  def tight(self) -> "Sp":
    """The same mask on its bounding box (a view)."""
    if self.a.size == 0:
      return self
    x, y, w, h = cv2.boundingRect(self.a.view(np.uint8))
    if w == 0:
      return Sp.empty(self.shape)
    return Sp(self.y0 + y, self.x0 + x, self.a[y:y + h, x:x + w], self.shape)

  def edges(self) -> tuple[int, int, int, int] | None:
    """[x0, y0, x1, y1) of a tight mask's pixels (pixel edges), None when empty."""
    if self.a.size == 0:
      return None
    y0, y1, x0, x1 = self.box
    return x0, y0, x1, y1

  def dense(self) -> np.ndarray:
    out = np.zeros(self.shape, bool)
    self.paste(out)
    return out

  def paste(self, out: np.ndarray) -> None:
    """Write the whole mask into an HxW bool array (False outside the box)."""
    out[...] = False
    if self.a.size:
      y0, y1, x0, x1 = self.box
      out[y0:y1, x0:x1] = self.a


class Field:
  """An unbounded mask given by a function of a box (y0, y1, x0, x1) -> bool array."""

  __slots__ = ("fn",)

  def __init__(self, fn):
    self.fn = fn

  def __and__(self, o):
    if isinstance(o, Sp):
      return o & self
    return Field(lambda *b: _values(self, b) & _values(o, b))

  def __invert__(self) -> "Field":
    return Field(lambda *b: ~self.fn(*b))


class Not:
  """~m for a mask m; only used as `A & ~m`."""

  __slots__ = ("m",)

  def __init__(self, m):
    self.m = m

  def __and__(self, o):
    return o & self

  def __invert__(self):
    return self.m


def _values(m, b) -> np.ndarray:
  if isinstance(m, Sp):
    return m.crop(*b)
  if isinstance(m, Not):
    return ~_values(m.m, b)
  return m.fn(*b)


def threshold_le(values: np.ndarray, t: float) -> Field:
  """Pixels where an HxW map is <= t."""
  return Field(lambda y0, y1, x0, x1: values[y0:y1, x0:x1] <= t)


def equal(values: np.ndarray, v) -> Field:
  return Field(lambda y0, y1, x0, x1: values[y0:y1, x0:x1] == v)


def halfplane(shape, point, normal) -> Field:
  """geometry.halfplane, evaluated on a box (same arithmetic, so the same pixels)."""
  px, py = float(point[0]), float(point[1])
  nx, ny = float(normal[0]), float(normal[1])

  def fn(y0, y1, x0, x1):
    ys = (np.arange(y0, y1, dtype=np.float64) + 0.5 - py) * ny
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5 - px
    if abs(nx) < 1e-12:
      return np.broadcast_to((ys > 0)[:, None], (y1 - y0, x1 - x0)).copy()
    thr = -ys / nx
    return xs[None, :] > thr[:, None] if nx > 0 else xs[None, :] < thr[:, None]
  return Field(fn)


# --- rasterisers (the pixels of geometry.fill / polyline_band / ellipse)


def _canvas(shape, fixed: np.ndarray, pad: int):
  """Box (y0, y1, x0, x1) around fixed-point points plus `pad` pixels, clipped to the image."""
  lo = (fixed.min(0) >> geometry.SHIFT) - pad
  hi = (fixed.max(0) >> geometry.SHIFT) + pad + 1
  h, w = shape
  x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
  x1, y1 = min(w, int(hi[0])), min(h, int(hi[1]))
  return y0, max(y0, y1), x0, max(x0, x1)


def fill(shape, pts) -> Sp:
  """geometry.fill(shape, pts) for one polygon."""
  if len(pts) < 3:
    return Sp.empty(shape)
  f = geometry.fixed_point(pts)
  y0, y1, x0, x1 = _canvas(shape, f, 2)
  if y1 <= y0 or x1 <= x0:
    return Sp.empty(shape)
  m = np.zeros((y1 - y0, x1 - x0), np.uint8)
  cv2.fillPoly(m, [f - np.array([x0, y0], np.int32) * geometry.ONE], 1, cv2.LINE_8, geometry.SHIFT)
  return Sp(y0, x0, m.view(bool), shape)


def polyline_band(shape, pts, half_width: float) -> Sp:
  t = max(1, int(round(2 * half_width)))
  f = geometry.fixed_point(pts)
  y0, y1, x0, x1 = _canvas(shape, f, t // 2 + 3)
  if y1 <= y0 or x1 <= x0:
    return Sp.empty(shape)
  m = np.zeros((y1 - y0, x1 - x0), np.uint8)
  cv2.polylines(m, [f - np.array([x0, y0], np.int32) * geometry.ONE], False, 1, t, cv2.LINE_8, geometry.SHIFT)
  return Sp(y0, x0, m.view(bool), shape)


def ellipse(shape, center, axes, angle_deg: float) -> Sp:
  c = geometry.fixed_point([center])[0]
  r = int(np.ceil(max(axes))) + 3
  y0, y1, x0, x1 = _canvas(shape, c[None], r)
  if y1 <= y0 or x1 <= x0:
    return Sp.empty(shape)
  m = np.zeros((y1 - y0, x1 - x0), np.uint8)
  cs = (int(c[0]) - x0 * geometry.ONE, int(c[1]) - y0 * geometry.ONE)
  ax = tuple(max(1, int(round(a * geometry.ONE))) for a in axes)
  cv2.ellipse(m, cs, ax, angle_deg, 0, 360, 1, -1, cv2.LINE_8, geometry.SHIFT)
  return Sp(y0, x0, m.view(bool), shape)


def _grown(m: Sp, r: int):
  """The tight mask and the crop geometry.dilate/edge_band use: its box plus r+1, clipped."""
  t = m.tight()
  if t.a.size == 0:
    return None, None
  h, w = m.shape
  y0, y1, x0, x1 = t.box
  b = max(0, y0 - r - 1), min(h, y1 + r + 1), max(0, x0 - r - 1), min(w, x1 + r + 1)
  return t, b


def dilate(m: Sp, r: int) -> Sp:
  """geometry.dilate: grow by r pixels with a square."""
  if r <= 0:
    return m
  t, b = _grown(m, r)
  if t is None:
    return Sp.empty(m.shape)
  k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
  return Sp(b[0], b[2], cv2.dilate(t.crop(*b).view(np.uint8), k).view(bool), m.shape)


def edge_band(m: Sp, r: int) -> Sp:
  """geometry.edge_band: a band of about 2r+1 pixels on the mask's boundary."""
  t, b = _grown(m, r)
  if t is None:
    return Sp.empty(m.shape)
  crop = t.crop(*b).view(np.uint8)
  d = geometry._morph(cv2.dilate, crop, r)
  e = geometry._morph(cv2.erode, crop, r, borderType=cv2.BORDER_REPLICATE)
  return Sp(b[0], b[2], d > e, m.shape)


# --- stacks of sparse masks


def union(masks) -> Sp:
  """OR of several masks, on the union of their boxes."""
  ms = [m for m in masks if m.a.size]
  if not ms:
    return Sp.empty(masks[0].shape if masks else (0, 0))
  if len(ms) == 1:
    return ms[0]
  y0 = min(m.y0 for m in ms)
  x0 = min(m.x0 for m in ms)
  y1 = max(m.y0 + m.a.shape[0] for m in ms)
  x1 = max(m.x0 + m.a.shape[1] for m in ms)
  out = Sp(y0, x0, np.zeros((y1 - y0, x1 - x0), bool), ms[0].shape)
  for m in ms:
    out.or_in(m)
  return out


def count_and(m: Sp, dense: np.ndarray, box=None) -> int:
  """Pixels of m that are also set in an HxW bool array, looking only inside `box`
  (y0, y1, x0, x1), where the dense array's pixels all lie."""
  if m.a.size == 0:
    return 0
  y0, y1, x0, x1 = m.box
  if box is not None:
    y0, y1, x0, x1 = max(y0, box[0]), min(y1, box[1]), max(x0, box[2]), min(x1, box[3])
    if y1 <= y0 or x1 <= x0:
      return 0
  return int(np.count_nonzero(np.logical_and(m.crop(y0, y1, x0, x1), dense[y0:y1, x0:x1])))


def values_in(values: np.ndarray, m: Sp) -> np.ndarray:
  """An HxW map's values at the pixels of m (1-D)."""
  y0, y1, x0, x1 = m.box
  return values[y0:y1, x0:x1][m.a]
