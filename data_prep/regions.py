"""Region Masks for the 112 Atomic Concepts of FICT (Section 3.1); parents by union.

    atomic = sparse_atomic(labels, landmarks)         # 112 data_prep.sparse.Sp (box + pixels)
    allm = sparse_all(atomic)                         # all 184, parents by union, fict.NAMES order
    atomic = region_masks(labels, landmarks)          # (112, H, W) bool, fict.ATOMIC order
    masks = all_masks(atomic)                         # {name: HxW bool} for all 184 concepts

Each Atomic Concept has one procedure, listed in `PROCEDURES` (rendered as
docs/regions.md by `python -m data_prep.regions --doc`): a landmark polygon, band or
split, intersected with a face-parsing class, as in the paper's example of the middle
part of the left eyebrow (a polygon of brow landmarks AND the parsed eyebrow).  A
Parent Concept's Region Mask is exactly the union of its atomic descendants.

Conventions (see data_prep.geometry.FaceFrame): "left"/"right" are the subject's own;
s is the distance between the eye centres; v runs down the face; the *side* of a
pixel is which side of the facial midline (MediaPipe's 28 midline landmarks) it lies
on.  Edge concepts ("edges of X", "top edge of X") are bands of 2w+1 pixels centred on
the named boundary, w = EDGE (0.05 s, at least 1 pixel; THIN_EDGE 0.035 s for eyes and
brows); the image border is never an edge.  Landmark sets live in data_prep.mesh,
written for the subject's right side and mirrored for the left, so every procedure
is mirror-symmetric.  Paired parsing classes (eyes, brows, ears) are merged and split
by the landmarks, so the parser's own left/right convention does not matter.
"""

from __future__ import annotations

import argparse
import math
import sys

import cv2
import numpy as np

from data_prep import geometry
from data_prep import mesh
from data_prep import sparse
from data_prep.parsing import C

try:
  from fifa_jax import fict
except ImportError as e:  # pragma: no cover
  raise ImportError("data_prep needs fifa_jax.fict: pip install -e . --no-deps in .venv-prep") from e

# Sizes, in units of s (the distance between the eye centres).
EDGE = 0.05            # half-width of edge bands
THIN_EDGE = 0.035      # ... of eye and eyebrow edges
NEAR_HAIR = 0.6        # hair within this distance of the face oval is "hair near ..."
LOWER_JAW = 0.3        # jaw pixels within this distance of the face oval are "lower jaw"
FOREHEAD_UP = 1.2      # the forehead polygon reaches this far above the oval (real parsers)
TEMPLE_OUT = 0.3       # the temple polygon reaches this far outside the oval
FOLD = 0.06            # half-width of the nasolabial fold band
FEATURE_ROI = 0.15     # parsed eyes/brows/lips are taken within this distance of their polygon

OVAL_PART_NAMES = tuple(mesh.OVAL_PARTS)  # forehead, temple, ear, cheek, jaws
_SIDE_PART = {"forehead": "{} part of forehead", "temple": "{} temple", "ear": "{} ear",
              "cheek": "{} cheek", "jaws": "{} part of jaws"}


def _side_part(part: str, side: str) -> str:
  """The FICT wording for one face-oval part on one side, e.g. 'left part of jaws'."""
  return _SIDE_PART[part].format(side)

