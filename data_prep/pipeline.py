"""One image through the annotator: landmarks -> parsing -> 112 Region Masks ->
(with an artifact mask) Step 2 and Step 5.  Used by the CLI, batch mode and bench."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from data_prep import artifacts, bage, landmarks, parsing, regions, store
from data_prep import masks

from fifa_jax import fict


@dataclasses.dataclass
class Config:
  parser: str = "builtin"            # "builtin" or a path to an .onnx model
  parser_labels: str = "celebamask"  # ONNX class order
  parser_size: int = 512
  parser_crop: str = "full"
  multi_face: str = "largest"        # or "error"
  max_cut: float | None = None       # None: cut faces are flagged, never rejected
  flip_average: bool = True          # average the landmarks with those of the mirrored picture
  # ... and the selfie segmentation's probability too: +4 ms at 512x512 for flip-mirror
  # IoU ~0.95 instead of ~0.92; off by default to keep the batch annotator at 40 images/s
  flip_average_person: bool = False
  thresholds: artifacts.Thresholds = dataclasses.field(default_factory=artifacts.Thresholds)
  pair: artifacts.PairRule = dataclasses.field(default_factory=artifacts.PairRule)
  bage: bage.BageRule = dataclasses.field(default_factory=bage.BageRule)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


class Annotator:
  """Holds the MediaPipe graphs (one per process) and runs the steps for one image."""

  def __init__(self, config: Config | None = None):
    self.config = c = config or Config()
    self.landmarker = landmarks.Landmarker(multi_face=c.multi_face, max_cut=c.max_cut,
                                           flip_average=c.flip_average)
    if c.parser == "builtin":
      self.parser = parsing.BuiltinParser(flip_average=c.flip_average and c.flip_average_person)
    else:
      self.parser = parsing.OnnxParser(c.parser, labels=c.parser_labels, size=c.parser_size, crop=c.parser_crop)

  def close(self):
    self.landmarker.close()
    self.parser.close()

  def _buffer(self, h: int, w: int) -> np.ndarray:
    """A (184, H, W) bool work array, kept between images of the same size."""
    b = getattr(self, "_buf", None)
    if b is None or b.shape[1:] != (h, w):
      b = self._buf = np.empty((len(fict.NAMES), h, w), bool)
    return b

  def regions(self, rgb: np.ndarray):
    """(FaceResult, parsing labels, (184, H, W) bool Region Masks in fict.NAMES order).

    The mask array is this annotator's work buffer: copy it to keep it past the next call.
    """
    face, labels, atomic = self.sparse_regions(rgb)
    allm = self._buffer(*rgb.shape[:2])
    for k, m in enumerate(atomic):
      m.paste(allm[regions.ATOMIC_POS[k]])
    return face, labels, regions.unions_inplace(allm)

  def sparse_regions(self, rgb: np.ndarray):
    """(FaceResult, parsing labels, the 112 atomic Region Masks as data_prep.sparse.Sp)."""
    face = self.landmarker.detect(rgb)
    labels = self.parser.parse(rgb, face.landmarks)
    return face, labels, regions.sparse_atomic(labels, face.landmarks)

  def annotate(self, rgb: np.ndarray, artifact: np.ndarray | None = None, key: str = "",
               meta: dict | None = None) -> dict:
    """The arrays of a data_prep.store file for one image.  Everything after the
    procedures works on the masks' boxes (data_prep.sparse), never on 184 whole images."""
    h, w = rgb.shape[:2]
    if artifact is not None and artifact.shape != (h, w):
      raise ValueError(f"artifact mask is {artifact.shape[1]}x{artifact.shape[0]}, image is {w}x{h}")
    face, labels, atomic = self.sparse_regions(rgb)
    allm = regions.sparse_all(atomic)
    boxes, bits = masks.pack_boxes(atomic)
    out = {"format": np.array(store.FORMAT), "height": np.array(h), "width": np.array(w),
           "atomic_boxes": boxes, "atomic_box_bits": bits, "parsing": labels,
           "landmarks": face.landmarks.astype(np.float32), "parent_boxes": artifacts.parent_boxes_sparse(allm)}
    if artifact is not None:
      s2 = artifacts.step2_sparse(allm, artifact, self.config.thresholds)
      out.update(s2)
      out["artifact_bits"] = masks.pack(artifact)
      existing_atomic = s2["artifact_existing"][regions.ATOMIC_POS]
      out.update(bage.bage_boxes(atomic, artifact, existing_atomic, self.config.bage, key))
    else:
      out["region_pixels"] = np.array([m.count() for m in allm], np.int64)
    m = {"key": key, "height": h, "width": w, "n_faces": face.n_faces, "cut_fraction": face.cut_fraction,
         "flags": face.flags, "parser": self.parser.name, "config": self.config.to_json(),
         "concepts": len(fict.NAMES)}
    m.update(meta or {})
    out["meta"] = np.array(json.dumps(m))
    return out
