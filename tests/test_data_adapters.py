"""DD-VQA and DFA-Instruct adapters: published layouts -> text-only FiFa records."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fifa_jax import tokens
from fifa_jax.data import adapters as A
from fifa_jax.data import records as R


def _png(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  cv2.imwrite(str(path), np.full((20, 30, 3), 90, np.uint8))


def test_ddvqa(tmp_path):
  _png(tmp_path / "img" / "0_001.png")
  _png(tmp_path / "img" / "5_002" / "frame_0003.jpg")
  (tmp_path / "train.json").write_text(json.dumps({
      "0_001": {"q1": {"question": "Does the person's nose look fake?", "answer": ["Yes, blurred.", "Yes."]}},
      "5_002": {"q1": {"question": "Does the image look fake?", "answer": ["No, it looks real."]}}}))
  s = A.adapt("dd-vqa", tmp_path / "train.json", tmp_path / "img", tmp_path / "out", "train")
  assert s == {"records": 3, "images": 2, "out": str(tmp_path / "out")}
  recs = list(R.iter_records(tmp_path / "out"))
  assert [r.technique for r in recs] == ["Deepfakes", "Deepfakes", "Original"]
  assert [r.det_label for r in recs] == [1, 1, 0] and all(r.task == "i-toe" for r in recs)
  assert recs[0].prompt == f"{tokens.IMAGE}\nDoes the person's nose look fake?"
  store = R.MaskStore(tmp_path / "out" / "masks")
  e = store["ddvqa/5_002"]
  assert (e.height, e.width) == (20, 30) and e.meta["regions"] == "none"
  # A second split into the same folder keeps both in the mask-store index.
  (tmp_path / "test.json").write_text(json.dumps({"3_009": {"q": {"question": "Fake?", "answer": ["Yes"]}}}))
  _png(tmp_path / "img" / "3_009.png")
  A.adapt("dd-vqa", tmp_path / "test.json", tmp_path / "img", tmp_path / "out", "test")
  assert len(R.MaskStore(tmp_path / "out" / "masks")) == 3


def test_dfa_instruct(tmp_path):
  _png(tmp_path / "img" / "a.png")
  (tmp_path / "dfa.json").write_text(json.dumps([{
      "id": "x1", "image": "a.png", "label": "fake", "technique": "FaceAPP",
      "conversations": [{"from": "human", "value": "<image>\nIs it fake?"}, {"from": "gpt", "value": "Yes."},
                        {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "The mouth."}]}]))
  s = A.adapt("dfa-instruct", tmp_path / "dfa.json", tmp_path / "img", tmp_path / "out", "dev")
  recs = list(R.iter_records(tmp_path / "out", ["dev"]))
  assert s["records"] == 2 and [r.answer for r in recs] == ["Yes.", "The mouth."]
  assert all(r.prompt.count(tokens.IMAGE) == 1 and r.det_label == 1 for r in recs)


def test_layout_errors_name_the_entry(tmp_path):
  (tmp_path / "bad.json").write_text(json.dumps({"9_001": {}}))
  with pytest.raises(A.AdapterError, match=r"key '9_001': manipulation id '9'"):
    A.adapt("dd-vqa", tmp_path / "bad.json", tmp_path, tmp_path / "out", "train")
  (tmp_path / "bad2.json").write_text(json.dumps([{"id": "q", "image": "missing.png", "conversations": []}]))
  with pytest.raises(A.AdapterError, match=r"entry 0 \(q\): image .*missing.png not found"):
    A.adapt("dfa-instruct", tmp_path / "bad2.json", tmp_path, tmp_path / "out", "train")