PROCEDURES: dict[str, str] = {
    # hair
    **{f"hair near {_side_part(p, side)}":
       f"hair class within {NEAR_HAIR} s of the face oval (MediaPipe's 36 oval landmarks) whose nearest "
       f"oval part is the {side} {p} part (oval landmarks {mesh.OVAL_PARTS[p]} on the right, mirrored "
       f"on the left)" for side in ("left", "right") for p in OVAL_PART_NAMES},
    "left part of outer hair": f"hair class farther than {NEAR_HAIR} s from the face oval, subject's left of the midline",
    "right part of outer hair": f"hair class farther than {NEAR_HAIR} s from the face oval, subject's right of the midline",
    "inner edge of hair": "edge band of the hair class where it meets the face (face classes or ears, within 2w)",
    "outer edge of hair": "the rest of the hair class's edge band (against background, hat, clothing, neck)",
    # forehead
    **{f"{ud} {side} part of forehead":
       f"skin class inside the forehead polygon (oval top landmarks 10,109,67,103,54 pushed {FOREHEAD_UP} s "
       f"up, down to the brow tops 70,63,105,66,107 and the glabella point 9, mirrored), {side} of the "
       f"midline, {'above' if ud == 'upper' else 'below'} the line halfway between the forehead's highest "
       f"pixel and the mean brow top" for ud in ("upper", "lower") for side in ("left", "right")},
    "top edge of forehead": "edge band of the forehead (union of its four parts) above that halfway line, minus the bottom edge",
    "bottom edge of forehead": "band along the brow-top line (70,63,105,66,107,9 and mirror) next to the forehead",
    **{f"{side} temple": f"skin class inside the temple polygon (oval 54,21,162,127 pushed {TEMPLE_OUT} s outwards, "
                         f"then 127,143,35,124,46,70 back along the eye socket and brow tail), {side} side"
       for side in ("left", "right")},
    **{f"edges of {side} temple": f"edge band of the {side} temple" for side in ("left", "right")},
    # eyebrows
    **{f"{part} of {side} eyebrow":
       f"eyebrow classes within {FEATURE_ROI} s of the {side} brow polygon (70,63,105,66,107 / 46,53,52,65,55), "
       f"in the {third} third along the brow axis (head = medial end 107/55, tail = lateral end 70/46)"
       for side in ("left", "right")
       for part, third in (("headstart", "medial"), ("middle part", "middle"), ("tail", "lateral"))},
    **{f"{tb} edge of {side} eyebrow":
       f"edge band (w = THIN_EDGE) of the {side} eyebrow, on the {'upper' if tb == 'top' else 'lower'} side "
       f"of the brow's centre line (midpoints of its upper and lower landmarks)"
       for side in ("left", "right") for tb in ("top", "bottom")},
    "region between eyebrows": "skin class in the polygon 9,107,55,8 (and mirror), minus eyebrows",
    # eyes
    **{f"iris of {side} eye": f"eye classes near the {side} eye contour, inside the circle through the refined "
                              f"iris landmarks (centre 468/473, radius = mean distance to the 4 rim points)"
       for side in ("left", "right")},
    **{f"sclera of {side} eye": f"eye classes near the {side} eye contour, outside the iris circle"
       for side in ("left", "right")},
    **{f"{tb} edge of {side} eye": f"band (w = THIN_EDGE) along the {'upper' if tb == 'top' else 'lower'} lid contour "
                                   f"of the {side} eye ({'33,246,161,160,159,158,157,173,133' if tb == 'top' else '33,7,163,144,145,153,154,155,133'} on the right)"
       for side in ("left", "right") for tb in ("top", "bottom")},
    "region between eyes": "skin or nose classes in the polygon 168,193,189,190,133,243,244,245,122,6 (and mirror), minus eyes",
    **{f"upper eyelid of {side} eye": f"skin class between the {side} upper lid contour and the third mesh ring above it "
                                      f"(226,113,225,224,223,222,221,189,244 on the right)" for side in ("left", "right")},
    **{f"lower eyelid of {side} eye": f"skin class between the {side} lower lid contour and the second mesh ring below it "
                                      f"(130,25,110,24,23,22,26,112,243)" for side in ("left", "right")},
    **{f"eye bag of {side} eye": f"skin class between the second and third mesh rings below the {side} eye "
                                 f"(to 226,31,228,229,230,231,232,233,244)" for side in ("left", "right")},
    **{f"upper eye socket of {side} eye": f"skin class between the third ring above the {side} eye and the lower "
                                         f"brow contour (46,53,52,65,55), minus eyebrows" for side in ("left", "right")},
    **{f"lower eye socket of {side} eye": f"skin class between the third and fourth mesh rings below the {side} eye "
                                         f"(to 143,111,117,118,119,120,121,128,245)" for side in ("left", "right")},
    # ears
    **{f"{ul} part of {side} ear": f"ear classes on the {side} of the midline, {'above' if ul == 'upper' else 'below'} "
                                   f"the middle of that ear's vertical (v) extent" for side in ("left", "right")
       for ul in ("upper", "lower")},
    **{f"edges of {side} ear": f"edge band of the {side} ear" for side in ("left", "right")},
    # nose
    "nasion": "nose or skin classes in the polygon 168,193,122,6 (and mirror): the root of the nose",
    "nose bridge": "nose or skin classes in the polygon 6,122,196,3,51,5 (and mirror): the dorsum",
    "nasal ala of left side": "nose or skin classes in the polygon 134,45,44,99,240,64,129,131 mirrored to the left",
    "nasal ala of right side": "nose or skin classes in the polygon 134,45,44,99,240,64,129,131",
    "nose base": "nose or skin classes in the polygon 5,51,45,44,125,141,2 (and mirror): tip, columella, base",
    "edges of nose": "edge band of the nose class (near the nose outline)",
    # cheeks
    **{f"{ul} part of {side} cheek":
       f"skin class in the {side} cheek polygon (below the fourth ring under the eye, lateral to the nose "
       f"and the nasolabial fold, above 212,214,138,172, inside the oval), {'above' if ul == 'upper' else 'below'} "
       f"the level halfway between that ring and the mouth corner" for side in ("left", "right")
       for ul in ("upper", "lower")},
    **{f"edges of {side} cheek": f"edge band of the {side} cheek" for side in ("left", "right")},
    # mouth
    "upper lip": f"upper-lip class within {FEATURE_ROI} s of the outer lip contour",
    "lower lip": f"lower-lip class within {FEATURE_ROI} s of the outer lip contour",
    "oral cavity": f"mouth (inner mouth) class within {FEATURE_ROI} s of the outer lip contour; empty when the mouth is closed",
    "top edge of mouth": "edge band of the mouth (lips + oral cavity) above the line through the mouth corners 61, 291",
    "bottom edge of mouth": "edge band of the mouth below the line through the mouth corners",
    # jaws, chin
    **{f"{side} part of {ul} jaw":
       f"skin class in the {side} jaw polygon (212,214,138,172 down the jawline 136,150,149,176, back up the "
       f"chin side 140,32,194,182,106,43,61,57), {'farther than' if ul == 'upper' else 'within'} {LOWER_JAW} s "
       f"of the face oval (or of half the jaw's depth from the oval when that is less)"
       for side in ("left", "right") for ul in ("upper", "lower")},
    "top edge of jaws": "band along the cheek/jaw boundary 212,214,138,172 (both sides)",
    "bottom edge of jaws": "band along the jawline 58,172,136,150,149,176 (both sides)",
    **{f"{side} part of chin": f"skin class in the chin polygon (below the lower lip 17,84,181,91,146, between "
                               f"43,106,182,194,32,140,176 and mirror, down to the oval), {side} of the midline"
       for side in ("left", "right")},
    "edges of chin": "edge band of the chin",
    "philtrum": "skin class in the polygon 2,167,37,0 (and mirror)",
    **{f"nasolabial fold of {side} side": f"skin class within {FOLD} s of the {side} fold line 129,203,206,216,212"
       for side in ("left", "right")},
    # face edge
    **{f"face edge near {_side_part(p, side)}":
       f"edge band of the face (face classes) within 0.5 s of the oval, whose nearest oval part is the {side} {p}"
       for side in ("left", "right") for p in OVAL_PART_NAMES},
    # neck, adornments, clothing, background
    "neck": "neck class",
    "edges of neck": "edge band of the neck class",
    "hat": "hat class (empty with the builtin parser)",
    "edges of hat": "edge band of the hat class",
    "eyeglasses": "eyeglasses class (empty with the builtin parser)",
    "edges of eyeglasses": "edge band of the eyeglasses class",
    "left earring": "earring class on the subject's left of the midline (empty with the builtin parser)",
    "right earring": "earring class on the subject's right of the midline",
    "edges of earrings": "edge band of the earring class",
    "clothing": "cloth class",
    "edges of clothing": "edge band of the cloth class",
    "left part of background": "background class on the subject's left of the midline (the image's right for a frontal face)",
    "right part of background": "background class on the subject's right of the midline",
}


