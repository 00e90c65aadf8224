"""`fifa data subset`: a few images of a build and their records, as a build of its own.

The first check to run on your own data (as the field's "overfit one batch"):
train on a handful of records until the model reproduces them, then evaluate on
those same records (`fifa eval --split train`).  A model that cannot memorise
a few records points at a wiring problem, not at too little data; see
docs/learning.md.  The learning test (tests/test_learning.py) trains on such a
subset.

  fifa data subset SRC --out DIR [--fakes 2] [--reals 1] [--per-task 1]
                   [--max-concepts 6] [--size 128] [--split train]

Fakes are taken in store order among those whose image-level answer grounds at
most `max_concepts` concepts (short answers); each contributes `per_task`
records of every task it has; reals contribute Det. and Cls.  With `size`,
images, masks and boxes are resized (masks by nearest neighbour), which keeps a
committed fixture small.  `to_archive` / `from_archive` turn such a build into one
small zip and back (ArrayRecord pads every shard to 128 KiB; the zip holds the
records' own bytes), which is how tests/data/memorise.zip is kept.
"""

from __future__ import annotations

import dataclasses
import glob
import zipfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from fifa_jax import tokens
from fifa_jax.data import records


def _resize_entry(e: records.MaskEntry, size: int) -> tuple[records.MaskEntry, float, float]:
  rgb = cv2.imdecode(np.frombuffer(e.image, np.uint8), cv2.IMREAD_COLOR)
  interp = cv2.INTER_AREA if size < min(rgb.shape[:2]) else cv2.INTER_CUBIC
  ok, png = cv2.imencode(".png", cv2.resize(rgb, (size, size), interpolation=interp))
  assert ok
  near = lambda m: cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
  atomic = np.stack([near(records.rle_decode(a)) for a in e.atomic])
  artifact = None if e.artifact is None else near(e.artifact_mask())
  out = records.MaskEntry.from_masks(e.image_id, png.tobytes(), atomic, artifact, source=e.source,
                               meta=dict(e.meta, resized_from=[e.height, e.width]))
  return out, size / e.width, size / e.height


def subset(src: str | Path, out: str | Path, *, fakes: int = 2, reals: int = 1, per_task: int = 1,
           max_concepts: int | None = 6, size: int | None = None, split: str = "train") -> dict:
  """Write the subset (masks/ + qa/<split>/<task>-00000.array_record); returns a summary."""
  src, out = Path(src), Path(out)
  by_image: dict[str, dict[str, list[records.QARecord]]] = defaultdict(lambda: defaultdict(list))
  files = sorted(glob.glob(str(src / "qa" / split / "*.array_record")))
  if not files:
    raise FileNotFoundError(f"{src}/qa/{split}/ holds no QA shards")
  for f in files:
    for r in records.read_qa_records(f):
      by_image[r.image_id][r.task].append(r)
  store = records.MaskStore(src / "masks")
  chosen_fakes, chosen_reals = [], []
  for image_id, tasks in by_image.items():
    det = tasks.get("det")
    if not det:
      continue
    if det[0].det_label == 1 and len(chosen_fakes) < fakes and "i-loc" in tasks:
      if max_concepts is None or len(tasks["i-loc"][0].seg_concepts) <= max_concepts:
        chosen_fakes.append(image_id)
    elif det[0].det_label == 0 and len(chosen_reals) < reals:
      chosen_reals.append(image_id)
  if len(chosen_fakes) < fakes or len(chosen_reals) < reals:
    raise ValueError(f"{src}: found {len(chosen_fakes)} fakes (<= {max_concepts} concepts) and "
                     f"{len(chosen_reals)} reals in {split}; asked for {fakes} and {reals}")
  keep = chosen_fakes + chosen_reals
  entries, scale = [], {}
  for image_id in keep:
    e = store[image_id]
    if size:
      e, sx, sy = _resize_entry(e, size)
      scale[image_id] = (sx, sy)
    entries.append(e)
  records.MaskStore.write(out / "masks", entries)
  by_task: dict[str, list[records.QARecord]] = defaultdict(list)
  for image_id in keep:
    for task in tokens.TASKS:
      for r in by_image[image_id].get(task, [])[:per_task]:
        if r.box is not None and image_id in scale:
          sx, sy = scale[image_id]
          r = dataclasses.replace(r, box=[r.box[0] * sx, r.box[1] * sy, r.box[2] * sx, r.box[3] * sy])
        by_task[task].append(r)
  for task, recs in by_task.items():
    records.write_qa_records(out / "qa" / split / f"{task}-{split}-00000.array_record", recs)
  return {"images": keep, "records": {t: len(v) for t, v in by_task.items()},
          "total": sum(len(v) for v in by_task.values())}


def to_archive(build: str | Path, archive: str | Path) -> int:
  """A build folder -> one zip of its mask entries and records (their own bytes)."""
  build = Path(build)
  store = records.MaskStore(build / "masks")
  n = 0
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
    for image_id in store.ids():
      z.writestr(f"masks/{image_id}", store[image_id].to_bytes())
    for f in sorted(glob.glob(str(build / "qa" / "*" / "*.array_record"))):
      for k, r in enumerate(records.read_qa_records(f)):
        z.writestr(f"qa/{Path(f).parent.name}/{Path(f).stem}/{k:06d}", r.to_bytes())
        n += 1
  return n


def from_archive(archive: str | Path, out: str | Path) -> Path:
  """The zip of `to_archive` -> a build folder (masks/, qa/<split>/<shard>.array_record)."""
  out = Path(out)
  entries, shards = [], defaultdict(list)
  with zipfile.ZipFile(archive) as z:
    for name in z.namelist():  # written in store and shard order
      parts = name.split("/")
      if parts[0] == "masks":
        entries.append(records.MaskEntry.from_bytes(z.read(name)))
      elif parts[0] == "qa" and len(parts) == 4:
        shards[(parts[1], parts[2])].append(records.QARecord.from_bytes(z.read(name)))
  records.MaskStore.write(out / "masks", entries)
  for (split, stem), recs in shards.items():
    records.write_qa_records(out / "qa" / split / f"{stem}.array_record", recs)
  return out


def spread(items, k: int | None) -> list:
  """At most `k` of `items`, evenly spaced and in order.  `fifa eval --max-per-task`
  takes records this way (shards list a split's reals before its fakes, so the first
  k would often be one class only); the warm-up's dev check takes concepts this way."""
  items = list(items)
  if k is None or len(items) <= k:
    return items
  return [items[int(i)] for i in np.linspace(0, len(items) - 1, k).round()]
