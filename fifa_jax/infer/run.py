"""`fifa infer`: one face, one task -> the answer printed, JSON and an overlay PNG;
a folder or a glob of faces -> OUT/answers.jsonl, one line per image and task
(batched, with a progress bar, resumable; a bad image is a line with its error).

answer.json:
  task, prompt, answer (markers kept), answer_plain (markers stripped),
  grounded: [{phrase, concept (nearest FICT name, or null), score, area,
              mask_rle: {size: [h, w], counts: [...]}}]   (Regional Artifact Masks)
  det_probs {real, fake}, cls_probs {category: p}   (the auxiliary heads)
  checkpoint, image, size
  face (with --faces largest|all: {index, box, crop, score} in the photo; masks and box
        are then the photo's)
RLE as in fifa_jax.data.records (row-major runs, background first), counts as a list;
or COCO's compressed RLE (`--rle coco`: column-major, counts as pycocotools' string).

`--faces largest|all` asks about photos: the faces are found and cropped as the
training faces are (infer/faces.py), and each answer is put back on the photo.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask
from tqdm import tqdm

from fifa_jax import fict, tokens
from fifa_jax.data.records import rle_encode
from fifa_jax.infer import faces as faces_lib
from fifa_jax.infer import load as load_lib
from fifa_jax.infer import overlay, predict


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
RLE_FORMATS = ("fifa", "coco")


def picture(rgb: np.ndarray, task: str | None, region: str | None, masks, phrases, text: str,
            box=None, face=None) -> np.ndarray:
  """The overlay of one answer (fifa infer, the Python API): each phrase's mask in its colour;
  `face` (x0, y0, side): the crop of the photo the answer is about."""
  title = (tokens.TASK_NAMES[task] if task else "question") + (f"  region: {region}" if region else "")
  return overlay.draw_overlay(rgb, masks, phrases, title=title, text=tokens.strip_markers(text),
                              box=box, face=face)


def rle_json(mask: np.ndarray, rle: str = "fifa") -> dict:
  if rle == "coco":
    enc = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in enc["size"]], "counts": enc["counts"].decode("ascii")}
  enc = rle_encode(mask)
  return {"size": enc["size"], "counts": np.frombuffer(enc["counts"], "<u4").tolist()}


def nearest_concept(phrase: str) -> str | None:
  """The FICT concept a free-text phrase names, if one is close enough."""
  near = fict.suggest(phrase, n=1)
  return near[0] if near else None


def answer_json(query: predict.Query, pred: predict.Prediction, source: str, image: str,
                rle: str = "fifa", face: tuple[int, faces_lib.Face, tuple[int, int]] | None = None) -> dict:
  """`face`: (index, Face, photo's [h, w]) when `query` is about a face crop of a photo
  and `pred` is already on the photo (faces.to_photo)."""
  h, w = query.rgb.shape[:2] if face is None else face[2]
  box = query.box
  if face is not None and box is not None:
    box = faces_lib.box_to_photo(box, face[1])
  return {
      "task": query.task, "region": query.region, "box": list(box) if box else None,
      "prompt": query.question(),
      "answer": pred.text, "answer_plain": tokens.strip_markers(pred.text),
      "grounded": [{"phrase": p, "concept": nearest_concept(p), "score": s, "area": int(m.sum()),
                    "mask_rle": rle_json(m, rle)}
                   for p, m, s in zip(pred.phrases, pred.artifact_masks, pred.mask_scores)],
      "det_probs": dict(zip(tokens.DET_CLASSES, pred.det_probs)),
      "cls_probs": dict(zip(tokens.CLS_CLASSES, pred.cls_probs)),
      "checkpoint": source, "image": image, "size": [h, w],
      **({"face": {"index": face[0], **face[1].to_json()}} if face is not None else {}),
  }


def photo_queries(rgb: np.ndarray, names: Sequence[str], region: str | None,
                  box: tuple[float, ...] | None, faces: str, found: list[faces_lib.Face] | None,
                  image: str = "the image") -> list[tuple[predict.Query, tuple | None]]:
  """The validated queries of one image and its tasks: about the image itself
  (faces="none") or about the crop of each face of `found` that `faces` chooses;
  each with its (index, Face, photo hw)."""
  every = len(names) > 1  # several tasks: each takes the region or box only if it needs it

  def query(pixels, t, face=None):
    level = tokens.task_level(t)
    b = box if level == "box" or not every else None
    if face is not None and b is not None:
      b = faces_lib.box_to_crop(b, face)
    q = predict.Query(pixels, t, region=region if level == "region" or not every else None, box=b)
    q.validate()
    return q

  whole = [query(rgb, t) for t in names]  # region and box checked on the photo itself first
  if faces == "none":
    return [(q, None) for q in whole]
  out = []
  for t in names:
    b = box if tokens.task_level(t) == "box" or not every else None
    for k, f in enumerate(faces_lib.choose(found, faces, image, box=b)):
      out.append((query(faces_lib.crop_face(rgb, f), t, f), (k, f, rgb.shape[:2])))
  return out


def run(checkpoint: str, image: str, task: str, out: str, region: str | None = None,
        box: tuple[float, ...] | None = None, tokenizer: str | None = None,
        max_new_tokens: int = 128, param_dtype: str | None = None, rle: str = "fifa",
        faces: str = "none", mesh=None) -> list[dict]:
  """Validate everything cheap first (image, task, region, box, the faces), then load and ask.

  `task="all"` asks the 11 tasks in one batch (R- tasks about `region`, B- tasks
  about `box`, both then required) and writes OUT/<task>/; one task writes OUT/.
  `faces="all"` writes each face's answers under OUT/face-<k>/ (largest first).
  """
  if rle not in RLE_FORMATS:
    raise ValueError(f"--rle must be one of {', '.join(RLE_FORMATS)}, got {rle!r}")
  faces_lib.check_mode(faces)
  rgb = predict.read_image(image)
  if task != "all" and task not in tokens.TASKS:
    raise predict.QueryError(f"unknown task {task!r}; expected one of {', '.join(tokens.TASKS)} or all")
  names = tokens.TASKS if task == "all" else (task,)
  found = None
  if faces != "none":
    photo_queries(rgb, names, region, box, "none", None)  # the question itself, before any search
    with faces_lib.FaceFinder() as finder:
      found = finder.find(rgb)
  pairs = photo_queries(rgb, names, region, box, faces, found, f"image {image!r}")
  loaded = load_lib.load(checkpoint, tokenizer, param_dtype=param_dtype, mesh=mesh)
  queries = [q for q, _ in pairs]
  results = []
  for (q, face), pred in zip(pairs, predict.predict(loaded, queries, max_new_tokens=max_new_tokens)):
    if face is not None:
      pred = faces_lib.to_photo(pred, face[1], face[2])
    result = answer_json(q, pred, loaded.source, str(image), rle, face)
    out_dir = Path(out) / (f"face-{face[0]}" if faces == "all" else "") / (q.task if task == "all" else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".answer.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out_dir / "answer.json")
    overlay.save_png(out_dir / "overlay.png", picture(rgb, q.task, q.region, pred.artifact_masks,
                                                      pred.phrases, pred.text, result["box"],
                                                      face[1].crop if face else None))
    results.append(result)
  return results


def find_images(spec: str) -> list[Path]:
  """The images a folder holds (sorted, not recursive) or a glob matches (`**` recurses)."""
  path = Path(spec)
  if path.is_dir():
    found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
  else:
    found = [Path(p) for p in sorted(glob.glob(spec, recursive=True))
             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTS]
  if not found:
    raise predict.QueryError(f"--image {spec!r}: no images ({', '.join(IMAGE_EXTS)}) there")
  return found


def is_many(spec: str) -> bool:
  return Path(spec).is_dir() or any(c in spec for c in "*?[")


def _done(answers: Path, wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
  """(image, task) pairs answered by an earlier run.  The failed lines of `wanted` pairs
  are dropped from the file (they are tried again), as is a torn last line."""
  if not answers.exists():
    return set()
  kept = []
  for line in answers.read_text().splitlines(keepends=True):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      break  # only the last line can be torn (each line is one write)
    if "error" not in row or (row["image"], row["task"]) not in wanted:
      kept.append((line, row))
  tmp = answers.with_name(answers.name + ".tmp")
  tmp.write_text("".join(line for line, _ in kept))
  os.replace(tmp, answers)
  return {(row["image"], row["task"]) for _, row in kept if "error" not in row}


def run_many(checkpoint: str, images: str, task: str, out: str, region: str | None = None,
             box: tuple[float, ...] | None = None, tokenizer: str | None = None,
             max_new_tokens: int = 128, param_dtype: str | None = None, batch_size: int = 8,
             overlays: bool = False, rle: str = "fifa", progress: bool = True,
             faces: str = "none", mesh=None) -> dict[str, int]:
  """Every image of a folder or glob x the task (or all 11) -> OUT/answers.jsonl.

  Resumable: pairs already answered in OUT/answers.jsonl are skipped (failed ones are
  tried again).  A bad image or query is written as {"image", "task", "error"} and
  the run goes on.  With faces="largest"/"all", each face answered is a line (its
  "face" says which); a photo without a usable face is an error line.
  Returns the counts {"answered", "failed", "skipped"} (of image-task pairs).
  """
  faces_lib.check_mode(faces)
  if rle not in RLE_FORMATS:
    raise ValueError(f"--rle must be one of {', '.join(RLE_FORMATS)}, got {rle!r}")
  if batch_size < 1:
    raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
  names = tokens.TASKS if task == "all" else (task,)
  for t in names:  # the task, region and box themselves, before any image is read
    if t not in tokens.TASKS:
      raise predict.QueryError(f"unknown task {t!r}; expected one of {', '.join(tokens.TASKS)} or all")
  paths = find_images(images)
  out_dir = Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  answers = out_dir / "answers.jsonl"
  done = _done(answers, {(str(p), t) for p in paths for t in names})
  todo = [(p, t) for p in paths for t in names if (str(p), t) not in done]
  counts = {"answered": 0, "failed": 0, "skipped": len(paths) * len(names) - len(todo)}
  if not todo:
    return counts
  loaded = load_lib.load(checkpoint, tokenizer, param_dtype=param_dtype, mesh=mesh)
  bar = tqdm(total=len(todo), desc="infer", unit="answer", disable=not progress)
  with answers.open("a") as sink:
    def write(row: dict) -> None:
      sink.write(json.dumps(row) + "\n")
      sink.flush()

    batch: list[tuple[Path, np.ndarray, predict.Query, tuple | None]] = []

    def flush() -> None:
      preds = predict.predict(loaded, [q for _, _, q, _ in batch], max_new_tokens=max_new_tokens)
      for (path, photo, q, face), pred in zip(batch, preds):
        if face is not None:
          pred = faces_lib.to_photo(pred, face[1], face[2])
        row = answer_json(q, pred, loaded.source, str(path), rle, face)
        write(row)
        if overlays:
          name = f"{path.stem}.{q.task}" + (f".face-{face[0]}" if faces == "all" else "")
          overlay.save_png(out_dir / "overlays" / f"{name}.png",
                           picture(photo, q.task, q.region, pred.artifact_masks, pred.phrases,
                                   pred.text, row["box"], face[1].crop if face else None))
      batch.clear()

    finder = faces_lib.FaceFinder() if faces != "none" else None
    # todo is ordered by image: (path, the RGB image or its error, its faces or their error)
    current: tuple = (None, "", None)
    try:
      for path, t in todo:
        if current[0] != path:
          try:
            rgb = predict.read_image(path)
            found = None
            if finder is not None:
              try:
                found = finder.find(rgb)
              except predict.QueryError as e:
                found = str(e)
            current = (path, rgb, found)
          except predict.QueryError as e:
            current = (path, str(e), None)  # every task of this image gets the error line
        _, rgb, found = current
        level = tokens.task_level(t)
        try:
          for problem in (rgb, found):
            if isinstance(problem, str):
              raise predict.QueryError(problem)
          pairs = photo_queries(rgb, (t,), region if level == "region" else None,
                                box if level == "box" else None, faces, found, f"image {str(path)!r}")
        except predict.QueryError as e:
          write({"image": str(path), "task": t, "error": str(e)})
          counts["failed"] += 1
          bar.update(1)
          continue
        batch.extend((path, rgb, q, face) for q, face in pairs)  # an image's faces in one flush
        counts["answered"] += 1
        bar.update(1)
        if len(batch) >= batch_size:
          flush()
      if batch:
        flush()
    finally:
      if finder is not None:
        finder.close()
  bar.close()
  return counts


def parse_box(text: str | None) -> tuple[float, ...] | None:
  if text is None:
    return None
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) != 4:
    raise predict.QueryError(f"--box {text!r} must be four numbers x1,y1,x2,y2 (image pixels)")
  return values
