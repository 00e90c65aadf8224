"""Photos, not crops: find the faces, show the model each one cropped as the training
faces are, and map its masks and boxes back onto the photo.

The detector is the annotator's (data_prep/faces.py: MediaPipe's full-range face
detector, refined by FaceMesh's landmarks).  It runs in the data_prep environment,
so `FaceFinder` keeps one `fifa prep faces --stdin` helper process open and hands it
each image as a temporary PNG file.

Crops are squares of 1.3x the landmarks' extent, the middle of `fifa data synth
--crop tight`.  As there, a crop is moved inside the photo where the photo is large
enough, and padded (edge pixels repeated) only where it is not.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fifa_jax import prep_env
from fifa_jax.infer import predict

FACE_MODES = ("none", "largest", "all")
MIN_FACE_SIDE = 48  # pixels of crop: a smaller face is too coarse to answer about


class FaceError(predict.QueryError):
  """No face to answer about (none found, too small, or no detector); the message says which."""


@dataclasses.dataclass(frozen=True)
class Face:
  box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the photo: the landmarks' extent
  crop: tuple[int, int, int]  # x0, y0, side in the photo: the square the model is shown
  score: float  # the detector's confidence

  def to_json(self) -> dict:
    return {"box": [round(v, 1) for v in self.box], "crop": list(self.crop),
            "score": round(self.score, 3)}


def fit_crop(crop: Sequence[float], hw: tuple[int, int]) -> tuple[int, int, int]:
  """The square (x0, y0, side) in whole pixels, moved inside the photo where it fits."""
  h, w = hw
  x0, y0, side = crop
  side = max(int(round(side)), 1)
  x0, y0 = int(round(x0)), int(round(y0))
  if side <= w:
    x0 = min(max(x0, 0), w - side)
  if side <= h:
    y0 = min(max(y0, 0), h - side)
  return x0, y0, side


def crop_face(rgb: np.ndarray, face: Face) -> np.ndarray:
  """The face's square of the photo (edge pixels repeated where it reaches past the border)."""
  x0, y0, side = face.crop
  m = np.float32([[1, 0, -x0], [0, 1, -y0]])
  return cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_REPLICATE)


def paste_mask(mask: np.ndarray, face: Face, hw: tuple[int, int]) -> np.ndarray:
  """A mask of the face's crop placed on an empty photo-sized mask (bool [H, W])."""
  x0, y0, side = face.crop
  if mask.shape != (side, side):
    mask = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
  h, w = hw
  out = np.zeros((h, w), bool)
  a, b = max(x0, 0), max(y0, 0)
  c, d = min(x0 + side, w), min(y0 + side, h)
  if c > a and d > b:
    out[b:d, a:c] = mask[b - y0:d - y0, a - x0:c - x0].astype(bool)
  return out


def box_to_crop(box: Sequence[float], face: Face) -> tuple[float, ...]:
  """A box in photo pixels -> the same box in the face crop's pixels, clipped to the crop."""
  x0, y0, side = face.crop
  x1, y1, x2, y2 = box
  clip = lambda v: float(min(max(v, 0.0), side))
  return clip(x1 - x0), clip(y1 - y0), clip(x2 - x0), clip(y2 - y0)


def box_to_photo(box: Sequence[float], face: Face) -> tuple[float, ...]:
  x0, y0, _ = face.crop
  x1, y1, x2, y2 = box
  return x1 + x0, y1 + y0, x2 + x0, y2 + y0


def check_mode(mode: str) -> str:
  if mode not in FACE_MODES:
    raise predict.QueryError(f"faces must be one of {', '.join(FACE_MODES)}, got {mode!r}")
  return mode


def choose(faces: list[Face], mode: str, name: str = "the image",
           box: Sequence[float] | None = None) -> list[Face]:
  """The faces to answer about under `mode` ("largest" or "all"), largest first; with a
  `box`, only faces whose crop holds the box's centre.  FaceError when none qualifies."""
  if check_mode(mode) == "none":
    raise ValueError("choose() is for faces='largest' or 'all'")
  if not faces:
    raise FaceError(f"{name}: no face found")
  big = [f for f in faces if f.crop[2] >= MIN_FACE_SIDE]
  if not big:
    side = max(f.crop[2] for f in faces)
    raise FaceError(f"{name}: the largest face found is {side} px across; faces under "
                    f"{MIN_FACE_SIDE} px are too small to answer about")
  if box is not None:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    big = [f for f in big if f.crop[0] <= cx < f.crop[0] + f.crop[2]
           and f.crop[1] <= cy < f.crop[1] + f.crop[2]]
    if not big:
      raise FaceError(f"{name}: the box {[round(v, 1) for v in box]} lies on none of the "
                      f"{len(faces)} faces found")
  big.sort(key=lambda f: -f.crop[2])
  return big[:1] if mode == "largest" else big


class FaceFinder:
  """The annotator's face detector in a helper process of the data_prep environment.

  `find(rgb)` -> faces, largest first.  One helper serves every call (a lock keeps
  concurrent callers in turn); `close()` ends it, as does leaving a `with` block.
  """

  def __init__(self, max_faces: int = 8):
    self.max_faces = max_faces
    self._proc: subprocess.Popen | None = None
    self._lock = threading.Lock()
    self._dir = tempfile.TemporaryDirectory(prefix="fifa-faces-")

  def _start(self) -> subprocess.Popen:
    cmd, env = prep_env.prep_command(["faces", "--stdin", "--max-faces", str(self.max_faces)])
    if not Path(cmd[0]).exists():
      raise FaceError(f"finding faces needs the data_prep environment ({cmd[0]} is missing); "
                      "run `make prep-env` or set FIFA_PREP_PYTHON, or ask about a face crop "
                      "(faces='none')")
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, bufsize=1)

  def find(self, rgb: np.ndarray) -> list[Face]:
    with self._lock:
      if self._proc is None or self._proc.poll() is not None:
        self._proc = self._start()
      path = Path(self._dir.name) / "image.png"
      cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
      self._proc.stdin.write(f"{path}\n")
      self._proc.stdin.flush()
      line = self._proc.stdout.readline()
    if not line:
      raise FaceError("the face finder stopped (run `fifa prep faces IMAGE` to see why)")
    row = json.loads(line)
    if "error" in row:
      raise FaceError(f"face finder: {row['error']}")
    hw = rgb.shape[:2]
    return [Face(tuple(f["box"]), fit_crop(f["crop"], hw), float(f["score"])) for f in row["faces"]]

  def close(self) -> None:
    with self._lock:
      if self._proc is not None and self._proc.poll() is None:
        self._proc.stdin.close()
        try:
          self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
          self._proc.kill()
      self._proc = None
    self._dir.cleanup()

  def __enter__(self) -> FaceFinder:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def to_photo(pred: predict.Prediction, face: Face, hw: tuple[int, int]) -> predict.Prediction:
  """A prediction about a face crop, with its masks placed on the photo."""
  return dataclasses.replace(
      pred, artifact_masks=[paste_mask(m, face, hw) for m in pred.artifact_masks],
      region_masks=[paste_mask(m, face, hw) for m in pred.region_masks])
