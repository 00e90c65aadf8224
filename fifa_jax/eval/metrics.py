"""FiFa-Bench metrics with the field's definitions.

All scores are fractions in [0, 1] (CIDEr is unbounded); reports multiply by 100
where the paper's tables do.  A score whose denominator is empty is NaN.

Detection (Det.): label 1 = fake is the *attack* (positive) class, 0 = real is
bona fide, as in ISO/IEC 30107-3:
  APCER = attacks accepted as bona fide / attacks        = FN / (TP + FN)
  BPCER = bona fide rejected as attacks / bona fide      = FP / (TN + FP)
  ACER  = (APCER + BPCER) / 2
  precision, recall, F1 are those of the fake class.

Captions: `caption_scores` runs pycocoevalcap exactly as COCO caption evaluation
does: PTB tokenisation (Stanford CoreNLP, Java), then BLEU-4, METEOR 1.5 (Java),
ROUGE-L and CIDEr (document frequencies from this call's references).  Strip
`<p>`, `</p>` and `[SEG]` first (`fifa_jax.tokens.strip_markers`).

Masks: each sample is one mask [H, W] or a stack [N, H, W] (one per [SEG]),
predicted and true paired by position.  IoU of a pair = |P & G| / |P | G|; a pair
where both are empty has IoU 1 (LISA's convention), a pair where only one is empty 0.
  mIoU: mean over samples of the mean IoU of that sample's masks (FiFa tables);
  gIoU: mean IoU over all masks (LISA's "gIoU");
  cIoU: sum of intersections / sum of unions over all masks (LISA's "cIoU").
  matched mIoU (`matched_iou`): GLaMM's GCG evaluation, which FiFa's code builds on:
    predicted and true masks paired one to one greedily by highest IoU, whatever
    their order; the mean IoU of the pairs that overlap (0 when none do).  It scores
    masks whose concepts the answer named in another order or in part, which the
    positional mIoU counts as misses.  Reported beside mIoU, never instead of it.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import os
import shutil
import sys
from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def _div(a: float, b: float) -> float:
  return a / b if b else NAN


def _labels(x, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D sequence of labels, got shape {a.shape}")
  return a.astype(np.int64)


def detection_scores(pred: Sequence[int], true: Sequence[int]) -> dict[str, float]:
  """Accuracy, precision, recall, F1, APCER, BPCER, ACER (1 = fake = attack)."""
  p, t = _labels(pred, "pred"), _labels(true, "true")
  if p.shape != t.shape:
    raise ValueError(f"pred has {p.size} labels, true has {t.size}")
  for name, a in (("pred", p), ("true", t)):
    if a.size and not np.isin(a, (0, 1)).all():
      raise ValueError(f"{name}: detection labels must be 0 (real) or 1 (fake)")
  tp = int(((p == 1) & (t == 1)).sum())
  tn = int(((p == 0) & (t == 0)).sum())
  fp = int(((p == 1) & (t == 0)).sum())
  fn = int(((p == 0) & (t == 1)).sum())
  precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
  f1 = _div(2 * precision * recall, precision + recall) if not (
      math.isnan(precision) or math.isnan(recall)) else NAN
  apcer, bpcer = _div(fn, tp + fn), _div(fp, tn + fp)
  return {"accuracy": _div(tp + tn, t.size), "precision": precision, "recall": recall, "F1": f1,
          "APCER": apcer, "BPCER": bpcer, "ACER": (apcer + bpcer) / 2,
          "TP": tp, "TN": tn, "FP": fp, "FN": fn}


def classification_scores(pred: Sequence[int], true: Sequence[int],
                          num_classes: int | None = None) -> dict:
  """Accuracy over the DFFD categories, per-class accuracy (recall) and the confusion matrix."""
  p, t = _labels(pred, "pred"), _labels(true, "true")
  if p.shape != t.shape:
    raise ValueError(f"pred has {p.size} labels, true has {t.size}")
  k = num_classes or int(max(p.max(initial=0), t.max(initial=0)) + 1)
  if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= k):
    raise ValueError(f"labels must lie in 0..{k - 1}")
  cm = np.zeros((k, k), np.int64)
  np.add.at(cm, (t, p), 1)
  per_class = [_div(cm[i, i], cm[i].sum()) for i in range(k)]
  return {"accuracy": _div(np.trace(cm), t.size), "per_class_accuracy": per_class,
          "confusion": cm.tolist()}


def caption_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
  """BLEU-4, METEOR, ROUGE-L and CIDEr as pycocoevalcap computes them."""
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
  if not predictions:
    raise ValueError("caption_scores needs at least one prediction")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{i}] must be a non-empty list of strings")
  if shutil.which("java") is None:
    raise RuntimeError("caption metrics need Java (pycocoevalcap's PTB tokenizer and METEOR 1.5 "
                       "run on it): install a JRE, e.g. `apt-get install default-jre-headless`")
  # lazy: pycocoevalcap (and the Java it starts) only when captions are scored
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
  res = {i: [{"caption": p}] for i, p in enumerate(predictions)}
  # The scorers print progress, and their Java tools log to the inherited stderr.
  with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr_fd():
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor_score, _ = _meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
  return {"BLEU-4": float(bleu[3]), "METEOR": float(meteor_score), "ROUGE-L": float(rouge),
          "CIDEr": float(cider)}


_METEOR = None


def _meteor():
  """One METEOR 1.5 process for all the calls of this process: its JVM start and
  paraphrase tables take about 6 s, which a report's six caption columns paid each."""
  global _METEOR
  if _METEOR is None or _METEOR.meteor_p.poll() is not None:
    from pycocoevalcap.meteor.meteor import Meteor  # lazy: starts Java
    _METEOR = Meteor()
    atexit.register(_close_meteor, _METEOR)
  return _METEOR