def _check_procedures():
  missing = [a for a in fict.ATOMIC if a not in PROCEDURES]
  extra = [a for a in PROCEDURES if a not in fict.ATOMIC]
  if missing or extra:
    raise AssertionError(f"PROCEDURES out of step with FICT: missing {missing}, unknown {extra}")


_check_procedures()


class _Ctx:
  def __init__(self, labels: np.ndarray, landmarks: np.ndarray):
    self.lab = labels
    self.shape = labels.shape
    self.f = geometry.FaceFrame(landmarks, self.shape)
    self.lm = self.f.lm
    self.w = self.f.px(EDGE)
    self.wt = self.f.px(THIN_EDGE)
    self._cls = {}
    self.left = sparse.Sp.full(self.f.left)

  def cls(self, *names) -> sparse.Sp:
    """Pixels of any of the parsing classes, on their bounding box (cached)."""
    m = self._cls.get(names)
    if m is None:
      if len(names) == 1:
        a = self.lab == C[names[0]]
      else:
        lut = np.zeros(256, np.uint8)
        lut[[C[n] for n in names]] = 1
        a = cv2.LUT(self.lab, lut).view(bool)
      m = self._cls[names] = sparse.Sp.full(a).tight()
    return m

  def cls_in(self, *names) -> sparse.Field:
    """Pixels of any of the parsing classes, evaluated only on the box of the mask it
    is ANDed with (for classes only ever intersected with a landmark region)."""
    lab = self.lab
    if len(names) == 1:
      c = C[names[0]]
      return sparse.Field(lambda y0, y1, x0, x1: lab[y0:y1, x0:x1] == c)
    lut = np.zeros(256, np.uint8)
    lut[[C[n] for n in names]] = 1
    return sparse.Field(lambda y0, y1, x0, x1: cv2.LUT(lab[y0:y1, x0:x1], lut).view(bool))

  def P(self, idx, side="R") -> np.ndarray:
    return self.lm[list(idx) if side == "R" else mesh.mirror(idx)]

  def poly(self, idx, side="R") -> sparse.Sp:
    return sparse.fill(self.shape, self.P(idx, side))

  def sym(self, chain) -> sparse.Sp:
    return sparse.fill(self.shape, self.lm[mesh.sym_polygon(chain)])

  def push(self, pts, du=0.0, dv=0.0) -> np.ndarray:
    return pts + self.f.s * (du * self.f.ex + dv * self.f.ey)

  def below(self, v0: float) -> sparse.Field:
    """Pixels (centres) with v > v0: below a line across the face."""
    return sparse.halfplane(self.shape, self.f.xy(np.array([0.0, v0])), self.f.ey)

  def v_range(self, mask: sparse.Sp) -> tuple[float, float]:
    """Least and greatest v of a non-empty mask's pixel centres.  v is linear in x along
    a row, so only each row's first and last pixel are needed."""
    a = mask.a
    rows = np.flatnonzero(a.any(1))
    first = a[rows].argmax(1)
    last = a.shape[1] - 1 - a[rows, ::-1].argmax(1)
    xs = np.concatenate([first, last]) + (mask.x0 + 0.5)
    ys = np.concatenate([rows, rows]) + (mask.y0 + 0.5)
    v = self.f.uv(np.stack([xs, ys], -1))[:, 1]
    return float(v.min()), float(v.max())

  def oval_parts(self):
    """Nearest oval part (0 none, 1..5 right forehead..jaws, 6..10 left) and distance (s units)."""
    h, w = self.shape
    k = max(1, math.ceil(max(h, w) / 384))
    sh, sw = math.ceil(h / k), math.ceil(w / k)
    seeds = np.full((sh, sw), 255, np.uint8)
    seg = np.zeros((sh, sw), np.uint8)
    for si, side in enumerate("RL"):
      for pi, part in enumerate(OVAL_PART_NAMES):
        pts = geometry.fixed_point(self.P(mesh.OVAL_PARTS[part], side) / k)
        cv2.polylines(seeds, [pts], False, 0, 1, cv2.LINE_8, geometry.SHIFT)
        cv2.polylines(seg, [pts], False, si * 5 + pi + 1, 1, cv2.LINE_8, geometry.SHIFT)
    dist, lab = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    zy, zx = np.nonzero(seeds == 0)
    lut = np.zeros(lab.max() + 1, np.uint8)
    lut[lab[zy, zx]] = seg[zy, zx]
    part = lut[lab]
    if zy.size == 0:
      part[:] = 0
      dist[:] = np.inf
    self.part_boxes = self._part_boxes(part, k)
    if k > 1:
      part = cv2.resize(part, (w, h), interpolation=cv2.INTER_NEAREST)
      dist = cv2.resize(dist, (w, h), interpolation=cv2.INTER_LINEAR)
    self.part = part
    return part, dist * (k / self.f.s)

  def _part_boxes(self, small: np.ndarray, k: int) -> dict:
    """For each oval part code, a box (y0, y1, x0, x1) holding all its pixels at full
    size, from the k-times smaller map (a pixel of margin covers the nearest-neighbour
    upscaling's rounding)."""
    h, w = self.shape
    sh, sw = small.shape
    out = {}
    for code in range(1, 11):
      x, y, bw, bh = cv2.boundingRect((small == code).view(np.uint8))
      if bw == 0:
        out[code] = (0, 0, 0, 0)
        continue
      out[code] = (max(0, math.floor(y * h / sh) - 1), min(h, math.ceil((y + bh) * h / sh) + 1),
                   max(0, math.floor(x * w / sw) - 1), min(w, math.ceil((x + bw) * w / sw) + 1))
    return out

  def in_part(self, m: sparse.Sp, code: int) -> sparse.Sp:
    """The pixels of m whose nearest oval part is `code` (looked at inside that part's box)."""
    return m.clip(*self.part_boxes[code]) & sparse.equal(self.part, code)


