"""Metrics against hand-computed cases, NumPy loops and pycocoevalcap run the canonical way."""

import math

import numpy as np
import pytest

from fifa_jax.eval import metrics as M


def test_detection_scores_fixed_case():
  true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
  pred = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]  # TP 3, FN 1, TN 4, FP 2
  s = M.detection_scores(pred, true)
  assert (s["TP"], s["FN"], s["TN"], s["FP"]) == (3, 1, 4, 2)
  assert s["accuracy"] == pytest.approx(0.7)
  assert s["precision"] == pytest.approx(3 / 5) and s["recall"] == pytest.approx(3 / 4)
  assert s["F1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
  assert s["APCER"] == pytest.approx(1 / 4) and s["BPCER"] == pytest.approx(2 / 6)
  assert s["ACER"] == pytest.approx((1 / 4 + 2 / 6) / 2)


def test_detection_edge_cases_and_errors():
  s = M.detection_scores([0, 0], [0, 0])  # no attacks: APCER undefined
  assert math.isnan(s["APCER"]) and s["BPCER"] == 0 and s["accuracy"] == 1
  with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
    M.detection_scores([2], [1])
  with pytest.raises(ValueError, match="pred has 1 labels, true has 2"):
    M.detection_scores([1], [1, 0])


def test_classification_scores():
  s = M.classification_scores([0, 1, 2, 2, 4], [0, 1, 2, 3, 4], num_classes=5)
  assert s["accuracy"] == pytest.approx(0.8)
  assert s["per_class_accuracy"][3] == 0 and s["per_class_accuracy"][2] == 1
  assert s["confusion"][3][2] == 1
  with pytest.raises(ValueError, match="0..4"):
    M.classification_scores([5], [0], num_classes=5)


def _iou_loop(p, g):
  inter = union = 0
  for a, b in zip(p.ravel(), g.ravel()):
    inter += a and b
    union += a or b
  return 1.0 if union == 0 else inter / union


def test_mask_scores_match_numpy_loops():
  rng = np.random.default_rng(0)
  preds, trues = [], []
  for n in (1, 3, 2):
    preds.append(rng.random((n, 9, 7)) < 0.4)
    trues.append(rng.random((n, 9, 7)) < 0.4)
  preds[1][0] = False
  trues[1][0] = False  # empty vs empty -> IoU 1
  preds[2][1] = False  # empty prediction vs non-empty truth -> IoU 0
  s = M.mask_scores(preds, trues)
  per_mask = [[_iou_loop(p, g) for p, g in zip(ps, gs)] for ps, gs in zip(preds, trues)]
  assert per_mask[1][0] == 1.0 and per_mask[2][1] == 0.0
  assert s["mIoU"] == pytest.approx(np.mean([np.mean(m) for m in per_mask]))
  assert s["gIoU"] == pytest.approx(np.mean([x for m in per_mask for x in m]))
  inter = sum(int((p & g).sum()) for ps, gs in zip(preds, trues) for p, g in zip(ps, gs))
  union = sum(int((p | g).sum()) for ps, gs in zip(preds, trues) for p, g in zip(ps, gs))
  assert s["cIoU"] == pytest.approx(inter / union)
  assert (s["num_samples"], s["num_masks"]) == (3, 6)
  # A single [H, W] mask per sample works too.
  one = M.mask_scores([preds[0][0]], [trues[0][0]])
  assert one["mIoU"] == one["gIoU"] == pytest.approx(per_mask[0][0])
  with pytest.raises(ValueError, match="sample 0"):
    M.mask_scores([np.zeros((2, 3, 3))], [np.zeros((1, 3, 3))])


PREDS = ["the left cheek looks unnaturally smooth and blurred .",
         "The nose bridge shows a colour seam near the eyes.",
         "hair near the left temple is oddly saturated"]
REFS = [["The left cheek appears unnaturally smooth and slightly blurred.",
         "Smooth, blurred skin on the left cheek."],
        ["A colour seam runs across the nose bridge near the eyes."],
        ["The hair near the left temple is oddly saturated.", "Saturated hair by the temple."]]


def _canonical_coco_scores(preds, refs):
  """pycocoevalcap's COCOEvalCap.evaluate, minus SPICE (which downloads CoreNLP models)."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.meteor.meteor import Meteor
  from pycocoevalcap.rouge.rouge import Rouge
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  gts = {i: [{"image_id": i, "caption": r} for r in rs] for i, rs in enumerate(refs)}
  res = {i: [{"image_id": i, "caption": p}] for i, p in enumerate(preds)}
  tok = PTBTokenizer()
  gts, res = tok.tokenize(gts), tok.tokenize(res)
  out = {}
  for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), "METEOR"),
                        (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]:
    score, _ = scorer.compute_score(gts, res)
    if isinstance(names, list):
      out.update(zip(names, score))
    else:
      out[names] = score
  return out


@pytest.mark.slow
def test_caption_scores_equal_pycocoevalcap():
  got = M.caption_scores(PREDS, REFS)
  want = _canonical_coco_scores(PREDS, REFS)
  assert got["BLEU-4"] == pytest.approx(want["Bleu_4"], abs=1e-12)
  assert got["METEOR"] == pytest.approx(want["METEOR"], abs=1e-12)
  assert got["ROUGE-L"] == pytest.approx(want["ROUGE_L"], abs=1e-12)
  assert got["CIDEr"] == pytest.approx(want["CIDEr"], abs=1e-12)
  assert 0 < got["BLEU-4"] < 1 and 0 < got["METEOR"] < 1


@pytest.mark.slow
def test_caption_scores_fixed_cases():
  same = M.caption_scores(["a b c d e f", "g h i j k l"], [["a b c d e f"], ["g h i j k l"]])
  assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and same["ROUGE-L"] == pytest.approx(1.0)
  assert same["METEOR"] > 0.95
  with pytest.raises(ValueError, match="references\\[0\\]"):
    M.caption_scores(["x"], ["not a list"])
  with pytest.raises(ValueError, match="2 predictions for 1"):
    M.caption_scores(["x", "y"], [["x"]])


def test_matched_iou_pairs_by_overlap_whatever_the_order():
  """GLaMM GCG's pairing: greedy by highest IoU, one to one, mean of overlapping pairs."""
  a = np.zeros((8, 8), bool); a[:4, :4] = True      # 16 px
  b = np.zeros((8, 8), bool); b[4:, 4:] = True      # 16 px
  c = np.zeros((8, 8), bool); c[:4, :2] = True      # 8 px, inside a
  true = np.stack([a, b])
  # The same masks in the other order: positional IoU 0, matched IoU 1.
  assert M.matched_iou(np.stack([b, a]), true) == 1.0
  assert M.mask_scores([np.stack([b, a])], [true])["mIoU"] == 0.0
  # c overlaps a only (IoU 0.5); the extra empty prediction pairs with nothing.
  assert M.matched_iou(np.stack([c, np.zeros_like(a)]), true) == pytest.approx(0.5)
  # One prediction over both true masks pairs with one of them: IoU 16 / 32.
  assert M.matched_iou((a | b)[None], true) == pytest.approx(0.5)
  assert M.matched_iou(np.zeros((0, 8, 8), bool), true) == 0.0
  assert M.matched_iou(np.stack([~(a | b)]), true) == 0.0  # no overlap at all
