"""The data contract: RLE, mask-store entries and QA records round-trip bit-exactly
through ArrayRecord; malformed entries are rejected with the field named."""

import dataclasses

import numpy as np
import pytest

from fifa_jax import fict, tokens
from fifa_jax.data import records as R


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48)])
def test_rle_round_trip_random_and_edge_masks(shape):
  rng = np.random.default_rng(0)
  cases = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.3]
  first_on = np.zeros(shape, bool)
  first_on.flat[0] = True
  cases.append(first_on)
  for m in cases:
    rle = R.rle_encode(m)
    np.testing.assert_array_equal(R.rle_decode(rle), m)
    assert R.rle_area(rle) == int(m.sum())


def test_rle_rejects_bad_input():
  with pytest.raises(R.RecordError, match="'mask'"):
    R.rle_encode(np.zeros((2, 2, 2)))
  rle = R.rle_encode(np.zeros((3, 3), bool))
  rle["size"] = [3, 4]
  with pytest.raises(R.RecordError, match="'counts'"):
    R.rle_decode(rle)


def _entry(h=40, w=32, seed=0, artifact=True):
  rng = np.random.default_rng(seed)
  masks = rng.random((fict.NUM_ATOMIC, h, w)) < 0.05
  art = rng.random((h, w)) < 0.2 if artifact else None
  return R.MaskEntry.from_masks(f"img{seed}", b"\x89PNG-fake-bytes", masks, art, source="synthetic",
                                landmarks=rng.random((478, 3)).astype(np.float32),
                                meta={"parser": "builtin"}), masks, art


def test_mask_entry_round_trip_and_derived_masks(tmp_path):
  entry, masks, art = _entry()
  real, _, _ = _entry(seed=1, artifact=False)
  store = R.MaskStore.write(tmp_path / "store", [entry, real], entries_per_shard=1)
  assert len(store.shards) == 2 and len(store) == 2 and "img0" in store
  back = store["img0"]
  assert back.to_bytes() == entry.to_bytes()  # bit-exact
  np.testing.assert_array_equal(back.atomic_stack(), masks)
  np.testing.assert_array_equal(back.artifact_mask(), art)
  np.testing.assert_array_equal(back.landmarks, entry.landmarks)
  # Parents are unions of atomic descendants; artifact region = region AND artifact.
  for parent in ("left eyebrow", "eyes", "whole facial image", "face edge"):
    want = np.zeros_like(masks[0])
    for a in fict.atomic_descendants(parent):
      want |= masks[fict.atomic_index(a)]
    np.testing.assert_array_equal(back.region_mask(parent), want)
    np.testing.assert_array_equal(back.artifact_region_mask(parent), want & art)
  assert not store["img1"].artifact_mask().any()
  with pytest.raises(KeyError, match="nope"):
    store["nope"]


def test_mask_entry_from_named_masks_and_rejections():
  h, w = 8, 8
  named = {a: np.zeros((h, w), bool) for a in fict.ATOMIC}
  e = R.MaskEntry.from_masks("x", b"img", named)
  assert e.artifact is None
  with pytest.raises(R.RecordError, match="'atomic'.*missing"):
    R.MaskEntry.from_masks("x", b"img", {k: v for k, v in list(named.items())[1:]})
  with pytest.raises(R.RecordError, match="not Atomic"):
    R.MaskEntry.from_masks("x", b"img", {**named, "eyes": np.zeros((h, w), bool)})
  with pytest.raises(R.RecordError, match="'artifact'.*size"):
    R.MaskEntry.from_masks("x", b"img", named, np.zeros((h, w + 1), bool))
  with pytest.raises(R.RecordError, match="'image'"):
    R.MaskEntry.from_masks("x", b"", named)
  bad = dataclasses.replace(e, atomic=e.atomic[:-1])
  with pytest.raises(R.RecordError, match="'atomic'.*expected 112"):
    bad.to_bytes()
  with pytest.raises(R.RecordError, match="'format'"):
    R.MaskEntry.from_bytes(b"\x00garbage")


def test_mask_store_rejects_duplicate_ids_and_leaves_no_index(tmp_path):
  entry, _, _ = _entry()
  with pytest.raises(R.RecordError, match="twice"):
    R.MaskStore.write(tmp_path / "dup", [entry, entry])
  assert not (tmp_path / "dup" / "index.json").exists()
  with pytest.raises(FileNotFoundError, match="not a mask store"):
    R.MaskStore(tmp_path / "dup")