def _outer_concepts(x: "_Ctx", part: np.ndarray, d_oval: np.ndarray, out: dict) -> None:
  """Concepts that may reach anywhere in the picture (hair, ears, neck, clothing, background)."""
  w = x.w
  left = x.left
  right = ~left
  sides = {"right": right, "left": left}
  face_cls = x.cls("skin", "nose", "l_brow", "r_brow", "l_eye", "r_eye", "mouth", "u_lip", "l_lip", "eye_g")
  ears_cls = x.cls("l_ear", "r_ear")

  # --- hair
  hair = x.cls("hair")
  near = hair & sparse.threshold_le(d_oval, NEAR_HAIR)
  for si, side in enumerate(("right", "left")):
    for pi, p in enumerate(OVAL_PART_NAMES):
      out[f"hair near {_side_part(p, side)}"] = x.in_part(near, si * 5 + pi + 1)
  outer = hair & ~near
  out["left part of outer hair"] = outer & left
  out["right part of outer hair"] = outer & right
  band = sparse.edge_band(hair, w)
  inner = band & sparse.dilate(face_cls | ears_cls, 2 * w)
  out["inner edge of hair"] = inner
  out["outer edge of hair"] = band & ~inner

  # --- ears
  for side in ("left", "right"):
    ear = ears_cls & sides[side]
    if ear.any():
      lo, hi = x.v_range(ear)
      low = x.below((lo + hi) / 2)
      out[f"upper part of {side} ear"] = ear & ~low
      out[f"lower part of {side} ear"] = ear & low
    else:
      out[f"upper part of {side} ear"] = out[f"lower part of {side} ear"] = ear
    out[f"edges of {side} ear"] = sparse.edge_band(ear, w)

  # --- neck, adornments, clothing, background
  for concept, cls in (("neck", "neck"), ("hat", "hat"), ("eyeglasses", "eye_g"), ("clothing", "cloth")):
    m = x.cls(cls)
    out[concept] = m
    out[f"edges of {concept}"] = sparse.edge_band(m, w)
  ring = x.cls("ear_r")
  out["left earring"] = ring & left
  out["right earring"] = ring & right
  out["edges of earrings"] = sparse.edge_band(ring, w)
  bg = x.cls("background")
  out["left part of background"] = bg & left
  out["right part of background"] = bg & right



