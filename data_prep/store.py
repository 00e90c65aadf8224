"""Per-image annotator output: one .npz, written atomically.  Only numpy is needed to read.

Layout (format "fifa-prep/1"; arrays over concepts are in `fict.NAMES` order (184),
over atomic concepts in `fict.ATOMIC` order (112)):
  format            str   "fifa-prep/1"
  height, width     int
  atomic_bits       uint8 (112, H, ceil(W/8))  Region Masks of the Atomic Concepts,
                    np.packbits along the last axis (see data_prep.masks.unpack);
                    Parent Concepts are unions of their atomic descendants
  parsing           uint8 (H, W)    face parsing, data_prep.parsing.CLASSES
  landmarks         float32 (478, 3) pixels
  region_pixels     int64 (184,)    Region Mask sizes
  parent_boxes      int32 (72, 4)   [x0, y0, x1, y1) (pixel edges) of the Parent Concepts'
                                    Region Masks in fict.PARENTS order, -1 if empty
  meta              str   JSON: source, image size, n_faces, cut_fraction, flags, parser,
                          thresholds, pair rule / artifact source, versions
 with an artifact mask (fake images) also:
  artifact_bits     uint8 (H, ceil(W/8))  whole-image artifact mask, packed likewise
  artifact_pixels   int64 (184,)  coverage float64 (184,)  rank int32 (184,)
  artifact_existing bool (184,)
  bage_boxes int32 (20, 4)  bage_concepts bool (20, 112)  bage_keep bool (20,)

Writes go to a temporary file in the same folder, flushed, then `os.replace`d onto the
final name, so a file with the final name is always complete.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "fifa-prep/1"


def save(path: str | os.PathLike, arrays: dict, compress: bool = True, fsync: bool = False) -> None:
  """Write an .npz (deflate level 1 when `compress`) to a temporary name, then rename.

  A killed process leaves at most a `.<name>.<pid>.tmp` file, never a partial .npz;
  `fsync=True` also makes the file durable against power loss (slower).
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with open(tmp, "wb") as fh:
      with zipfile.ZipFile(fh, "w", compression=mode, compresslevel=1 if compress else None) as zf:
        for name, a in arrays.items():
          with zf.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
      fh.flush()
      if fsync:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def load(path: str | os.PathLike) -> dict:
  """All arrays of an annotator .npz, with `meta` decoded and masks unpacked:
  `atomic` (112, H, W) bool and, when present, `artifact` (H, W) bool."""
  with np.load(path, allow_pickle=False) as z:
    d = {k: z[k] for k in z.files}
  w = int(d["width"])
  if "atomic_bits" in d:
    d["atomic"] = np.unpackbits(d["atomic_bits"], axis=-1, count=w).view(bool)
  if "artifact_bits" in d:
    d["artifact"] = np.unpackbits(d["artifact_bits"], axis=-1, count=w).view(bool)
  if "meta" in d:
    d["meta"] = json.loads(str(d["meta"]))
  return d


def is_complete(path: str | os.PathLike) -> bool:
  """A readable annotator .npz (used by batch resume to skip done images)."""
  try:
    with zipfile.ZipFile(path) as z:
      return "atomic_bits.npy" in z.namelist()
  except (OSError, zipfile.BadZipFile):
    return False
