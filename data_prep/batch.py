"""Batch mode: annotate every image under a folder, resumably, with worker processes.

Layout: IN_DIR/<rel>.<ext> -> OUT_DIR/<rel>.npz (data_prep.store format), plus
  OUT_DIR/failures.tsv   appended by every run: "# run <time>" then "<rel>\t<reason>"
  OUT_DIR/summary.json   the last run's summary (also printed)
  OUT_DIR/overlays/<rel>.png   with --overlays
Artifact masks, when given, are found by relative path: ARTIFACTS/<rel>.<png|bmp|...>
(an image without one is annotated as a real image: Region Masks only); with REALS
(real sources of the fakes in IN_DIR, same relative paths) the artifact mask is
computed by the pair rule of data_prep.artifacts, and a pair that fails it is a
failure.

Resume: an image whose .npz exists and opens is skipped.  Every output is written to
a temporary name and renamed when complete (data_prep.store.save), so a killed run
never leaves a half-written .npz; stale temporary files are removed at the start.
Failed images are retried by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

from tqdm import tqdm

from data_prep import store
from data_prep.imageio import IMAGE_EXTS


@dataclasses.dataclass
class Job:
  src: str
  rel: str
  out: str
  artifact: str | None = None
  real: str | None = None
  overlay: str | None = None


def find_images(in_dir: Path, exclude: Path | None = None) -> list[Path]:
  out = []
  for root, dirs, files in os.walk(in_dir):
    rp = Path(root)
    if exclude is not None and (rp == exclude or exclude in rp.parents):
      dirs[:] = []
      continue
    dirs.sort()
    for f in sorted(files):
      if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
        out.append(rp / f)
  return out


def _match(base: Path, rel: Path) -> Path | None:
  """BASE/<rel with any image extension>, preferring the same name and lossless formats."""
  cand = [base / rel] + [base / rel.with_suffix(e) for e in (".png", ".bmp", ".tif", ".tiff", ".webp", ".jpg", ".jpeg")]
  for c in cand:
    if c.is_file():
      return c
  return None


def plan(in_dir: Path, out_dir: Path, artifacts: Path | None = None, reals: Path | None = None,
         overlays: bool = False):
  """(jobs to run, number already done, all images) for a batch."""
  in_dir, out_dir = in_dir.resolve(), out_dir.resolve()
  images = find_images(in_dir, exclude=out_dir)
  jobs, done = [], 0
  for p in images:
    rel = p.relative_to(in_dir)
    out = out_dir / rel.with_suffix(".npz")
    if store.is_complete(out):
      done += 1
      continue
    jobs.append(Job(str(p), rel.as_posix(), str(out),
                    artifact=str(a) if artifacts and (a := _match(artifacts, rel)) else None,
                    real=str(reals / rel) if reals else None,
                    overlay=str(out_dir / "overlays" / rel.with_suffix(".png")) if overlays else None))
  return jobs, done, images


def clean_stale(out_dir: Path) -> int:
  n = 0
  for p in out_dir.rglob(".*.tmp"):
    try:
      p.unlink()
      n += 1
    except OSError:
      pass
  return n


# --- worker side
_ANN = None


def _init_worker(config):
  # in each worker process: OpenCV and MediaPipe load there, not in the parent
  import cv2
  cv2.setNumThreads(1)
  global _ANN
  from data_prep.pipeline import Annotator  # in the worker, as cv2 above
  _ANN = Annotator(config)


def run_job(job: Job) -> dict:
  """Annotate one image; never raises: returns {"rel", "ok", "reason", "flags", "artifact"}."""
  # in the worker (see _init_worker)
  from data_prep import artifacts, imageio, landmarks, overlay
  t0, c0 = time.perf_counter(), time.process_time()
  res = {"rel": job.rel, "ok": False, "reason": "", "flags": [], "artifact": None}
  try:
    rgb = imageio.load_image(job.src)
    art, meta = None, {"source": job.src}
    if job.real is not None:
      real_path = _match(Path(job.real).parent, Path(Path(job.real).name))
      if real_path is None:
        raise imageio.ImageError(f"no real source for this fake at {job.real} (any image extension)")
      art, info = artifacts.artifact_mask_from_pair(imageio.load_image(real_path), rgb, _ANN.config.pair)
      meta.update(artifact_source=f"pair:{real_path}", pair=info)
    elif job.artifact is not None:
      art = imageio.load_mask(job.artifact, rgb.shape[:2])
      meta.update(artifact_source=job.artifact)
    arrays = _ANN.annotate(rgb, art, key=job.rel, meta=meta)
    store.save(job.out, arrays)
    if job.overlay:
      # in the worker (see _init_worker)
      from data_prep.masks import unpack_boxes
      atomic = unpack_boxes(arrays["atomic_boxes"], arrays["atomic_box_bits"], *rgb.shape[:2])
      imageio.save_png(job.overlay, overlay.render(rgb, atomic, arrays["parsing"], title=job.rel,
                                                   landmarks=arrays["landmarks"]))
    res.update(ok=True, flags=json.loads(str(arrays["meta"]))["flags"], artifact=art is not None)
  except (imageio.ImageError, landmarks.FaceError, artifacts.PairError, ValueError) as e:
    res["reason"] = f"{type(e).__name__}: {e}"
  except Exception as e:  # keep the batch going; the log has the trace's last line
    res["reason"] = f"{type(e).__name__}: {e} [{traceback.format_exc().strip().splitlines()[-2].strip()}]"
  res["seconds"] = time.perf_counter() - t0
  res["cpu_seconds"] = time.process_time() - c0  # this worker process, all its threads
  return res


def run(in_dir, out_dir, config=None, workers: int = 2, artifacts=None, reals=None, overlays: bool = False,
        progress: bool = True) -> dict:
  """Run a batch; returns the summary (also written to OUT_DIR/summary.json)."""
  in_dir, out_dir = Path(in_dir), Path(out_dir)
  if not in_dir.is_dir():
    raise FileNotFoundError(f"{in_dir}: not a folder")
  for name, d in (("--artifacts", artifacts), ("--reals", reals)):
    if d is not None and not Path(d).is_dir():
      raise FileNotFoundError(f"{name} {d}: not a folder")
  out_dir.mkdir(parents=True, exist_ok=True)
  stale = clean_stale(out_dir)
  jobs, done_before, images = plan(in_dir, out_dir, Path(artifacts) if artifacts else None,
                                   Path(reals) if reals else None, overlays)
  for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(v, "1")  # inherited by the workers (see data_prep.cli)
  t0 = time.perf_counter()
  ok = failed = flagged = with_art = 0
  log_path = out_dir / "failures.tsv"
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"# run {time.strftime('%Y-%m-%dT%H:%M:%S')} in={in_dir} jobs={len(jobs)}\n")
    log.flush()
    bar = tqdm(total=len(jobs), unit="img", desc="annotate", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)

    def handle(r):
      nonlocal ok, failed, flagged, with_art
      if r["ok"]:
        ok += 1
        flagged += bool(r["flags"])
        with_art += bool(r["artifact"])
      else:
        failed += 1
        log.write(f"{r['rel']}\t{r['reason']}\n")
        log.flush()
      bar.update(1)
      bar.set_postfix(failed=failed, refresh=False)

    if workers <= 1 or len(jobs) <= 1:
      _init_worker(config)
      for j in jobs:
        handle(run_job(j))
    else:
      ctx = mp.get_context("spawn")
      with ctx.Pool(workers, initializer=_init_worker, initargs=(config,)) as pool:
        for r in pool.imap_unordered(run_job, jobs, chunksize=1):
          handle(r)
    bar.close()
  dt = time.perf_counter() - t0
  summary = {"images": len(images), "done_before": done_before, "processed": len(jobs), "ok": ok,
             "failed": failed, "flagged": flagged, "with_artifact_mask": with_art,
             "stale_tmp_removed": stale, "seconds": round(dt, 2),
             "images_per_second": round(len(jobs) / dt, 2) if dt > 0 and jobs else 0.0,
             "failures_log": str(log_path), "out_dir": str(out_dir)}
  tmp = out_dir / ".summary.json.tmp"
  tmp.write_text(json.dumps(summary, indent=2))
  os.replace(tmp, out_dir / "summary.json")
  return summary