def _face_concepts(x: "_Ctx", part: np.ndarray, d_oval: np.ndarray, out: dict) -> None:
  """Concepts of the face, one facial area after another (each from landmark polygons,
  bands and splits); the eyebrows go first because the eyes' sockets exclude them."""
  skin = x.cls_in("skin")
  _forehead(x, skin, out)
  _temples(x, skin, out)
  brows = _eyebrows(x, skin, out)
  _eyes(x, skin, brows, out)
  _nose(x, out)
  _cheeks(x, skin, out)
  _mouth(x, out)
  _jaws_and_chin(x, skin, d_oval, out)
  _face_edge(x, d_oval, out)


SIDE_KEY = {"right": "R", "left": "L"}  # FICT's side names -> the landmark tables' mirror key


def _sides(x: "_Ctx") -> dict[str, sparse.Sp]:
  return {"right": ~x.left, "left": x.left}


def _forehead(x: "_Ctx", skin, out: dict) -> None:
  shape, f, w = x.shape, x.f, x.w
  top_r = x.push(x.P(mesh.FOREHEAD_TOP_R), dv=-FOREHEAD_UP)
  top_l = x.push(x.P(mesh.FOREHEAD_TOP_R, "L"), dv=-FOREHEAD_UP)
  bottom_r, bottom_l = x.P(mesh.FOREHEAD_BOTTOM_R), x.P(mesh.FOREHEAD_BOTTOM_R, "L")
  poly = np.concatenate([top_r[::-1], top_l[1:], bottom_l, bottom_r[::-1][1:]])
  forehead = sparse.fill(shape, poly) & skin
  brow_up = np.concatenate([x.P(mesh.BROW_UP), x.P(mesh.BROW_UP, "L")])
  v_bottom = f.uv(brow_up)[:, 1].mean()
  v_split = (x.v_range(forehead)[0] + v_bottom) / 2 if forehead.any() else v_bottom
  lower_half = x.below(v_split)
  sides = _sides(x)
  for side in ("left", "right"):
    out[f"upper {side} part of forehead"] = forehead & sides[side] & ~lower_half
    out[f"lower {side} part of forehead"] = forehead & sides[side] & lower_half
  line = np.concatenate([x.P(mesh.FOREHEAD_BOTTOM_R[1:]), x.P(mesh.FOREHEAD_BOTTOM_R[1:-1], "L")[::-1]])
  bottom_edge = sparse.polyline_band(shape, line, w) & sparse.dilate(forehead, 2 * w)
  out["bottom edge of forehead"] = bottom_edge
  out["top edge of forehead"] = sparse.edge_band(forehead, w) & ~lower_half & ~bottom_edge


def _temples(x: "_Ctx", skin, out: dict) -> None:
  for side in ("left", "right"):
    sk = SIDE_KEY[side]
    out_dir = 1.0 if side == "left" else -1.0
    lat = x.P(mesh.TEMPLE_LATERAL_R, sk)
    poly = np.concatenate([lat[:1], x.push(lat, du=out_dir * TEMPLE_OUT), lat[-1:],
                           x.P(mesh.TEMPLE_INNER_R, sk)])
    t = sparse.fill(x.shape, poly) & skin
    out[f"{side} temple"] = t
    out[f"edges of {side} temple"] = sparse.edge_band(t, x.w)


