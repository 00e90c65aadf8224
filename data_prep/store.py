"""Per-image annotator output: one .npz, written atomically.  Only numpy is needed to read.

Layout (format "fifa-prep/2"; arrays over concepts are in `fict.NAMES` order (184),
over atomic concepts in `fict.ATOMIC` order (112)):
  format            str   "fifa-prep/2"
  height, width     int
  atomic_boxes      int32 (112, 4)  [x0, y0, x1, y1) (pixel edges) bounding box of each
                    atomic Region Mask, -1s when empty
  atomic_box_bits   uint8 (n,)      the masks inside their boxes: for each atomic concept
                    in turn, np.packbits(mask[y0:y1, x0:x1], axis=-1) raveled (rows padded
                    to whole bytes); data_prep.masks.unpack_boxes undoes it.  Parent
                    Concepts are unions of their atomic descendants
  parsing           uint8 (H, W)    face parsing, data_prep.parsing.CLASSES
  landmarks         float32 (478, 3) pixels
  region_pixels     int64 (184,)    Region Mask sizes
  parent_boxes      int32 (72, 4)   [x0, y0, x1, y1) (pixel edges) of the Parent Concepts'
                                    Region Masks in fict.PARENTS order, -1 if empty
  meta              str   JSON: source, image size, n_faces, cut_fraction, flags, parser,
                          thresholds, pair rule / artifact source, versions
 with an artifact mask (fake images) also:
  artifact_bits     uint8 (H, ceil(W/8))  whole-image artifact mask, np.packbits along rows
  artifact_pixels   int64 (184,)  coverage float64 (184,)  rank int32 (184,)
  artifact_existing bool (184,)
  bage_boxes int32 (20, 4)  bage_concepts bool (20, 112)  bage_keep bool (20,)

Format "fifa-prep/1" (still read by `load`) stored `atomic_bits` uint8 (112, H,
ceil(W/8)) instead of the two atomic_box* arrays: the whole masks, packed.

Writes go to a temporary file in the same folder, flushed, then `os.replace`d onto the
final name, so a file with the final name is always complete.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from data_prep.masks import unpack_boxes

FORMAT = "fifa-prep/2"
SMALL = 8192  # arrays below this many bytes are stored: a deflate stream costs more to set up than it saves


def save(path: str | os.PathLike, arrays: dict, compress: bool = True, fsync: bool = False) -> None:
  """Write an .npz (deflate level 1 for arrays of SMALL bytes or more when `compress`)
  to a temporary name, then rename.

  A killed process leaves at most a `.<name>.<pid>.tmp` file, never a partial .npz;
  `fsync=True` also makes the file durable against power loss (slower).
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as fh:
      with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, a in arrays.items():
          a = np.asanyarray(a)
          entry = name + ".npy"
          if not compress or a.nbytes < SMALL:  # ZipFile's default (deflate) for the rest
            entry = zipfile.ZipInfo(entry, date_time=time.localtime()[:6])
          with zf.open(entry, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, a, allow_pickle=False)
      fh.flush()
      if fsync:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def load(path: str | os.PathLike) -> dict:
  """All arrays of an annotator .npz (either format), with `meta` decoded and masks
  unpacked: `atomic` (112, H, W) bool and, when present, `artifact` (H, W) bool."""
  with np.load(path, allow_pickle=False) as z:
    d = {k: z[k] for k in z.files}
  h, w = int(d["height"]), int(d["width"])
  if "atomic_boxes" in d:
    d["atomic"] = unpack_boxes(d["atomic_boxes"], d["atomic_box_bits"], h, w)
  elif "atomic_bits" in d:
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
      names = z.namelist()
      return "atomic_box_bits.npy" in names or "atomic_bits.npy" in names
  except (OSError, zipfile.BadZipFile):
    return False
