"""What one annotated image becomes: its plan (which concepts, regions and boxes are
asked) and its FiFa-11 records, given the explainer's summaries (Section 3.2).

The rules are in docs/data.md; `data_prep/build.py` runs them over a whole manifest.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import numpy as np

from fifa_jax import fict, tokens
from fifa_jax.data import records

ROOT = fict.ROOT
_NAME_POS = {n: i for i, n in enumerate(fict.NAMES)}
_PARENT_POS = {n: i for i, n in enumerate(fict.PARENTS)}
MAX_BOX_AREA = 0.9  # parent boxes larger than this share of the image are not asked (B- tasks)


class BuildError(ValueError):
  """Unusable build input; the message names the file and the problem."""


@dataclasses.dataclass
class Plan:
  """What one annotated fake asks of the explainer."""
  concepts: list[str]                         # artifact-existing atomic concepts (FICT order)
  parents: dict[str, list[str]]               # artifact-existing parent -> its existing atomics
  regions: list[str]                          # parents asked by name (R- tasks)
  parent_boxes: dict[str, list[float]]        # parent -> [x1, y1, x2, y2] pixels
  bage: list[tuple[list[float], list[str]]]   # Step 5 boxes and their concepts
  stats: dict[str, tuple[float, int]]


def plan_image(d: dict, max_region: int | None = None, max_box: int | None = None,
               rng: random.Random | None = None) -> Plan | None:
  """The concept sets of an annotated fake, or None for images without an artifact mask."""
  if "artifact_existing" not in d:
    return None
  ae = np.asarray(d["artifact_existing"], bool)
  existing = {fict.NAMES[i] for i in np.flatnonzero(ae)}
  concepts = [a for a in fict.ATOMIC if a in existing]
  stats = {a: (float(d["coverage"][_NAME_POS[a]]), int(d["artifact_pixels"][_NAME_POS[a]])) for a in concepts}
  parents = {}
  for p in fict.PARENTS:
    if p in existing:
      sub = [a for a in fict.atomic_descendants(p) if a in existing]
      if sub:
        parents[p] = sub
  boxes, area = {}, float(d["height"]) * float(d["width"])
  for p in parents:
    if p == ROOT:
      continue
    b = [float(v) for v in d["parent_boxes"][_PARENT_POS[p]]]
    # A box of nearly the whole picture asks the image-level question again: skipped.
    if b[0] >= 0 and b[2] > b[0] and b[3] > b[1] and (b[2] - b[0]) * (b[3] - b[1]) <= MAX_BOX_AREA * area:
      boxes[p] = b
  bage = []
  if "bage_keep" in d:
    for k in np.flatnonzero(d["bage_keep"]):
      cs = [fict.ATOMIC[j] for j in np.flatnonzero(d["bage_concepts"][k])]
      if cs:
        bage.append(([float(v) for v in d["bage_boxes"][k]], cs))
  rng = rng or random.Random(0)
  regions = [p for p in parents if p != ROOT]
  if max_region is not None and len(regions) > max_region:
    regions = sorted(rng.sample(regions, max_region), key=fict.NAMES.index)
  if max_box is not None and len(boxes) > max_box:
    keep = set(rng.sample(list(boxes), max_box))
    boxes = {p: b for p, b in boxes.items() if p in keep}
  # Explain only what some record uses.
  used = {ROOT, *regions, *boxes}
  parents = {p: v for p, v in parents.items() if p in used}
  return Plan(concepts, parents, regions, boxes, bage, stats)


def _record(item, task, k, seed, **kw) -> records.QARecord:
  rid = f"{item['image_id']}/{task}/{k}"
  rng = random.Random(f"{seed}/{rid}")
  prompt = tokens.render_prompt(task, region=kw.get("region"), rng=rng)
  return records.make_qa_record(record_id=rid, image_id=item["image_id"], source=item.get("source") or item["technique"],
                          split=item["split"], task=task, prompt=prompt, technique=item["technique"], **kw)


def label_records(item: dict, seed: int) -> list[records.QARecord]:
  fake = item["label"] == "fake"
  cat = records.TECHNIQUE_CATEGORY[item["technique"]]
  if (cat != "real") != fake:
    raise BuildError(f"image {item['image_id']}: label {item['label']!r} disagrees with technique "
                     f"{item['technique']!r} ({cat})")
  return [_record(item, "det", 0, seed, answer=tokens.det_answer(fake), det_label=int(fake)),
          _record(item, "cls", 0, seed, answer=tokens.cls_answer(cat), cls_label=records.cls_label_of(item["technique"]))]


def grounded_records(item: dict, plan: Plan, summaries: dict, explainer: str, seed: int,
                     failures: list) -> list[records.QARecord]:
  """Loc./TOE/AGE records; `summaries[key]` = (answer, seg_concepts) or an Exception."""
  out: list[records.QARecord] = []
  counts: Counter = Counter()

  def add(task, **kw):
    out.append(_record(item, task, counts[task], seed, **kw))
    counts[task] += 1

  def explained(key, task_toe, task_age, **kw):
    s = summaries.get(key)
    if isinstance(s, Exception) or s is None:
      failures.append((f"{item['image_id']}/{key[0]}:{key[1]}", f"no explanation: {s}"))
      return
    answer, segs = s
    add(task_toe, answer=tokens.strip_markers(answer), explainer=explainer, **kw)
    add(task_age, answer=answer, seg_concepts=segs, explainer=explainer, **kw)

  if plan.concepts:
    add("i-loc", answer=tokens.loc_answer(plan.concepts), seg_concepts=list(plan.concepts))
    explained(("parent", ROOT), "i-toe", "i-age")
  for p in plan.regions:
    cs = plan.parents[p]
    add("r-loc", region=p, answer=tokens.loc_answer(cs), seg_concepts=list(cs))
    explained(("parent", p), "r-toe", "r-age", region=p)
  for p, box in plan.parent_boxes.items():
    cs = plan.parents[p]
    add("b-loc", box=box, answer=tokens.loc_answer(cs), seg_concepts=list(cs))
    explained(("parent", p), "b-toe", "b-age", box=box)
  for k, (box, cs) in enumerate(plan.bage):
    s = summaries.get(("bage", k))
    if isinstance(s, Exception) or s is None:
      failures.append((f"{item['image_id']}/bage:{k}", f"no explanation: {s}"))
      continue
    add("b-age", box=box, answer=s[0], seg_concepts=s[1], explainer=explainer)
  # b-age records of parent boxes and of Step 5 boxes share one counter: ids stay unique.
  return out
