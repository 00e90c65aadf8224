"""Adapters: DD-VQA and DFA-Instruct style data -> the FiFa record schema.

Neither dataset has masks, so their records are text-only (task "i-toe": an
image-level question with a free-text answer, no [SEG]); each image gets a mask-store
entry with empty Region Masks (meta regions = "none").  The output is a build folder
(masks/, qa/<split>/i-toe-<split>-00000.array_record) that `fifa data stats`,
`fifa data show` and the training pipeline read like any other.

Layouts assumed (as published; say so if yours differs):

* DD-VQA (Zhang et al., ECCV 2024; github.com/Reality-Defender/Research-DD-VQA):
  one JSON file per split,
    {"<manipulation id>_<video id>": {"<question id>": {"question": str,
                                                        "answer": [str, ...]}}}
  manipulation ids: 0 Deepfakes, 1 Face2Face, 2 FaceShifter, 3 FaceSwap,
  5 Original (real), 6 NeuralTextures.  The image of key K is IMAGES/K.<ext> or the
  first image (sorted) in IMAGES/K/.  One record per answer.
* DFA-Instruct (LLaVA conversation style): a JSON list of
    {"id": str, "image": "<path relative to IMAGES>",
     "conversations": [{"from": "human", "value": "<image>\\n..."},
                       {"from": "gpt", "value": "..."}, ...],
     optional "label": "real"/"fake" or 0/1, optional "technique": a DFFD name}
  One record per (human, gpt) turn pair; `<image>` is put at the start of each
  question (records are single-turn).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fifa_jax import fict, tokens
from fifa_jax.data import records

DDVQA_TECHNIQUES = {"0": "Deepfakes", "1": "Face2Face", "2": "FaceShifter", "3": "FaceSwap",
                    "5": "Original", "6": "NeuralTextures"}
_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class AdapterError(ValueError):
  """Input that does not follow the assumed layout; the message names file and entry."""


def _question(q: str) -> str:
  q = q.replace(tokens.IMAGE, "").strip()
  return f"{tokens.IMAGE}\n{q}"


def _find_image(images: Path, key: str) -> Path | None:
  for e in _EXTS:
    if (images / f"{key}{e}").is_file():
      return images / f"{key}{e}"
  d = images / key
  if d.is_dir():
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in _EXTS)
    return files[0] if files else None
  return None


def ddvqa_records(path, images, split: str) -> Iterator[tuple[str, Path, records.QARecord]]:
  """(image id, image file, record) for every answer of a DD-VQA split file."""
  path, images = Path(path), Path(images)
  data = json.loads(path.read_text())
  if not isinstance(data, dict):
    raise AdapterError(f"{path}: expected a JSON object keyed by '<manipulation>_<video>'")
  for key, qs in data.items():
    mid = key.split("_", 1)[0]
    tech = DDVQA_TECHNIQUES.get(mid)
    if tech is None:
      raise AdapterError(f"{path}: key {key!r}: manipulation id {mid!r} is not one of {sorted(DDVQA_TECHNIQUES)}")
    img = _find_image(images, key)
    if img is None:
      raise AdapterError(f"{path}: key {key!r}: no image {images}/{key}.<ext> or {images}/{key}/*")
    if not isinstance(qs, dict):
      raise AdapterError(f"{path}: key {key!r}: expected {{question id: {{question, answer}}}}")
    for qid, qa in qs.items():
      answers = qa.get("answer") if isinstance(qa, dict) else None
      if isinstance(answers, str):
        answers = [answers]
      if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not answers:
        raise AdapterError(f"{path}: {key}/{qid}: expected 'question' (str) and 'answer' (list of str)")
      for k, ans in enumerate(answers):
        image_id = f"ddvqa/{key}"
        yield image_id, img, records.make_qa_record(
            record_id=f"{image_id}/{qid}/{k}", image_id=image_id, source="DD-VQA", split=split,
            task="i-toe", prompt=_question(qa["question"]), answer=str(ans).strip(), technique=tech,
            det_label=int(tech != "Original"))


def dfa_records(path, images, split: str) -> Iterator[tuple[str, Path, records.QARecord]]:
  """(image id, image file, record) for every turn pair of a DFA-Instruct style file."""
  path, images = Path(path), Path(images)
  data = json.loads(path.read_text())
  if not isinstance(data, list):
    raise AdapterError(f"{path}: expected a JSON list of {{id, image, conversations}}")
  for n, ex in enumerate(data):
    where = f"{path}: entry {n} ({ex.get('id', '?') if isinstance(ex, dict) else '?'})"
    if not isinstance(ex, dict) or "image" not in ex or not isinstance(ex.get("conversations"), list):
      raise AdapterError(f"{where}: needs 'image' and a 'conversations' list")
    img = images / ex["image"]
    if not img.is_file():
      raise AdapterError(f"{where}: image {img} not found")
    label = ex.get("label")
    det = None if label is None else int(label in (1, "1", "fake", "Fake", "FAKE"))
    tech = ex.get("technique")
    if tech is not None and tech not in records.TECHNIQUE_CATEGORY:
      raise AdapterError(f"{where}: technique {tech!r} is not one of {sorted(records.TECHNIQUE_CATEGORY)}")
    turns = ex["conversations"]
    image_id = f"dfa/{ex.get('id', n)}"
    for k in range(0, len(turns) - 1, 2):
      q, a = turns[k], turns[k + 1]
      if q.get("from") != "human" or a.get("from") not in ("gpt", "assistant"):
        raise AdapterError(f"{where}: turn {k}: expected a human turn then a gpt turn")
      yield image_id, img, records.make_qa_record(
          record_id=f"{image_id}/{k // 2}", image_id=image_id, source="DFA-Instruct", split=split,
          task="i-toe", prompt=_question(q["value"]), answer=str(a["value"]).strip(),
          technique=tech, det_label=det)


ADAPTERS = {"dd-vqa": ddvqa_records, "dfa-instruct": dfa_records}


def adapt(kind: str, path, images, out, split: str) -> dict:
  """Write a build folder from one annotation file; returns {records, images}."""
  # lazy: OpenCV only for the adapters that re-encode images
  import cv2
  if kind not in ADAPTERS:
    raise AdapterError(f"unknown adapter {kind!r}; choose from {sorted(ADAPTERS)}")
  if split not in records.SPLITS:
    raise AdapterError(f"split {split!r} is not one of {records.SPLITS}")
  out = Path(out)
  recs, files = [], {}
  for image_id, img, rec in ADAPTERS[kind](path, images, split):
    recs.append(rec)
    files.setdefault(image_id, img)

  def entries():
    for image_id, img in files.items():
      data = img.read_bytes()
      im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
      if im is None:
        raise AdapterError(f"{img}: not a readable image")
      yield records.MaskEntry.from_masks(image_id, data, np.zeros((fict.NUM_ATOMIC, *im.shape[:2]), bool),
                                   source=recs[0].source, meta={"regions": "none", "split": split})

  name = f"masks-{kind}-{split}.array_record"
  ids = list(files)
  records.write_shard(out / "masks" / name, (e.to_bytes() for e in entries()))
  # One id list per shard, so adapting several files (splits) into one folder indexes them all.
  (out / "masks" / f"{name}.ids.json").write_text(json.dumps(ids))
  shards = sorted(out.glob("masks/masks-*.array_record.ids.json"))
  records.MaskStore.write_index(out / "masks", [(p.name[:-len(".ids.json")], json.loads(p.read_text())) for p in shards])
  records.write_qa_records(out / "qa" / split / f"i-toe-{split}-{kind}.array_record", recs)
  return {"records": len(recs), "images": len(ids), "out": str(out)}