def _record(task: str, i: int = 0) -> R.QARecord:
  level, kind = tokens.task_level(task), tokens.task_kind(task)
  kw = {}
  if level == "region":
    kw["region"] = "left eyebrow"
  if level == "box":
    kw["box"] = [10.0, 12.5, 100.0, 90.0]
  segs = []
  if kind == "det":
    answer, kw["det_label"] = tokens.det_answer(True), 1
  elif kind == "cls":
    answer, kw["cls_label"], kw["technique"] = (
        tokens.cls_answer("attribute manipulation"), 3, "FaceAPP")
  elif kind == "loc":
    segs = ["middle part of left eyebrow", "tail of left eyebrow"]
    answer = tokens.loc_answer(segs)
  elif kind == "toe":
    answer = "The left eyebrow looks unnaturally smooth and its tail is blurred."
  else:
    segs = ["middle part of left eyebrow", "nasion"]
    answer = (f"The {tokens.grounded('middle of the left brow')} is blurred, and the "
              f"{tokens.grounded('top of the nose')} shows a colour seam.")
  return R.make_qa_record(record_id=f"{task}-{i}", image_id="img0", source="FaceAPP", split="train",
                          task=task, prompt=tokens.render_prompt(task, region=kw.get("region")),
                          answer=answer, seg_concepts=segs, **kw)


def test_every_task_round_trips_through_array_record(tmp_path):
  recs = [_record(t, i) for i, t in enumerate(tokens.TASKS)]
  assert R.write_qa_records(tmp_path / "qa.array_record", recs) == len(tokens.TASKS)
  back = list(R.read_qa_records(tmp_path / "qa.array_record"))
  assert back == recs
  assert [b.to_bytes() for b in back] == [r.to_bytes() for r in recs]
  assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize("task, change, field", [
    ("det", {"split": "val"}, "split"),
    ("det", {"task": "i-loc-x"}, "task"),
    ("det", {"det_label": None}, "det_label"),
    ("det", {"prompt": "no image here"}, "prompt"),
    ("cls", {"cls_label": 9}, "cls_label"),
    ("cls", {"technique": "Deepfakes"}, "cls_label"),  # identity swapping != 3
    ("cls", {"technique": "MadeUp"}, "technique"),
    ("r-loc", {"region": "left eybrow"}, "region"),
    ("i-loc", {"region": "nose"}, "region"),
    ("b-age", {"box": [50, 10, 20, 40]}, "box"),
    ("b-age", {"box": None}, "box"),
    ("b-toe", {"prompt": "<image>\nno box token"}, "prompt"),
    ("i-age", {"seg_concepts": ["nasion"]}, "seg_concepts"),
    ("i-age", {"seg_concepts": ["eyes", "nasion"]}, "seg_concepts"),
    ("i-loc", {"answer": "no masks at all"}, "answer"),
    ("i-toe", {"answer": "the <p>nose</p>[SEG] is odd"}, "answer"),
    ("det", {"image_id": ""}, "image_id"),
])
def test_malformed_records_are_rejected_naming_the_field(task, change, field):
  rec = dataclasses.replace(_record(task), **change)
  with pytest.raises(R.RecordError) as e:
    rec.validate()
  assert e.value.field == field
  assert repr(field) in str(e.value)


def test_unknown_field_in_bytes_is_rejected():
  import msgpack

  d = msgpack.unpackb(_record("det").to_bytes())
  d["colour"] = "red"
  with pytest.raises(R.RecordError, match="'colour'.*unknown"):
    R.QARecord.from_bytes(msgpack.packb(d))


def test_explainer_field_is_optional_and_checked():
  import msgpack

  rec = dataclasses.replace(_record("i-age"), explainer="offline-template")
  assert R.QARecord.from_bytes(rec.to_bytes()).explainer == "offline-template"
  d = msgpack.unpackb(_record("i-age").to_bytes())
  del d["explainer"]  # records written before the field existed
  assert R.QARecord.from_bytes(msgpack.packb(d)).explainer is None
  with pytest.raises(R.RecordError, match="'explainer'"):
    dataclasses.replace(rec, explainer="").validate()


def test_mask_store_index_over_separately_written_shards(tmp_path):
  e1, _, _ = _entry()
  e2 = dataclasses.replace(e1, image_id="img-b")
  R.write_shard(tmp_path / "m-0.array_record", [e1.to_bytes()])
  R.write_shard(tmp_path / "m-1.array_record", [e2.to_bytes()])
  store = R.MaskStore.write_index(tmp_path, [("m-0.array_record", [e1.image_id]), ("m-1.array_record", ["img-b"])])
  assert store["img-b"].image_id == "img-b" and len(store) == 2
  with pytest.raises(R.RecordError, match="twice"):
    R.MaskStore.write_index(tmp_path, [("m-0.array_record", ["x"]), ("m-1.array_record", ["x"])])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    R.MaskStore.write_index(tmp_path, [("m-9.array_record", ["y"])])
