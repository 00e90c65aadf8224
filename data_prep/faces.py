"""Faces in a photo, cropped as the training faces are (`fifa prep faces`).

FiFa-MLLM is trained on face crops, so a photo is answered face by face:
1. MediaPipe's full-range face detector finds the faces.  It sees the small faces of
   group photos, which FaceMesh's short-range detector misses.
2. FaceMesh, run on each detection's surroundings, gives the 478 landmarks.  The
   crop is then the square of CROP_SCALE x the landmarks' extent, around their centre.
   That is the middle of `fifa data synth --crop tight` (1.15-1.5), as aligned face
   crops (DFFD, FaRL) are.  Where FaceMesh finds nothing, the detector's box stands
   in for the landmarks' extent.
3. An image the detector finds no face in is tried with FaceMesh alone
   (`landmarks.Landmarker`, which retries inside a grey border).  That rescues face
   crops whose face fills the frame.

`find_faces(rgb)` -> list of Face, largest first.  Boxes are in image pixels and
may reach past the border (the crop is then padded by the caller).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_prep.landmarks import FaceError, Landmarker

CROP_SCALE = 1.3  # crop side / landmarks' extent (synth's tight crops: 1.15-1.5)
CONTEXT = 0.6  # FaceMesh sees the detection box grown by this much on each side


@dataclasses.dataclass
class Face:
  box: tuple[float, float, float, float]  # x0, y0, x1, y1: the landmarks' extent (or the detection)
  crop: tuple[float, float, float]  # x0, y0, side: the square the model is shown
  score: float  # the detector's confidence (1.0 when FaceMesh alone found it)
  landmarks: bool  # the box is the landmarks' extent (False: the detector's box)

  def to_json(self) -> dict:
    return {"box": [round(v, 1) for v in self.box], "crop": [round(v, 1) for v in self.crop],
            "score": round(self.score, 3), "landmarks": self.landmarks}


def square_crop(box) -> tuple[float, float, float]:
  x0, y0, x1, y1 = box
  side = CROP_SCALE * max(x1 - x0, y1 - y0)
  return ((x0 + x1 - side) / 2, (y0 + y1 - side) / 2, side)


class FaceFinder:
  """One detector and one FaceMesh graph, reused for every image (one per process)."""

  def __init__(self, max_faces: int = 8, min_confidence: float = 0.5):
    import mediapipe as mp  # deferred: heavy, and only this module and landmarks.py need it
    self._detector = mp.solutions.face_detection.FaceDetection(
        model_selection=1, min_detection_confidence=min_confidence)
    self._landmarker = Landmarker(max_faces=1, flip_average=False)
    self.max_faces = max_faces

  def close(self) -> None:
    self._detector.close()
    self._landmarker.close()

  def find(self, rgb: np.ndarray) -> list[Face]:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
      raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    faces = []
    for det in self._detector.process(np.ascontiguousarray(rgb)).detections or []:
      r = det.location_data.relative_bounding_box
      box = (r.xmin * w, r.ymin * h, (r.xmin + r.width) * w, (r.ymin + r.height) * h)
      faces.append(self._refine(rgb, box, float(det.score[0])))
    if not faces:
      try:
        lm = self._landmarker.detect(rgb).landmarks
      except FaceError:
        return []
      box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
      faces.append(Face(box, square_crop(box), 1.0, True))
    faces.sort(key=lambda f: -f.crop[2])
    return faces[:self.max_faces]

  def _refine(self, rgb: np.ndarray, box, score: float) -> Face:
    """The landmarks' extent of the face in `box`, found by FaceMesh on its surroundings."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    g = CONTEXT * max(x1 - x0, y1 - y0)
    a, b = int(max(x0 - g, 0)), int(max(y0 - g, 0))
    c, d = int(min(x1 + g, w)), int(min(y1 + g, h))
    try:
      lm = self._landmarker.detect(np.ascontiguousarray(rgb[b:d, a:c])).landmarks
    except FaceError:
      return Face(tuple(float(v) for v in box), square_crop(box), score, False)
    found = (float(lm[:, 0].min() + a), float(lm[:, 1].min() + b),
             float(lm[:, 0].max() + a), float(lm[:, 1].max() + b))
    # FaceMesh may lock onto a neighbour in a crowded crop: keep it only if it is this face.
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    if not (x0 <= cx <= x1 and y0 <= cy <= y1):
      return Face(tuple(float(v) for v in box), square_crop(box), score, False)
    return Face(found, square_crop(found), score, True)
