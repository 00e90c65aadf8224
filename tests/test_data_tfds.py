"""The TFDS builder over a build folder: prepare without TensorFlow, read with
tfds.data_source, records and masks as in the shards."""

from __future__ import annotations

import cv2
import numpy as np

from fifa_jax import tokens
from data_prep import build as B
from fifa_jax.data import records as R
from test_data_build import make_source


def test_tfds_data_source_matches_the_shards(tmp_path):
  import tensorflow_datasets as tfds
  from fifa_jax.data import tfds_fifa
  src, ann = make_source(tmp_path, n_real=(1, 1, 1), n_fake=(1, 1, 1))
  B.build(src, ann, tmp_path / "out", progress=False, max_region=3, max_box=3)
  tfds_fifa.prepare(tmp_path / "out", tmp_path / "tfds")
  ds = tfds.data_source("fifa11", data_dir=str(tmp_path / "tfds"))
  want = {s: {r.record_id: r for r in R.iter_records(tmp_path / "out", [s])} for s in R.SPLITS}
  assert {s: len(ds[s]) for s in R.SPLITS} == {s: len(v) for s, v in want.items()}
  store = R.MaskStore(tmp_path / "out" / "masks")
  seen = set()
  for i in range(len(ds["dev"])):
    ex = ds["dev"][i]
    rid = ex["record_id"].decode() if isinstance(ex["record_id"], bytes) else ex["record_id"]
    rec = want["dev"][rid]
    assert tokens.TASKS[ex["task"]] == rec.task
    assert [c.decode() if isinstance(c, bytes) else c for c in ex["seg_concepts"]] == rec.seg_concepts
    assert len(ex["artifact_masks_png"]) == len(rec.seg_concepts) == tokens.count_segs(rec.answer)
    if rec.seg_concepts:
      m = cv2.imdecode(np.frombuffer(ex["artifact_masks_png"][0], np.uint8), cv2.IMREAD_GRAYSCALE) > 0
      assert np.array_equal(m, store[rec.image_id].artifact_region_mask(rec.seg_concepts[0]))
    assert (ex["box"] >= 0).all() == (rec.box is not None)
    seen.add(rec.task)
  assert seen == set(tokens.TASKS)