def _eyebrows(x: "_Ctx", skin, out: dict) -> sparse.Sp:
  """The eyebrows' concepts; returns both eyebrows' union."""
  shape, f, wt = x.shape, x.f, x.wt
  brow_cls = x.cls_in("l_brow", "r_brow")
  brows = []
  for side in ("left", "right"):
    sk = SIDE_KEY[side]
    roi = sparse.dilate(x.poly(mesh.BROW, sk), f.px(FEATURE_ROI))
    brow = brow_cls & roi
    brows.append(brow)
    head = x.P(mesh.BROW_HEAD_R, sk).mean(0)
    tail = x.P(mesh.BROW_TAIL_R, sk).mean(0)
    axis = tail - head
    n = np.array([-axis[1], axis[0]]) / max(np.hypot(*axis), 1e-6) * f.s
    for name, t0, t1 in (("headstart", -1.0, 1 / 3), ("middle part", 1 / 3, 2 / 3), ("tail", 2 / 3, 2.0)):
      a, b = head + t0 * axis, head + t1 * axis
      out[f"{name} of {side} eyebrow"] = brow & sparse.fill(shape, np.array([a - n, b - n, b + n, a + n]))
    up, lo = x.P(mesh.BROW_UP, sk), x.P(mesh.BROW_LO, sk)
    centre = (up + lo) / 2
    ext0 = centre[0] + (centre[0] - centre[-1]) * 0.5
    ext1 = centre[-1] + (centre[-1] - centre[0]) * 0.5
    cl = np.concatenate([[ext0], centre, [ext1]])
    upper = sparse.fill(shape, np.concatenate([cl, x.push(cl, dv=-1.0)[::-1]]))
    bband = sparse.edge_band(brow, wt)
    out[f"top edge of {side} eyebrow"] = bband & upper
    out[f"bottom edge of {side} eyebrow"] = bband & ~upper
  brows_all = sparse.union(brows)
  out["region between eyebrows"] = x.sym(mesh.BETWEEN_BROWS_CHAIN) & skin & ~brows_all
  return brows_all


def _eyes(x: "_Ctx", skin, brows: sparse.Sp, out: dict) -> None:
  shape, f, wt = x.shape, x.f, x.wt
  eye_cls = x.cls_in("l_eye", "r_eye")
  eyes = []
  for side in ("left", "right"):
    sk = SIDE_KEY[side]
    eye = eye_cls & sparse.dilate(x.poly(mesh.EYE, sk), f.px(FEATURE_ROI * 0.5))
    eyes.append(eye)
    c = x.P([mesh.IRIS_CENTER], sk)[0]
    r = float(np.linalg.norm(x.P(mesh.IRIS_RIM, sk) - c, axis=1).mean())
    disk = sparse.ellipse(shape, c, (r, r), 0.0)
    out[f"iris of {side} eye"] = eye & disk
    out[f"sclera of {side} eye"] = eye & ~disk
    out[f"top edge of {side} eye"] = sparse.polyline_band(shape, x.P(mesh.EYE_UP, sk), wt)
    out[f"bottom edge of {side} eye"] = sparse.polyline_band(shape, x.P(mesh.EYE_LO, sk), wt)
    out[f"upper eyelid of {side} eye"] = x.poly(mesh.EYE_UP + mesh.RING3_UP[::-1], sk) & skin
    out[f"lower eyelid of {side} eye"] = x.poly(mesh.EYE_LO + mesh.RING2_LO[::-1], sk) & skin
    out[f"eye bag of {side} eye"] = x.poly(mesh.RING2_LO + mesh.RING3_LO[::-1], sk) & skin
    out[f"upper eye socket of {side} eye"] = x.poly(mesh.UPPER_SOCKET_R, sk) & skin & ~brows
    out[f"lower eye socket of {side} eye"] = x.poly(mesh.RING3_LO + mesh.RING4_LO[::-1], sk) & skin
  out["region between eyes"] = x.sym(mesh.BETWEEN_EYES_CHAIN) & x.cls_in("nose", "skin") & ~sparse.union(eyes)


def _nose(x: "_Ctx", out: dict) -> None:
  nose_any = x.cls_in("nose", "skin")
  out["nasion"] = x.sym(mesh.NASION_CHAIN) & nose_any
  out["nose bridge"] = x.sym(mesh.BRIDGE_CHAIN) & nose_any
  out["nose base"] = x.sym(mesh.BASE_CHAIN) & nose_any
  out["nasal ala of right side"] = x.poly(mesh.ALA_R) & nose_any
  out["nasal ala of left side"] = x.poly(mesh.ALA_R, "L") & nose_any
  nose_roi = sparse.dilate(x.sym(mesh.NOSE_CHAIN), x.f.px(0.3))
  out["edges of nose"] = sparse.edge_band(x.cls_in("nose") & nose_roi, x.w)


