"""`fifa infer`: one face, one task -> the answer printed, JSON and an overlay PNG.

answer.json:
  task, prompt, answer (markers kept), answer_plain (markers stripped),
  grounded: [{phrase, concept (nearest FICT name, or null), score, area,
              mask_rle: {size: [h, w], counts: [...]}}]   (Regional Artifact Masks)
  det_probs {real, fake}, cls_probs {category: p}   (the auxiliary heads)
  checkpoint, image, size
RLE as in fifa_jax.data.records (row-major runs, background first), counts as a list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fifa_jax import fict, tokens
from fifa_jax.data.records import rle_encode
from fifa_jax.infer import load as load_lib
from fifa_jax.infer import overlay, predict


def rle_json(mask: np.ndarray) -> dict:
  rle = rle_encode(mask)
  return {"size": rle["size"], "counts": np.frombuffer(rle["counts"], "<u4").tolist()}


def nearest_concept(phrase: str) -> str | None:
  """The FICT concept a free-text phrase names, if one is close enough."""
  near = fict.suggest(phrase, n=1)
  return near[0] if near else None


def answer_json(query: predict.Query, pred: predict.Prediction, source: str, image: str) -> dict:
  h, w = query.rgb.shape[:2]
  return {
      "task": query.task, "region": query.region, "box": list(query.box) if query.box else None,
      "prompt": query.question(),
      "answer": pred.text, "answer_plain": tokens.strip_markers(pred.text),
      "grounded": [{"phrase": p, "concept": nearest_concept(p), "score": s, "area": int(m.sum()),
                    "mask_rle": rle_json(m)}
                   for p, m, s in zip(pred.phrases, pred.artifact_masks, pred.mask_scores)],
      "det_probs": dict(zip(tokens.DET_CLASSES, pred.det_probs)),
      "cls_probs": dict(zip(tokens.CLS_CLASSES, pred.cls_probs)),
      "checkpoint": source, "image": image, "size": [h, w],
  }


def run(checkpoint: str, image: str, task: str, out: str, region: str | None = None,
        box: tuple[float, ...] | None = None, tokenizer: str | None = None,
        max_new_tokens: int = 128, param_dtype: str | None = None) -> list[dict]:
  """Validate everything cheap first (image, task, region, box), then load and ask.

  `task="all"` asks the 11 tasks in one batch (R- tasks about `region`, B- tasks
  about `box`, both then required) and writes OUT/<task>/; one task writes OUT/.
  """
  rgb = predict.read_image(image)
  names = tokens.TASKS if task == "all" else (task,)
  queries = [predict.Query(rgb, t, region=region if tokens.task_level(t) == "region" else None,
                           box=box if tokens.task_level(t) == "box" else None) for t in names]
  if task != "all":
    queries = [predict.Query(rgb, task, region=region, box=box)]
  for q in queries:
    q.validate()
  loaded = load_lib.load(checkpoint, tokenizer, param_dtype=param_dtype)
  results = []
  for q, pred in zip(queries, predict.predict(loaded, queries, max_new_tokens=max_new_tokens)):
    result = answer_json(q, pred, loaded.source, str(image))
    out_dir = Path(out) / q.task if task == "all" else Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".answer.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out_dir / "answer.json")
    title = tokens.TASK_NAMES[q.task] + (f"  region: {q.region}" if q.region else "")
    picture = overlay.draw_overlay(rgb, pred.artifact_masks, pred.phrases, title=title,
                                   text=tokens.strip_markers(pred.text), box=q.box)
    overlay.save_png(out_dir / "overlay.png", picture)
    results.append(result)
  return results


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
