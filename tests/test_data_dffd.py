"""DFFD ingestion (data_prep.dffd) on a tiny fake DFFD tree: Table 16 selection capped
by the copy, shared folders, split names, FaceAPP mask sources, then a Det./Cls. build."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from data_prep import dffd
from data_prep import build as B
from fifa_jax.data import records as R

SIZES = {"FFHQ": (4, 2, 2), "FaceAPP": (3, 1, 1), "PGGAN": (4, 2, 2), "Deepfakes": (2, 1, 1)}


@pytest.fixture
def tree(tmp_path):
  root = tmp_path / "DFFD"
  layout = {"ffhq": {"train": 6, "validation": 2, "test": 1}, "faceapp": {"train": 3, "validation": 1, "test": 1},
            "pggan_v1": {"train": 1, "validation": 1, "test": 1}, "pggan_v2": {"train": 5, "validation": 3, "test": 3},
            "Deepfakes": {"train": 2, "validation": 1, "test": 1}, "notes": {"misc": 1}}
  img = cv2.imencode(".png", np.full((24, 24, 3), 128, np.uint8))[1].tobytes()
  for folder, splits in layout.items():
    for split, n in splits.items():
      for i in range(n):
        sub = f"vid{i % 2}/" if folder == "Deepfakes" else ""
        p = root / folder / split / f"{sub}{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(img)
  masks = tmp_path / "faceapp_masks"
  for rel in ("train/0000.png", "train/0001.png", "test/0000.png"):
    (masks / rel).parent.mkdir(parents=True, exist_ok=True)
    (masks / rel).write_bytes(img)
  return root, masks


def test_stage_follows_table16_capped_by_the_copy(tree, tmp_path):
  root, masks = tree
  plan = dffd.stage(root, tmp_path / "stage", sizes=SIZES, faceapp_masks=masks)
  t = plan["techniques"]
  assert t["FFHQ"]["train"] == {"table16": 4, "available": 6, "selected": 4}
  assert t["FFHQ"]["test"]["selected"] == 1  # capped by the copy
  # PGGAN v1 has one training image: v2 gives the rest of the share.
  assert t["PGGAN"]["train"]["selected"] == 4 and t["PGGAN"]["dev"]["selected"] == 2
  assert t["FaceAPP"]["train"]["with_artifact_mask_source"] == 2
  assert "notes" in plan["ignored"]
  items = [json.loads(l) for l in (tmp_path / "stage" / "manifest.jsonl").read_text().splitlines()]
  assert len({it["image_id"] for it in items}) == len(items)
  by = {(it["technique"], it["split"]) for it in items}
  assert ("Deepfakes", "train") in by and ("FFHQ", "dev") in by  # validation -> dev, per-video folders
  for it in items:
    assert (tmp_path / "stage" / it["image"]).is_file()
    assert it["label"] == ("real" if it["technique"] == "FFHQ" else "fake")
    assert it["annotate"] == ("mask" in it)
  assert sum(it["annotate"] for it in items) == 3
  assert "--artifacts" in (tmp_path / "stage" / "commands.sh").read_text()
  # Reproducible: the same selection again.
  again = dffd.stage(root, tmp_path / "stage2", sizes=SIZES, faceapp_masks=masks)
  items2 = [json.loads(l) for l in (tmp_path / "stage2" / "manifest.jsonl").read_text().splitlines()]
  assert again["techniques"] == plan["techniques"] and [i["image_id"] for i in items2] == [i["image_id"] for i in items]


def test_a_det_cls_build_needs_no_annotation(tree, tmp_path):
  root, _ = tree
  dffd.stage(root, tmp_path / "stage", sizes=SIZES)
  (tmp_path / "ann").mkdir()
  s = B.build(tmp_path / "stage", tmp_path / "ann", tmp_path / "out", progress=False)
  assert s["failures_this_run"] == 0
  for split in R.SPLITS:
    c = s["counts"][split]
    assert c["det"] == c["cls"] > 0 and sum(c.values()) == 2 * c["det"]
  store = R.MaskStore(tmp_path / "out" / "masks")
  entry = store[store.ids()[0]]
  assert entry.meta["regions"] == "none" and entry.height == 24
  cls = [r for r in R.iter_records(tmp_path / "out") if r.task == "cls"]
  assert {R.TECHNIQUE_CATEGORY[r.technique] for r in cls} == {"real", "attribute manipulation",
                                                              "entire face synthesis", "identity swapping"}


def test_a_folder_without_dffd_subsets_is_a_clear_error(tmp_path):
  (tmp_path / "x" / "photos").mkdir(parents=True)
  with pytest.raises(dffd.DffdError, match="no DFFD subset folders"):
    dffd.stage(tmp_path / "x", tmp_path / "stage")