def _cheeks(x: "_Ctx", skin, out: dict) -> None:
  """Cheeks and nasolabial folds."""
  f = x.f
  for side in ("left", "right"):
    sk = SIDE_KEY[side]
    cheek = x.poly(mesh.CHEEK_R, sk) & skin
    v_split = (f.uv(x.P(mesh.RING4_LO, sk))[:, 1].mean() + f.uv(x.P([mesh.MOUTH_CORNER_R], sk))[0, 1]) / 2
    low = x.below(v_split)
    out[f"upper part of {side} cheek"] = cheek & ~low
    out[f"lower part of {side} cheek"] = cheek & low
    out[f"edges of {side} cheek"] = sparse.edge_band(cheek, x.w)
    out[f"nasolabial fold of {side} side"] = sparse.polyline_band(
        x.shape, x.P(mesh.NASOLABIAL_R, sk), f.px(FOLD)) & skin


def _mouth(x: "_Ctx", out: dict) -> None:
  shape, f = x.shape, x.f
  mroi = sparse.dilate(sparse.fill(shape, x.P(mesh.LIP_OUT_UP + mesh.LIP_OUT_LO[-2:0:-1])), f.px(FEATURE_ROI))
  ulip, llip, cav = mroi & x.cls_in("u_lip"), mroi & x.cls_in("l_lip"), mroi & x.cls_in("mouth")
  out["upper lip"], out["lower lip"], out["oral cavity"] = ulip, llip, cav
  band = sparse.edge_band(ulip | llip | cav, x.w)
  c0, c1 = x.P([mesh.MOUTH_CORNER_R])[0], x.P([mesh.MOUTH_CORNER_L])[0]
  dirv = c1 - c0
  nrm = np.array([-dirv[1], dirv[0]])
  if nrm @ f.ey < 0:
    nrm = -nrm
  below_corners = sparse.halfplane(shape, c0, nrm)
  out["top edge of mouth"] = band & ~below_corners
  out["bottom edge of mouth"] = band & below_corners


def _jaws_and_chin(x: "_Ctx", skin, d_oval: np.ndarray, out: dict) -> None:
  """Jaws, chin and philtrum."""
  shape, w = x.shape, x.w
  for side in ("left", "right"):
    jaw = x.poly(mesh.JAW_R, SIDE_KEY[side]) & skin
    depth = float(sparse.values_in(d_oval, jaw).max()) if jaw.any() else 0.0
    low = jaw & sparse.threshold_le(d_oval, min(LOWER_JAW, depth / 2))
    out[f"{side} part of lower jaw"] = low
    out[f"{side} part of upper jaw"] = jaw & ~low
  out["top edge of jaws"] = (sparse.polyline_band(shape, x.P(mesh.CHEEK_JAW_LINE_R), w)
                             | sparse.polyline_band(shape, x.P(mesh.CHEEK_JAW_LINE_R, "L"), w))
  out["bottom edge of jaws"] = (sparse.polyline_band(shape, x.P(mesh.JAWLINE_R), w)
                                | sparse.polyline_band(shape, x.P(mesh.JAWLINE_R, "L"), w))
  chin = x.sym(mesh.CHIN_CHAIN) & skin
  sides = _sides(x)
  out["left part of chin"] = chin & sides["left"]
  out["right part of chin"] = chin & sides["right"]
  out["edges of chin"] = sparse.edge_band(chin, w)
  out["philtrum"] = x.sym(mesh.PHILTRUM_CHAIN) & skin


def _face_edge(x: "_Ctx", d_oval: np.ndarray, out: dict) -> None:
  face_cls = x.cls("skin", "nose", "l_brow", "r_brow", "l_eye", "r_eye", "mouth", "u_lip", "l_lip", "eye_g")
  fband = sparse.edge_band(face_cls, x.w) & sparse.threshold_le(d_oval, 0.5)
  for si, side in enumerate(("right", "left")):
    for pi, p in enumerate(OVAL_PART_NAMES):
      out[f"face edge near {_side_part(p, side)}"] = x.in_part(fband, si * 5 + pi + 1)


def sparse_atomic(labels: np.ndarray, landmarks: np.ndarray) -> list[sparse.Sp]:
  """The 112 atomic Region Masks in `fict.ATOMIC` order, each on its bounding box
  (data_prep.sparse.Sp; an empty mask has an empty box).

  labels: HxW uint8 parsing in `parsing.CLASSES`; landmarks: (478, 3) pixels.
  """
  labels = np.ascontiguousarray(labels, dtype=np.uint8)
  x = _Ctx(labels, np.asarray(landmarks, np.float64))
  part, d_oval = x.oval_parts()
  out: dict[str, sparse.Sp] = {}
  _outer_concepts(x, part, d_oval, out)
  _face_concepts(x, part, d_oval, out)
  missing = [a for a in fict.ATOMIC if a not in out]
  if missing or len(out) != len(fict.ATOMIC):
    raise AssertionError(f"region procedures missing {missing}")
  return [out[a].tight() for a in fict.ATOMIC]


