"""Throughput of the FiFa-Annotator vision side, end to end, on this machine.

    .venv-prep/bin/python bench/bench_annotator.py [--sizes 512 1024] [--n 40] [--workers 2] [--modes landmarks both off]

Per image, as batch mode does it: decode the PNG and its artifact-mask PNG,
landmarks, parsing (builtin), all 184 Region Masks, Step 2 (coverage, flags, parent
boxes), Step 5 (B-AGE boxes), write the .npz atomically.  Inputs are FFHQ-like
aligned faces (skimage's astronaut cropped to her head, resized to each size, with a
different brightness per image) and a synthetic artifact mask each.  Worker start-up
(MediaPipe graphs) is excluded: each worker annotates two warm-up images first.
Prints, per size and flip-averaging mode: the measured images/s (wall
clock; on a shared machine this depends on what else runs) and the CPU time per image
inside the workers, with the images/s it gives when the workers have the cores to
themselves (workers / CPU seconds per image).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_v, "1")  # as data_prep.cli does; before numpy is imported

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep import batch, pipeline, samples  # noqa: E402


def make_inputs(folder: Path, size: int, n: int):
  face = np.ascontiguousarray(samples.astronaut()[20:210, 130:320])
  img = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
  (folder / "img").mkdir(parents=True)
  (folder / "mask").mkdir()
  yy, xx = np.mgrid[0:size, 0:size]
  jobs = []
  for i in range(n):
    Image.fromarray(np.clip(img.astype(int) + (i % 21) - 10, 0, 255).astype(np.uint8)).save(folder / "img" / f"{i:04d}.png")
    art = ((xx - size * (0.35 + 0.01 * (i % 9))) ** 2 + (yy - size * 0.45) ** 2) < (size * 0.12) ** 2
    Image.fromarray(art.astype(np.uint8) * 255).save(folder / "mask" / f"{i:04d}.png")
    jobs.append(batch.Job(str(folder / "img" / f"{i:04d}.png"), f"{i:04d}.png", str(folder / "out" / f"{i:04d}.npz"),
                          artifact=str(folder / "mask" / f"{i:04d}.png")))
  return jobs


def _noop(_):
  time.sleep(0.2)
  return 0


# as `--flip-average` of the CLI: landmarks (default), both (and selfie segmentation), off
MODES = {"landmarks": {}, "both": {"flip_average_person": True}, "off": {"flip_average": False}}


def run(size: int, n: int, workers: int, mode: str) -> tuple[float, float]:
  with tempfile.TemporaryDirectory() as d:
    jobs = make_inputs(Path(d), size, n + 2 * workers)
    warm, timed = jobs[:2 * workers], jobs[2 * workers:]
    cfg = pipeline.Config(**MODES[mode])
    with mp.get_context("spawn").Pool(workers, initializer=batch._init_worker, initargs=(cfg,)) as pool:
      list(pool.imap_unordered(batch.run_job, warm, chunksize=1))
      t0 = time.perf_counter()
      res = list(pool.imap_unordered(batch.run_job, timed, chunksize=1))
      dt = time.perf_counter() - t0
    bad = [r for r in res if not r["ok"]]
    if bad:
      raise SystemExit(f"{len(bad)} images failed, e.g. {bad[0]}")
    cpu = sum(r["cpu_seconds"] for r in res) / len(res)
    return len(timed) / dt, cpu


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
  ap.add_argument("--n", type=int, default=40, help="timed images per size")
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                  help="flip averaging: landmarks (default; selfie segmentation once), both, off")
  a = ap.parse_args()
  print(f"FiFa-Annotator end to end, {a.workers} workers, {a.n} images per size, {mp.cpu_count()} CPUs")
  for size in a.sizes:
    for mode in a.modes:
      ips, cpu = run(size, a.n, a.workers, mode)
      print(f"{size}x{size}  flip averaging {mode:9s}  {ips:6.1f} images/s measured   "
            f"{cpu * 1e3:6.1f} ms CPU per image = {a.workers / cpu:5.1f} images/s on {a.workers} free cores",
            flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