def _close_meteor(meteor) -> None:
  meteor.meteor_p.stdin.close()
  meteor.meteor_p.kill()
  meteor.meteor_p.wait()


@contextlib.contextmanager
def _quiet_stderr_fd():
  """Send file descriptor 2 (what child processes inherit) to /dev/null for a while."""

  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _stack(m, name: str, i: int) -> np.ndarray:
  a = np.asarray(m).astype(bool)
  if a.ndim == 2:
    a = a[None]
  if a.ndim != 3:
    raise ValueError(f"{name}[{i}]: expected [H, W] or [N, H, W], got shape {a.shape}")
  return a


def matched_iou(pred: np.ndarray, true: np.ndarray) -> float:
  """GLaMM GCG's per-sample mIoU of [P, H, W] and [G, H, W] bool stacks (module docstring)."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  if not len(pred) or not len(true):
    return 0.0
  p, t = pred.reshape(len(pred), -1).astype(np.float32), true.reshape(len(true), -1).astype(np.float32)
  inter = p @ t.T
  union = p.sum(1)[:, None] + t.sum(1)[None] - inter
  iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  paired = []
  while iou.size and iou.max() > 0:
    i, j = np.unravel_index(np.argmax(iou), iou.shape)
    paired.append(float(iou[i, j]))
    iou = np.delete(np.delete(iou, i, axis=0), j, axis=1)
  return float(np.mean(paired)) if paired else 0.0


def mask_scores(pred_masks: Sequence, true_masks: Sequence) -> dict[str, float]:
  """mIoU, gIoU and cIoU (see the module docstring for the definitions)."""
  if len(pred_masks) != len(true_masks):
    raise ValueError(f"{len(pred_masks)} predicted samples for {len(true_masks)} true ones")
  sample_means, ious, inter_sum, union_sum = [], [], 0, 0
  for i, (p, g) in enumerate(zip(pred_masks, true_masks)):
    p, g = _stack(p, "pred_masks", i), _stack(g, "true_masks", i)
    if p.shape != g.shape:
      raise ValueError(f"sample {i}: predicted masks {p.shape} differ from true masks {g.shape}")
    inter = (p & g).reshape(len(p), -1).sum(1)
    union = (p | g).reshape(len(p), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    ious.extend(iou.tolist())
    sample_means.append(float(iou.mean()) if len(iou) else NAN)
    inter_sum += int(inter.sum())
    union_sum += int(union.sum())
  return {"mIoU": float(np.nanmean(sample_means)) if sample_means else NAN,
          "gIoU": float(np.mean(ious)) if ious else NAN,
          "cIoU": _div(inter_sum, union_sum) if union_sum else (1.0 if ious else NAN),
          "num_samples": len(sample_means), "num_masks": len(ious)}
