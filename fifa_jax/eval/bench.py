"""`fifa eval`: FiFa-Bench (Table 3), DD-VQA (Table 4) and DFA-Bench (Table 5) runs.

Data parallel over the mesh: every host takes its own slice of the records
(`records[process_index::process_count]`), batches are split over its local
devices on a `data` mesh axis (the model replicated), and each host writes
`predictions-<process>.jsonl`; after a barrier process 0 merges them and writes
the report.  No host ever needs another host's arrays.

What is scored, per task (predictions parsed from the generated text):
  det  detection_scores of parse_det(answer) against det_label
  cls  classification_scores of parse_cls(answer) against cls_label
  toe  caption_scores of the answer against the record's answer (markers stripped)
  loc  mask_scores: the k-th predicted Regional Artifact Mask against the k-th
       [SEG]'s true one (Region Mask AND artifact mask at full resolution); a
       missing prediction counts as an empty mask, extra ones are ignored; beside
       it, GLaMM GCG's matched mIoU (metrics.matched_iou), pairs found by IoU
  age  both caption and mask scores
Outputs in OUT: report.md, report.json, predictions.jsonl, overlays/<task>-<k>.png.
"""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fifa_jax import mesh as mesh_lib, tokens
from fifa_jax.data.pipeline import decode_image
from fifa_jax.data.records import MaskStore, QARecord, read_qa_records
from fifa_jax.data.subset import spread
from fifa_jax.eval import metrics as metrics_lib
from fifa_jax.eval import report
from fifa_jax.infer import overlay, predict
from fifa_jax.infer.load import Loaded

LAYOUT_TASKS = {"fifa-bench": tokens.TASKS, "dd-vqa": ("det", "i-toe"),
                "dfa-bench": ("det", "cls", "i-toe")}


def find_records(data: str | Path, split: str, task: str) -> list[QARecord]:
  paths = sorted(glob.glob(str(Path(data) / "qa" / split / f"{task}-*.array_record")))
  return [r for p in paths for r in read_qa_records(p)]


def _query(rec: QARecord, store: MaskStore) -> predict.Query:
  rgb = decode_image(store[rec.image_id].image)
  return predict.Query(rgb, rec.task, region=rec.region, box=rec.box, prompt=rec.prompt)


def _true_masks(rec: QARecord, store: MaskStore) -> np.ndarray:
  e = store[rec.image_id]
  return np.stack([e.artifact_region_mask(c) for c in rec.seg_concepts])


def _paired(pred: list[np.ndarray], true: np.ndarray) -> np.ndarray:
  out = np.zeros_like(true)
  for k in range(min(len(pred), len(true))):
    out[k] = pred[k]
  return out


