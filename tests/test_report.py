"""Answer parsing and the Table 3-5 report layouts."""

import json
import math

import pytest

from fifa_jax import tokens
from fifa_jax.eval import report as R


@pytest.mark.parametrize("text, want", [
    (tokens.det_answer(True), 1), (tokens.det_answer(False), 0),
    ("The image is authentic.", 0), ("It has been manipulated by a deepfake.", 1),
    ("This face is not fake.", 0), ("I cannot tell.", -1),
    (tokens.cls_answer("attribute manipulation"), 1),
])
def test_parse_det(text, want):
  assert R.parse_det(text) == want


def test_parse_cls_reads_every_template_answer():
  for i, c in enumerate(tokens.CLS_CLASSES):
    assert R.parse_cls(tokens.cls_answer(c)) == i
  assert R.parse_cls("No idea.") == -1


def test_table3_cells_are_percentages_and_missing_is_dash():
  metrics = {"det": {"ACER": 0.0447, "accuracy": 0.9553, "F1": 0.9559},
             "cls": {"accuracy": 0.93}, "i-age": {"METEOR": 0.23, "mIoU": 0.296}}
  tab = R.table(metrics)
  row = tab["rows"][0]
  assert row["Det. ACER"] == pytest.approx(4.47) and row["I-AGE mIoU"] == pytest.approx(29.6)
  assert math.isnan(row["B-Loc. mIoU"])
  md = R.markdown(tab)
  assert md.splitlines()[0].startswith("| method | Det. ACER | Det. Acc. | Det. F1 | Cls. Acc. |")
  assert "| 4.47 | 95.53 | 95.59 | 93.00 |" in md and md.count("| - ") == 10
  back = json.loads(R.to_json(tab, metrics))
  assert back["table"]["rows"][0]["B-Loc. mIoU"] is None


def test_dd_vqa_and_dfa_layouts():
  m = {"det": {"accuracy": 0.8876, "recall": 0.9524, "precision": 0.8772, "F1": 0.9132, "ACER": 0.0454},
       "cls": {"accuracy": 0.9295},
       "i-toe": {"BLEU-4": 0.481, "CIDEr": 2.869, "ROUGE-L": 0.654, "METEOR": 0.404}}
  t4 = R.table(m, "dd-vqa")
  assert t4["rows"][0]["I-TOE CIDEr"] == pytest.approx(2.869)  # CIDEr is not a percentage
  assert "2.869" in R.markdown(t4)
  t5 = R.table(m, "dfa-bench")
  assert t5["columns"] == ["Det. ACER", "Cls. Acc.", "I-TOE ROUGE-L"]
  assert t5["rows"][0]["I-TOE ROUGE-L"] == pytest.approx(65.4)
