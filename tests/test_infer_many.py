"""`fifa infer` over a folder or glob: one JSONL line per image and task, bad images
recorded and skipped over, resumable after a crash, masks as the project's or COCO's RLE."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from fifa_jax import tokens
from fifa_jax.data import records
from fifa_jax.infer import overlay, predict
from fifa_jax.infer import run as infer_run

N = 6


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
  folder = tmp_path_factory.mktemp("faces")
  rng = np.random.default_rng(1)
  for name in ("a", "b"):
    overlay.save_png(folder / f"{name}.png", rng.integers(0, 255, (36, 44, 3), np.uint8))
  (folder / "c.jpg").write_bytes(b"not an image")
  (folder / "notes.txt").write_text("ignored: not an image extension")
  return folder


def _rows(out):
  return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_folder_gives_one_line_per_image_and_task_and_resumes(workdir, faces, tmp_path):
  kw = dict(region="nose", max_new_tokens=N, batch_size=3, progress=False)
  out = tmp_path / "o"
  counts = infer_run.run_many(str(workdir[0]), str(faces), "r-loc", out, **kw)
  counts2 = infer_run.run_many(str(workdir[0]), str(faces / "*.png"), "det", out, **kw)
  assert counts == {"answered": 2, "failed": 1, "skipped": 0} and counts2["answered"] == 2
  rows = _rows(out)
  assert len(rows) == 5
  bad = [r for r in rows if "error" in r]
  assert bad == [{"image": str(faces / "c.jpg"), "task": "r-loc",
                  "error": f"image '{faces / 'c.jpg'}' could not be read as an image"}]
  good = [r for r in rows if "error" not in r]
  assert {(r["image"], r["task"]) for r in good} == {
      (str(faces / f"{n}.png"), t) for n in "ab" for t in ("r-loc", "det")}
  for r in good:
    assert len(r["grounded"]) == tokens.count_segs(r["answer"]) and r["size"] == [36, 44]
  # A crash mid-write: the last line torn. The next run keeps the whole lines, drops the
  # torn one and the failures, and answers only what is missing.
  text = (out / "answers.jsonl").read_text().splitlines(keepends=True)
  (out / "answers.jsonl").write_text("".join(l for l in text if '"det"' not in l)
                                     + text[-1][: len(text[-1]) // 2])
  again = infer_run.run_many(str(workdir[0]), str(faces), "det", out, **kw)
  assert again == {"answered": 2, "failed": 1, "skipped": 0}
  assert sorted(map(json.dumps, (r for r in _rows(out) if "error" not in r))) == \
      sorted(map(json.dumps, good))


@pytest.mark.slow
def test_coco_rle_decodes_to_the_same_masks(workdir, faces, tmp_path):
  kw = dict(max_new_tokens=N, batch_size=2, progress=False)
  infer_run.run_many(str(workdir[0]), str(faces / "a.png"), "i-loc", tmp_path / "f", **kw)
  infer_run.run_many(str(workdir[0]), str(faces / "a.png"), "i-loc", tmp_path / "c", rle="coco", **kw)
  (f,), (c,) = _rows(tmp_path / "f"), _rows(tmp_path / "c")
  assert len(f["grounded"]) == len(c["grounded"])
  for gf, gc in zip(f["grounded"], c["grounded"]):
    mine = records.rle_decode({"size": gf["mask_rle"]["size"],
                               "counts": np.asarray(gf["mask_rle"]["counts"], "<u4").tobytes()})
    coco = coco_mask.decode({"size": gc["mask_rle"]["size"], "counts": gc["mask_rle"]["counts"].encode()})
    np.testing.assert_array_equal(mine, coco.astype(bool))


def test_rle_formats_round_trip():
  m = np.random.default_rng(0).random((7, 9)) > 0.6
  coco = infer_run.rle_json(m, "coco")
  np.testing.assert_array_equal(coco_mask.decode({"size": coco["size"], "counts": coco["counts"].encode()}), m)
  mine = infer_run.rle_json(m)
  np.testing.assert_array_equal(records.rle_decode(
      {"size": mine["size"], "counts": np.asarray(mine["counts"], "<u4").tobytes()}), m)


def test_bad_folder_arguments_are_named(tmp_path, faces):
  with pytest.raises(predict.QueryError, match="no images"):
    infer_run.run_many("unused", str(tmp_path / "*.png"), "det", tmp_path / "o")
  with pytest.raises(predict.QueryError, match="unknown task 'seg'"):
    infer_run.run_many("unused", str(faces), "seg", tmp_path / "o")
  with pytest.raises(ValueError, match="--rle must be one of fifa, coco"):
    infer_run.run_many("unused", str(faces), "det", tmp_path / "o", rle="xml")
