"""Facial landmarks: MediaPipe FaceMesh 0.10.21 with refined landmarks (478 points).

`Landmarker().detect(rgb)` returns a `FaceResult` with `landmarks`, a (478, 3)
float32 array in pixels: x and y are image columns and rows (pixel centres at
integer + 0.5 are not used; MediaPipe's normalised x*W, y*H), z is MediaPipe's
relative depth scaled by the image width (smaller is nearer the camera).

Per-image outcomes (docs/annotator.md):
* no face: `NoFaceError`.  Before giving up the image is tried once more inside a
  grey border of 25% per side, which rescues tight crops and faces cut by the edge.
* several faces: by default the largest face (area of its landmark box) is used and
  `n_faces` records how many were found (flag `several_faces`); with
  `multi_face="error"` a `SeveralFacesError` is raised instead.
* flip averaging (default): the landmarks are the mean of those of the picture and
  those of its mirror image mirrored back (index permutation data_prep.mesh.MIRROR),
  which removes MediaPipe's own left/right bias and makes the annotator equivariant
  under horizontal flips (`flip_average=False` to use one pass).
* a face cut by the image border: `cut_fraction` is the share of the 478 landmarks
  outside the image.  By default the face is used and flagged (`cut_face`), and the
  masks are clipped to the image; with `max_cut=<fraction>` a face cut more than
  that raises `CutFaceError`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_LANDMARKS = 478


class FaceError(ValueError):
  """No usable face in an image; the message says why."""


class NoFaceError(FaceError):
  pass


class SeveralFacesError(FaceError):
  pass


class CutFaceError(FaceError):
  pass


@dataclasses.dataclass
class FaceResult:
  landmarks: np.ndarray       # (478, 3) float32, pixels
  n_faces: int = 1            # faces found; the largest is `landmarks`
  cut_fraction: float = 0.0   # share of landmarks outside the image
  padded: bool = False        # found only after padding the image

  @property
  def flags(self) -> list[str]:
    out = []
    if self.n_faces > 1:
      out.append("several_faces")
    if self.cut_fraction > 0:
      out.append("cut_face")
    if self.padded:
      out.append("found_after_padding")
    return out


def cut_fraction(landmarks: np.ndarray, height: int, width: int) -> float:
  x, y = landmarks[:, 0], landmarks[:, 1]
  outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
  return float(outside.mean())


# A NormalizedLandmark on the wire when exactly x, y and z are set: tag 0x0a, length 15,
# then 0x0d x, 0x15 y, 0x1d z as little-endian float32s.
_WIRE = np.dtype([("head", "u1", 2), ("tx", "u1"), ("x", "<f4"), ("ty", "u1"), ("y", "<f4"),
                  ("tz", "u1"), ("z", "<f4")])


def _landmark_array(lms) -> np.ndarray:
  """(n, 3) float32 normalised x, y, z of a NormalizedLandmarkList: read from its
  serialised bytes when every landmark has the plain layout above (a tenth of the time
  of 478 protobuf attribute reads), else field by field."""
  b = lms.SerializeToString()
  if len(b) % _WIRE.itemsize == 0:
    r = np.frombuffer(b, _WIRE)
    if ((r["head"] == (0x0A, 0x0F)).all() and (r["tx"] == 0x0D).all() and (r["ty"] == 0x15).all()
        and (r["tz"] == 0x1D).all()):
      return np.stack([r["x"], r["y"], r["z"]], 1)
  return np.array([(p.x, p.y, p.z) for p in lms.landmark], np.float32)


class Landmarker:
  """One FaceMesh graph, reused for every image (build one per process)."""

  def __init__(self, max_faces: int = 4, min_confidence: float = 0.5,
               multi_face: str = "largest", max_cut: float | None = None, pad_retry: bool = True,
               flip_average: bool = True):
    if multi_face not in ("largest", "error"):
      raise ValueError(f"multi_face must be 'largest' or 'error', not {multi_face!r}")
    import mediapipe as mp  # deferred: heavy, and only this module needs it
    self._mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=max_faces,
        min_detection_confidence=min_confidence)
    self.multi_face = multi_face
    self.max_cut = max_cut
    self.pad_retry = pad_retry
    self.flip_average = flip_average

  def close(self):
    self._mesh.close()

  def _faces(self, rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    res = self._mesh.process(np.ascontiguousarray(rgb))
    faces = []
    for f in res.multi_face_landmarks or []:
      a = _landmark_array(f)
      if a.shape == (NUM_LANDMARKS, 3):
        faces.append((a.astype(np.float64) * np.array([w, h, w])).astype(np.float32))
    return faces

  def detect(self, rgb: np.ndarray) -> FaceResult:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
      raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    faces, padded = self._faces(rgb), False
    if not faces and self.pad_retry:
      faces = self._faces_in(rgb, padded=True)
      padded = bool(faces)
    if not faces:
      raise NoFaceError("no face found")
    if len(faces) > 1 and self.multi_face == "error":
      raise SeveralFacesError(f"{len(faces)} faces found (multi_face='error')")
    area = [np.ptp(f[:, 0]) * np.ptp(f[:, 1]) for f in faces]
    lm = faces[int(np.argmax(area))]
    if self.flip_average:
      lm = self._flip_average(rgb, lm, padded)
    cut = cut_fraction(lm, h, w)
    if self.max_cut is not None and cut > self.max_cut:
      raise CutFaceError(f"face cut by the image border: {cut:.0%} of its landmarks lie outside "
                         f"(max_cut={self.max_cut:.0%})")
    return FaceResult(lm, n_faces=len(faces), cut_fraction=cut, padded=padded)

  def _faces_in(self, rgb: np.ndarray, padded: bool) -> list[np.ndarray]:
    """Faces in `rgb`, in its own pixels; `padded`: look in a copy with a grey border of a
    quarter of its size (finds faces that fill or overflow the picture)."""
    if not padded:
      return self._faces(rgb)
    h, w = rgb.shape[:2]
    p = max(h, w) // 4
    big = np.full((h + 2 * p, w + 2 * p, 3), 127, np.uint8)
    big[p:p + h, p:p + w] = rgb
    faces = self._faces(big)
    for f in faces:
      f[:, :2] -= p
    return faces

  def _flip_average(self, rgb: np.ndarray, lm: np.ndarray, padded: bool) -> np.ndarray:
    """Average with the landmarks of the mirrored picture, mirrored back (matched face only)."""
    # lazy: OpenCV and the mirror table only when flip averaging is on
    from data_prep.mesh import MIRROR
    h, w = rgb.shape[:2]
    import cv2  # lazy: as above
    flipped = cv2.flip(rgb, 1)  # the same pixels as rgb[:, ::-1], 40x faster than numpy's copy
    faces = self._faces_in(flipped, padded)
    best, best_d = None, np.inf
    for f in faces:
      back = f[MIRROR].copy()
      back[:, 0] = w - back[:, 0]
      d = float(np.linalg.norm(back[:, :2] - lm[:, :2], axis=1).mean())
      if d < best_d:
        best, best_d = back, d
    scale = max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]), 1.0)
    if best is None or best_d > 0.05 * scale:  # not the same face: keep the direct estimate
      return lm
    return ((lm + best) / 2).astype(np.float32)
