"""`fifa data build`: annotated images -> FiFa-11 QA records + a mask store, as ArrayRecord shards.

Inputs
  SRC/manifest.jsonl   one JSON object per image (written by `fifa data synth` or
                       `fifa prep dffd`): image_id, image (path relative to SRC), split,
                       label (real/fake), technique (a TECHNIQUE_CATEGORY key), source;
                       optional identity, annotate (false: Det./Cls. only, no annotation
                       needed), meta fields.
  ANN/<image>.npz      the annotator's output for SRC/<image> (`fifa prep batch`, same
                       relative path, extension .npz).  Fakes with an artifact mask get
                       Loc./TOE/AGE; every image gets Det. and Cls.
Output (OUT)
  masks/               a MaskStore (records.MASK_FORMAT): one entry per image, index.json
  qa/<split>/<task>-<unit>.array_record   QA records (records.QA_FORMAT), one shard per
                       task and unit (the training pipeline's default `qa_glob`,
                       "{root}/qa/{split}/{task}-*.array_record"); empty ones are not written
  units/<split>-<k>.json   done markers, one per unit (images, counts, failures)
  explain_cache/       LLM responses (--explainer llm), keyed by request
  failures.tsv         appended per run: image or record id, reason
  build.json           configuration, per-split per-task counts, explainer usage

Work is cut into units of `images_per_unit` images of one split (manifest order).  A
unit writes its mask shard, then its QA shards (each atomic), then its marker; a
rerun skips units with a marker, so a killed build resumes where it stopped.

Records per annotated fake (Section 3.2; the rules are in docs/data.md):
  det, cls                 every image
  i-loc / i-toe / i-age    the root ("whole facial image"): its artifact-existing atomic
                           descendants; TOE = the AGE answer without markers
  r-loc / r-toe / r-age    each other artifact-existing Parent Concept with >= 1
                           artifact-existing atomic descendant (region = its name)
  b-loc / b-toe / b-age    the same parents, asked by their Region Mask's box (Step 4);
                           b-age also the Step 5 boxes kept by the annotator
Each [SEG] is bound to one artifact-existing Atomic Concept; its masks (Region Mask,
Regional Artifact Mask) come from the mask store.

This is the writing side of the data contract, so it lives with the annotator; it
needs no MediaPipe and runs in either environment.  The reading side (records, the
mask store, `qa_shards`) is fifa_jax.data.records, which training never leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.qa_plan import BuildError, grounded_records, label_records, plan_image  # noqa: F401
from fifa_jax import fict, tokens
from fifa_jax.data import records

# ---------------------------------------------------------------------------
# Manifest


_REQUIRED = ("image_id", "image", "split", "label", "technique")


def read_manifest(src: str | os.PathLike) -> list[dict]:
  path = Path(src) / "manifest.jsonl"
  if not path.is_file():
    raise BuildError(f"{path}: no manifest (write one with `fifa data synth` or `fifa prep dffd`)")
  items, seen = [], set()
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      it = json.loads(line)
    except json.JSONDecodeError as e:
      raise BuildError(f"{path}:{n}: not JSON ({e})") from None
    missing = [k for k in _REQUIRED if k not in it]
    if missing:
      raise BuildError(f"{path}:{n}: missing {missing}")
    if it["split"] not in records.SPLITS:
      raise BuildError(f"{path}:{n}: split {it['split']!r} is not one of {records.SPLITS}")
    if it["technique"] not in records.TECHNIQUE_CATEGORY:
      raise BuildError(f"{path}:{n}: technique {it['technique']!r} is not one of {sorted(records.TECHNIQUE_CATEGORY)}")
    if it["image_id"] in seen:
      raise BuildError(f"{path}:{n}: image_id {it['image_id']!r} appears twice")
    seen.add(it["image_id"])
    items.append(it)
  return items


def annotation_path(ann: Path, item: dict) -> Path:
  return ann / Path(item["image"]).with_suffix(".npz")


# ---------------------------------------------------------------------------
# A unit of work


def _mask_entry(item: dict, d: dict | None, image: bytes, explainer: str | None) -> records.MaskEntry:
  meta = {k: item[k] for k in ("split", "label", "technique", "identity", "base") if k in item}
  if d is None:  # Det./Cls. only: no annotation, so no Region Masks (all empty, said so)
    # lazy: OpenCV only for the mask files
    import cv2
    im = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
    if im is None:
      raise BuildError(f"{item['image']}: not a readable image")
    h, w = im.shape[:2]
    meta["regions"] = "none"
    return records.MaskEntry.from_masks(item["image_id"], image, np.zeros((fict.NUM_ATOMIC, h, w), bool),
                                  source=item.get("source") or item["technique"], meta=meta)
  am = d.get("meta") or {}
  meta.update(regions="annotator", parser=am.get("parser"), flags=am.get("flags", []),
              n_faces=am.get("n_faces"), cut_fraction=am.get("cut_fraction"),
              artifact_source=am.get("artifact_source"))
  if explainer and "artifact" in d:
    meta["explainer"] = explainer
  return records.MaskEntry.from_masks(item["image_id"], image, d["atomic"], d.get("artifact"),
                                source=item.get("source") or item["technique"],
                                landmarks=np.asarray(d["landmarks"], np.float32), meta=meta)


def build_unit(items: Sequence[dict], src: Path, ann: Path, explainer, seed: int,
               max_region: int | None, max_box: int | None):
  """(mask entries, QA records, failures [(id, reason)]) of one unit."""
  # lazy: explainers imports the HTTP client, unused when only masks are built
  from data_prep import explainers, store

  failures: list[tuple[str, str]] = []
  loaded = []
  for it in items:
    try:
      image = (src / it["image"]).read_bytes()
    except OSError as e:
      failures.append((it["image_id"], f"{src / it['image']}: cannot read image ({e})"))
      continue
    npz = annotation_path(ann, it)
    d = None
    if npz.is_file():
      try:
        d = store.load(npz)
      except Exception as e:  # noqa: BLE001 - a broken file is a logged failure
        failures.append((it["image_id"], f"{npz}: unreadable annotation ({e})"))
        continue
    elif it.get("annotate", True):
      failures.append((it["image_id"], f"{npz}: not annotated (run `fifa prep batch` first)"))
      continue
    if it["label"] == "real" and d is not None and "artifact" in d:
      failures.append((it["image_id"], f"{npz}: a real image with an artifact mask"))
      continue
    rng = random.Random(f"{seed}/{it['image_id']}/plan")
    plan = plan_image(d, max_region, max_box, rng) if d is not None else None
    loaded.append((it, d, image, plan))

  summaries = explainers.explain_unit(loaded, explainer, failures)

  entries, recs = [], []
  for it, d, image, plan in loaded:
    try:
      rs = label_records(it, seed)
      if plan is not None and plan.concepts:
        rs += grounded_records(it, plan, summaries.get(it["image_id"], {}), explainer.name, seed, failures)
      entries.append(_mask_entry(it, d, image, explainer.name if plan is not None else None))
      recs += rs
    except (records.RecordError, BuildError) as e:
      failures.append((it["image_id"], str(e)))
  return entries, recs, failures


# ---------------------------------------------------------------------------
# The build


def _units(items: Sequence[dict], per_unit: int) -> list[tuple[str, list[dict]]]:
  out = []
  for split in records.SPLITS:
    its = [it for it in items if it["split"] == split]
    for k in range(0, len(its), per_unit):
      out.append((f"{split}-{k // per_unit:05d}", its[k:k + per_unit]))
  return out


def _config_hash(items, args: dict) -> str:
  h = hashlib.sha256(json.dumps(args, sort_keys=True).encode())
  for it in items:
    h.update(it["image_id"].encode() + b"\0")
  return h.hexdigest()[:16]


def build(src, ann, out, *, explainer: str = "offline", images_per_unit: int = 64, seed: int = 0,
          max_region: int | None = None, max_box: int | None = None, progress: bool = True) -> dict:
  """Build (or resume) the shards; returns the summary written to OUT/build.json."""
  # lazy: as in build_unit
  from tqdm import tqdm
  from data_prep import explainers

  src, ann, out = Path(src), Path(ann), Path(out)
  if not ann.is_dir():
    raise BuildError(f"{ann}: annotation folder not found (the --out of `fifa prep batch`)")
  items = read_manifest(src)
  args = {"explainer": explainer, "images_per_unit": images_per_unit, "seed": seed,
          "max_region": max_region, "max_box": max_box}
  key = _config_hash(items, args)
  out.mkdir(parents=True, exist_ok=True)
  cfg_path = out / "build_config.json"
  if cfg_path.is_file():
    old = json.loads(cfg_path.read_text())
    if old.get("key") != key:
      raise BuildError(f"{out}: holds a build of another manifest or configuration ({old.get('args')}); "
                       "use a new --out folder or delete this one")
  else:
    cfg_path.write_text(json.dumps({"key": key, "args": args, "src": str(src), "ann": str(ann)}, indent=2))
  ex = explainers.make(explainer, out / "explain_cache", progress=False)
  units = _units(items, images_per_unit)
  (out / "units").mkdir(exist_ok=True)
  todo = [(name, its) for name, its in units if not (out / "units" / f"{name}.json").is_file()]
  t0 = time.perf_counter()
  log = open(out / "failures.tsv", "a", encoding="utf-8")
  log.write(f"# run {time.strftime('%Y-%m-%dT%H:%M:%S')} units={len(todo)}/{len(units)}\n")
  bar = tqdm(total=sum(len(i) for _, i in todo), unit="img", desc="build", disable=not progress,
             file=sys.stderr, dynamic_ncols=True)
  n_fail = 0
  for name, its in todo:
    split = its[0]["split"]
    entries, recs, fails = build_unit(its, src, ann, ex, seed, max_region, max_box)
    mask_name = f"masks-{name}.array_record"
    records.write_shard(out / "masks" / mask_name, (e.to_bytes() for e in entries))
    by_task: dict[str, list] = defaultdict(list)
    for r in recs:
      by_task[r.task].append(r)
    for task, rs in by_task.items():  # one shard per task: training mixes tasks by weight
      records.write_qa_records(out / "qa" / split / f"{task}-{name}.array_record", rs)
    for rid, reason in fails:
      log.write(f"{rid}\t{reason}\n")
    log.flush()
    n_fail += len(fails)
    marker = {"unit": name, "split": split, "mask_shard": mask_name, "image_ids": [e.image_id for e in entries],
              "counts": dict(Counter(r.task for r in recs)), "failures": len(fails)}
    tmp = out / "units" / f".{name}.json.tmp"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, out / "units" / f"{name}.json")  # last: the unit is done
    bar.update(len(its))
    bar.set_postfix(failures=n_fail, refresh=False)
  bar.close()
  log.close()
  markers = [json.loads((out / "units" / f"{n}.json").read_text()) for n, _ in units]
  records.MaskStore.write_index(out / "masks", [(m["mask_shard"], m["image_ids"]) for m in markers])
  counts = {s: {t: 0 for t in tokens.TASKS} for s in records.SPLITS}
  for m in markers:
    for t, c in m["counts"].items():
      counts[m["split"]][t] += c
  summary = {"src": str(src), "ann": str(ann), "out": str(out), "args": args, "images": len(items),
             "images_in_store": sum(len(m["image_ids"]) for m in markers), "units": len(units),
             "units_done_before": len(units) - len(todo), "failures_this_run": n_fail,
             "failures_log": str(out / "failures.tsv"), "explainer": ex.name, "explainer_usage": ex.report(),
             "seconds": round(time.perf_counter() - t0, 2), "counts": counts}
  tmp = out / ".build.json.tmp"
  tmp.write_text(json.dumps(summary, indent=2))
  os.replace(tmp, out / "build.json")
  return summary