def answer_limit(tokenizer, records: Sequence[QARecord], margin: int = 16, multiple: int = 32) -> int:
  """Tokens enough for the longest reference answer of `records` and `</s>`, plus
  `margin`, rounded up to a `multiple` (one compiled decode loop for nearby limits)."""
  ids = tokenizer([r.answer for r in records], add_special_tokens=False)["input_ids"]
  longest = max(len(x) for x in ids)
  return -(-(longest + 1 + margin) // multiple) * multiple


def evaluate(loaded: Loaded, data: str | Path, split: str, out: str | Path, *,
             layout: str = "fifa-bench", tasks: Sequence[str] | None = None,
             max_per_task: int | None = None, batch_size: int = 8, max_new_tokens: int | None = None,
             overlays_per_task: int = 2, progress: bool = True) -> dict:
  """Run the benchmark; returns the report dict (also written to `out`).

  `max_new_tokens=None` takes the answer limit from the data: the longest reference
  answer among the records evaluated, plus a margin (`answer_limit`).  A fixed limit
  below the references' lengths cuts answers short, which costs METEOR its recall and
  Loc./AGE the masks of every [SEG] past the cut.
  """

  if layout not in LAYOUT_TASKS:
    raise ValueError(f"unknown layout {layout!r}; choose from {sorted(LAYOUT_TASKS)}")
  tasks = tuple(tasks or LAYOUT_TASKS[layout])
  for t in tasks:
    if t not in tokens.TASKS:
      raise ValueError(f"unknown task {t!r}; expected one of {', '.join(tokens.TASKS)}")
  data, out = Path(data), Path(out)
  store_path = data / "masks"
  if not (store_path / MaskStore.INDEX).is_file():
    raise FileNotFoundError(f"{str(data)!r} holds no mask store (expected {store_path}/index.json)")
  store = MaskStore(store_path)
  pid, nproc = jax.process_index(), jax.process_count()
  local = jax.local_devices()
  mesh = loaded.mesh  # `fifa eval --mesh`: the model sharded over this host's devices
  if mesh is None:  # data parallel, the model replicated on every local device
    mesh = mesh_lib.make_mesh(data=len(local), devices=local)
    mesh_lib.shard_model(loaded.model, mesh)
  # Round the batch up to the rows the mesh splits, so each takes an equal share.
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = -(-batch_size // rows) * rows

  work: list[QARecord] = []
  for t in tasks:
    recs = spread(find_records(data, split, t), max_per_task)
    work.extend(recs[pid::nproc])
  if not work:
    raise FileNotFoundError(f"no {split} records for tasks {tasks} under {data}/qa/{split}/")
  if max_new_tokens is None:
    max_new_tokens = answer_limit(loaded.tokenizer, work)
    if progress and pid == 0:
      print(f"fifa eval: answers up to {max_new_tokens} tokens (the longest reference, plus a margin)")
  out.mkdir(parents=True, exist_ok=True)
  (out / "overlays").mkdir(exist_ok=True)
  rows_path = out / f"predictions-{pid}.jsonl"
  shown: dict[str, int] = defaultdict(int)
  bar = _bar(len(work), progress and pid == 0)
  with open(rows_path, "w") as fh:
    for b0 in range(0, len(work), batch_size):
      recs = work[b0:b0 + batch_size]
      queries = [_query(r, store) for r in recs]
      padded = queries + [queries[-1]] * (batch_size - len(queries))
      arrays = predict.encode(loaded, padded)
      arrays = predict.place(arrays, mesh)
      preds = predict.predict(loaded, padded, batch=arrays, max_new_tokens=max_new_tokens)
      for rec, q, p in zip(recs, queries, preds):
        fh.write(json.dumps(_row(rec, p, store)) + "\n")
        if shown[rec.task] < overlays_per_task:
          shown[rec.task] += 1
          title = f"{tokens.TASK_NAMES[rec.task]} {rec.record_id}"
          if tokens.task_has_masks(rec.task):  # prediction beside ground truth
            pic = overlay.draw_comparison(
                q.rgb, p.artifact_masks, p.phrases, list(_true_masks(rec, store)),
                rec.seg_concepts, title=title, pred_text=tokens.strip_markers(p.text),
                true_text=tokens.strip_markers(rec.answer), box=rec.box)
          else:
            pic = overlay.draw_overlay(q.rgb, p.artifact_masks, p.phrases, title=title,
                                       text=tokens.strip_markers(p.text), box=rec.box)
          overlay.save_png(out / "overlays" / f"{rec.task}-{shown[rec.task]}.png", pic)
      bar.update(len(recs))
  bar.close()
  _barrier("fifa-eval-predictions")
  if pid != 0:
    return {}
  rows = [json.loads(l) for p in sorted(out.glob("predictions-*.jsonl")) for l in p.read_text().splitlines()]
  metrics = score(rows, store)
  tab = report.table(metrics, layout, name=loaded.source)
  matched = [f"{tokens.TASK_NAMES[t]} {100 * m['matched_mIoU']:.2f}" for t, m in metrics.items()
             if "matched_mIoU" in m]
  note = ("\n\nMasks paired by IoU as GLaMM's GCG evaluation pairs them (matched mIoU, "
          "not the table's positional mIoU): " + ", ".join(matched) + "\n") if matched else ""
  (out / "report.md").write_text(f"# {layout} ({split}, {len(rows)} samples)\n\n"
                                 + report.markdown(tab) + note)
  (out / "report.json").write_text(report.to_json(tab, metrics))
  with open(out / "predictions.jsonl", "w") as fh:
    for r in rows:
      fh.write(json.dumps(r) + "\n")
  return {"table": tab, "metrics": metrics}


def _row(rec: QARecord, p: predict.Prediction, store: MaskStore) -> dict:
  row = {"record_id": rec.record_id, "image_id": rec.image_id, "task": rec.task,
         "prediction": p.text, "reference": rec.answer, "det_label": rec.det_label,
         "cls_label": rec.cls_label, "det_probs": p.det_probs, "cls_probs": p.cls_probs}
  if tokens.task_has_masks(rec.task):
    e = store[rec.image_id]
    true = _true_masks(rec, store)
    inter, union = _overlap(_paired(p.artifact_masks, true), true)
    # The Region Masks (the auxiliary output) against the concepts' own masks.
    true_r = np.stack([e.region_mask(c) for c in rec.seg_concepts])
    r_inter, r_union = _overlap(_paired(p.region_masks, true_r), true_r)
    matched = metrics_lib.matched_iou(np.asarray(p.artifact_masks, bool).reshape(-1, *true.shape[1:]), true)
    row.update(num_pred_masks=len(p.artifact_masks), num_segs=tokens.count_segs(p.text),
               matched_iou=matched,
               mask_inter=inter.tolist(), mask_union=union.tolist(),
               region_inter=r_inter.tolist(), region_union=r_union.tolist())
  return row


def _overlap(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-mask intersection and union pixel counts of two [N, H, W] bool stacks."""
  return ((pred & true).reshape(len(true), -1).sum(1), (pred | true).reshape(len(true), -1).sum(1))


def score(rows: list[dict], store: MaskStore | None = None) -> dict[str, dict]:
  """Per-task metrics from prediction rows (mask scores from their stored counts)."""
  by_task: dict[str, list[dict]] = defaultdict(list)
  for r in rows:
    by_task[r["task"]].append(r)
  out: dict[str, dict] = {}
  for task, rs in by_task.items():
    kind, m = tokens.task_kind(task), {"num_samples": len(rs)}
    if kind == "det":
      m.update(metrics_lib.detection_scores([_or_wrong(report.parse_det(r["prediction"]), r["det_label"], 2)
                                   for r in rs], [r["det_label"] for r in rs]))
    elif kind == "cls":
      k = len(tokens.CLS_CLASSES)
      m.update(metrics_lib.classification_scores([_or_wrong(report.parse_cls(r["prediction"]), r["cls_label"], k)
                                        for r in rs], [r["cls_label"] for r in rs], k))
    if kind in ("toe", "age"):
      m.update(metrics_lib.caption_scores([tokens.strip_markers(r["prediction"]) or "." for r in rs],
                                [[tokens.strip_markers(r["reference"])] for r in rs]))
    if kind in ("loc", "age"):
      m.update(_mask_scores_from_counts(rs))
      if all("matched_iou" in r for r in rs):  # GLaMM GCG's pairing (metrics.matched_iou)
        m["matched_mIoU"] = float(np.mean([r["matched_iou"] for r in rs]))
      if all("region_inter" in r for r in rs):
        region = _mask_scores_from_counts(rs, "region_inter", "region_union")
        m.update({f"region_{k}": v for k, v in region.items()})
    out[task] = m
  return out


def _or_wrong(pred: int, true: int, k: int) -> int:
  """An answer that names no class (-1) is scored as a wrong one, never skipped."""
  return pred if pred >= 0 else (true + 1) % k


def _mask_scores_from_counts(rs: list[dict], inter_key: str = "mask_inter",
                             union_key: str = "mask_union") -> dict:
  """mIoU / gIoU / cIoU (metrics.mask_scores' definitions) from per-mask counts."""
  per_sample, ious, inter_sum, union_sum = [], [], 0, 0
  for r in rs:
    i, u = np.asarray(r[inter_key]), np.asarray(r[union_key])
    iou = np.where(u > 0, i / np.maximum(u, 1), 1.0)
    per_sample.append(float(iou.mean()))
    ious.extend(iou.tolist())
    inter_sum, union_sum = inter_sum + int(i.sum()), union_sum + int(u.sum())
  return {"mIoU": float(np.mean(per_sample)), "gIoU": float(np.mean(ious)),
          "cIoU": inter_sum / union_sum if union_sum else 1.0}


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    # lazy: multi-host only
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _bar(total: int, enabled: bool):
  return tqdm(total=total, desc="eval", unit="sample", disable=not enabled)
