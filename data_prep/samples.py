"""Sample faces available offline, for tests, demos and the committed overlays.

* `astronaut()`: skimage.data.astronaut() (512x512 RGB, public domain, NASA).
* `tom_hanks()`: insightface/data/images/Tom_Hanks_54745.png (112x112 RGB), a file
  inside the insightface wheel on PyPI.  The wheel is fetched once with
  `pip download insightface==2.1 --no-deps` (no install) and the one file is
  extracted into the git-ignored cache `.cache/samples/` at the repository root
  (or $FIFA_PREP_CACHE).  `python -m data_prep.samples` does this eagerly, which
  is what a Makefile should run once before tests (it is also done lazily).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

INSIGHTFACE_VERSION = "2.1"
_TOM_MEMBER = "insightface/data/images/Tom_Hanks_54745.png"


def cache_dir() -> Path:
  env = os.environ.get("FIFA_PREP_CACHE")
  d = Path(env) if env else Path(__file__).resolve().parent.parent / ".cache" / "samples"
  d.mkdir(parents=True, exist_ok=True)
  return d


def astronaut() -> np.ndarray:
  """skimage's astronaut, HxWx3 uint8 RGB."""
  # lazy: skimage only for this sample
  from skimage import data
  return np.ascontiguousarray(data.astronaut())


def tom_hanks_path() -> Path:
  """Path of the cached Tom Hanks PNG, fetching it from PyPI the first time."""
  out = cache_dir() / "Tom_Hanks_54745.png"
  if out.exists():
    return out
  wheel_dir = cache_dir() / "wheels"
  wheels = sorted(wheel_dir.glob(f"insightface-{INSIGHTFACE_VERSION}-*.whl"))
  if not wheels:
    cmd = [sys.executable, "-m", "pip", "download", f"insightface=={INSIGHTFACE_VERSION}",
           "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob(f"insightface-{INSIGHTFACE_VERSION}-*.whl"))
    if r.returncode or not wheels:
      raise RuntimeError(f"could not fetch the insightface {INSIGHTFACE_VERSION} wheel for the "
                         f"Tom Hanks sample ({' '.join(cmd)}): {r.stderr.strip()[-500:]}")
  with zipfile.ZipFile(wheels[-1]) as z:
    data = z.read(_TOM_MEMBER)
  tmp = out.with_suffix(".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, out)
  return out


def tom_hanks() -> np.ndarray:
  """insightface's Tom Hanks sample, 112x112x3 uint8 RGB."""
  # lazy: PIL only for this sample
  from PIL import Image
  with Image.open(tom_hanks_path()) as im:
    return np.asarray(im.convert("RGB"))


def main() -> int:
  print(tom_hanks_path())
  return 0


if __name__ == "__main__":
  sys.exit(main())
