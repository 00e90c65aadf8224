"""What mask mIoU would simple answers reach?  Ceilings for `fifa eval`'s Loc./AGE columns.

  .venv/bin/python bench/mask_ceilings.py DATA [--split test] [--max-per-task 16]

DATA is a `fifa data build` folder.  On the records `fifa eval --max-per-task` scores,
every [SEG] of the reference answer (its own concepts, in order) is given one of:
  region   its concept's true Region Mask (perfect face parsing, ignoring the artifact)
  blob     the true whole-image artifact mask (one perfect blob for every [SEG])
  layout   its concept's mean Region Mask over the training faces, at 0.5 (a prior
           over the face layout, no image read)
and scored as `fifa eval` scores masks (positional mIoU, at the image's resolution).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from fifa_jax import fict, tokens
from fifa_jax.data.records import MaskStore
from fifa_jax.eval.bench import find_records, spread

SIZE = 128  # the layout prior is averaged at this resolution


def _iou(p: np.ndarray, g: np.ndarray) -> float:
  u = (p | g).sum()
  return 1.0 if u == 0 else float((p & g).sum() / u)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("data")
  ap.add_argument("--split", default="test")
  ap.add_argument("--max-per-task", type=int, default=16)
  args = ap.parse_args()
  store = MaskStore(f"{args.data}/masks")
  total, n = np.zeros((fict.NUM_ATOMIC, SIZE, SIZE), np.float32), 0
  for image_id in store.ids():
    e = store[image_id]
    if e.meta.get("split") == "train":
      total += np.stack([cv2.resize(m.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                         for m in e.atomic_stack()])
      n += 1
  layout = total / max(n, 1)

  def layout_mask(concept: str, shape) -> np.ndarray:
    idx = [fict.atomic_index(a) for a in fict.atomic_descendants(concept)]
    return cv2.resize(np.clip(layout[idx].sum(0), 0, 1), (shape[1], shape[0])) > 0.5

  print(f"| task | region | blob | layout |   ({n} training faces)\n|---|---|---|---|")
  for task in tokens.TASKS:
    if not tokens.task_has_masks(task):
      continue
    recs = spread(find_records(args.data, args.split, task), args.max_per_task)
    if not recs:
      continue
    means = []
    for r in recs:
      e = store[r.image_id]
      artifact, per = e.artifact_mask(), []
      for c in r.seg_concepts:
        target = e.artifact_region_mask(c)
        per.append((_iou(e.region_mask(c), target), _iou(artifact, target),
                    _iou(layout_mask(c, target.shape), target)))
      means.append(np.mean(per, 0))
    cells = " | ".join(f"{100 * v:.1f}" for v in np.mean(means, 0))
    print(f"| {tokens.TASK_NAMES[task]} | {cells} |")


if __name__ == "__main__":
  main()
