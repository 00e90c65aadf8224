"""A tiny FiFa-11 dataset written with the records API, for tests and a demo without
`fifa data build`: synthetic images, a Voronoi partition of each image into the
112 atomic concepts, a rectangular artifact on fake images, and records for all
11 tasks.  Layout (the training default, `data.qa_glob` / `data.masks`):

  ROOT/masks/                      MaskStore (index.json + shards)
  ROOT/qa/<split>/<task>-00000.array_record
"""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np

from fifa_jax import fict, tokens
from fifa_jax.data import records


def _partition(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size, size] labels 0..111: nearest of 112 random centres."""
  centres = rng.uniform(0, size, (fict.NUM_ATOMIC, 2))
  yy, xx = np.mgrid[0:size, 0:size]
  d = (yy[..., None] - centres[:, 1]) ** 2 + (xx[..., None] - centres[:, 0]) ** 2
  return d.argmin(-1)


def _entry(i: int, rng: np.random.Generator, size: int, fake: bool) -> records.MaskEntry:
  img = (rng.uniform(0, 255, (size, size, 3))).astype(np.uint8)
  ok, png = cv2.imencode(".png", img)
  assert ok
  labels = _partition(rng, size)
  atomic = [records.rle_encode(labels == a) for a in range(fict.NUM_ATOMIC)]
  artifact = None
  if fake:
    m = np.zeros((size, size), bool)
    y0, x0 = rng.integers(0, size // 2, 2)
    m[y0:y0 + size // 3, x0:x0 + size // 3] = True
    artifact = records.rle_encode(m)
  return records.MaskEntry(image_id=f"img{i:03d}", image=png.tobytes(), height=size, width=size,
                           atomic=atomic, artifact=artifact, source="synthetic" if fake else "FFHQ",
                           meta={"label": "fake" if fake else "real",
                                 "technique": "synthetic" if fake else "FFHQ"})


def _records(entry: records.MaskEntry, split: str, rng: random.Random) -> list[records.QARecord]:
  fake = entry.artifact is not None
  technique = "synthetic" if fake else "FFHQ"
  art = entry.artifact_mask()
  hit = [c for c in fict.ATOMIC if (entry.atomic_mask(c) & art).any()][:2] or [fict.ATOMIC[0]]
  region = fict.parent(hit[0])
  ys, xs = np.nonzero(art) if fake else (np.asarray([4, 20]), np.asarray([4, 20]))
  box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
  out = []

  def add(task, answer, **kw):
    level = tokens.task_level(task)
    prompt = tokens.render_prompt(task, region=region if level == "region" else None, rng=rng)
    out.append(records.make_qa_record(
        record_id=f"{entry.image_id}-{task}", image_id=entry.image_id, source=entry.source,
        split=split, task=task, prompt=prompt, answer=answer,
        region=region if level == "region" else None, box=box if level == "box" else None,
        technique=technique, **kw))

  add("det", tokens.det_answer(fake), det_label=int(fake))
  add("cls", tokens.cls_answer("attribute manipulation" if fake else "real"),
      cls_label=records.cls_label_of(technique))
  if fake:
    text = "The texture of the skin is unnaturally smooth with blurred edges."
    for lvl in "irb":
      add(f"{lvl}-loc", tokens.loc_answer(hit), seg_concepts=list(hit))
      add(f"{lvl}-toe", text)
      add(f"{lvl}-age", text + " " + " ".join(tokens.grounded(c) for c in hit),
          seg_concepts=list(hit))
  return out


def write_toy_dataset(root: str | Path, n_images: int = 6, size: int = 64, seed: int = 0,
                      splits: tuple[str, ...] = ("train", "dev")) -> Path:
  """Write masks + per-task QA shards under `root`; every other image is fake."""
  root = Path(root)
  rng = np.random.default_rng(seed)
  entries = [_entry(i, rng, size, fake=i % 2 == 0) for i in range(n_images)]
  records.MaskStore.write(root / "masks", entries)
  prng = random.Random(seed)
  for split in splits:
    by_task: dict[str, list] = {t: [] for t in tokens.TASKS}
    for e in entries:
      for r in _records(e, split, prng):
        by_task[r.task].append(r)
    for task, recs in by_task.items():
      if recs:
        records.write_qa_records(root / "qa" / split / f"{task}-00000.array_record", recs)
  return root