def sparse_all(atomic: list[sparse.Sp]) -> list[sparse.Sp]:
  """All 184 Region Masks in `fict.NAMES` order from the tight sparse atomic ones; each
  parent is the union of its children on the union of their boxes, which is tight too."""
  allm: list = [None] * len(fict.NAMES)
  for k, p in enumerate(ATOMIC_POS):
    allm[p] = atomic[k]
  for p, ch in UNION_PLAN:
    allm[p] = sparse.union([allm[c] for c in ch])
  return allm


def region_masks(labels: np.ndarray, landmarks: np.ndarray, packed: bool = False) -> np.ndarray:
  """The 112 atomic Region Masks in `fict.ATOMIC` order, dense: (112, H, W) bool, or
  with `packed` (112, H, ceil(W/8)) uint8 (data_prep.masks)."""
  h, w = np.shape(labels)
  atomic = np.empty((len(fict.ATOMIC), h, w), bool)
  for k, m in enumerate(sparse_atomic(labels, landmarks)):
    m.paste(atomic[k])
  return np.packbits(atomic, axis=-1) if packed else atomic


def fill_concepts(buf: np.ndarray, labels: np.ndarray, landmarks: np.ndarray, parents: bool = True) -> np.ndarray:
  """Write all Region Masks into `buf`, a (184, H, W) bool array in `fict.NAMES` order
  (reused between images of one size to spare allocations); parents too unless
  `parents=False`.  Returns buf."""
  h, w = np.shape(labels)
  if buf.shape != (len(fict.NAMES), h, w) or buf.dtype != bool:
    raise ValueError(f"buffer of shape {buf.shape} {buf.dtype}, need {(len(fict.NAMES), h, w)} bool")
  for k, m in enumerate(sparse_atomic(labels, landmarks)):
    m.paste(buf[ATOMIC_POS[k]])
  if parents:
    unions_inplace(buf)
  return buf


# --- parents: unions of atomic descendants


def _union_plan():
  """Parents in an order where every child is ready: (parent index, child indices) in NAMES."""
  idx = {n: i for i, n in enumerate(fict.NAMES)}
  plan = []
  for name in reversed(fict.NAMES):  # children come after their parent in pre-order
    c = fict.get(name)
    if not c.is_atomic:
      plan.append((idx[name], [idx[ch] for ch in c.children]))
  return plan


UNION_PLAN = _union_plan()
ATOMIC_POS = np.array([fict.NAMES.index(a) for a in fict.ATOMIC])  # atomic k -> position in NAMES


def unions_inplace(allm: np.ndarray) -> np.ndarray:
  """Fill the parent rows of a (184, ...) stack (fict.NAMES order) from its atomic rows."""
  for p, ch in UNION_PLAN:
    np.bitwise_or(allm[ch[0]], allm[ch[1]], out=allm[p]) if len(ch) > 1 else np.copyto(allm[p], allm[ch[0]])
    for c in ch[2:]:
      np.bitwise_or(allm[p], allm[c], out=allm[p])
  return allm


def all_from_atomic(atomic: np.ndarray) -> np.ndarray:
  """(184, ...) masks in `fict.NAMES` order from the (112, ...) atomic ones (bool or packed uint8).

  Each parent is the OR of its children, which is exactly the union of its atomic
  descendants.
  """
  out = np.empty((len(fict.NAMES),) + atomic.shape[1:], atomic.dtype)
  out[ATOMIC_POS] = atomic
  return unions_inplace(out)


def all_masks(atomic: np.ndarray) -> dict[str, np.ndarray]:
  """{FICT name: HxW bool} for all 184 concepts."""
  allm = all_from_atomic(np.asarray(atomic, bool))
  return {n: allm[i] for i, n in enumerate(fict.NAMES)}


def doc_markdown() -> str:
  lines = ["# Region procedures for the 112 Atomic Concepts", "",
           "Generated by `python -m data_prep.regions --doc` from `data_prep/regions.py` "
           "(conventions in its docstring; s = distance between the eye centres, w = edge half-width "
           f"{EDGE} s, landmark numbers are MediaPipe FaceMesh indices, given for the subject's right side "
           "and mirrored for the left). Every Parent Concept is the union of its atomic descendants.", "",
           "| # | Atomic Concept | Procedure |", "|---|---|---|"]
  for i, a in enumerate(fict.ATOMIC):
    lines.append(f"| {i} | {a} | {PROCEDURES[a]} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_prep.regions", description="Region procedures of the annotator")
  ap.add_argument("--doc", action="store_true", help="print the procedure table as Markdown")
  a = ap.parse_args(argv)
  if a.doc:
    sys.stdout.write(doc_markdown())
  else:
    for i, n in enumerate(fict.ATOMIC):
      print(f"{i:3d}  {n}: {PROCEDURES[n]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
