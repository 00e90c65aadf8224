"""The grain pipeline: task mixing, host slices, sample contents, exact iterator resume."""

from __future__ import annotations

import collections
import dataclasses

import grain
import numpy as np
import pytest

from fifa_jax import fict, tokens
from fifa_jax.config import TABLE17_RATIOS
from fifa_jax.data import mixing, pipeline, toy
from fifa_jax.data.records import MaskStore, QARecord
from fifa_jax.models.fifa import FiFaConfig

FCFG = FiFaConfig.tiny()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return toy.write_toy_dataset(tmp_path_factory.mktemp("toy"), n_images=4)


def pc(root, tasks, batch=4, split="train", **kw):
  return pipeline.PipelineConfig(root=str(root), qa_glob="{root}/qa/{split}/{task}-*.array_record",
                                 masks="{root}/masks", tasks=tasks, split=split, seed=0,
                                 local_batch=batch, **kw)


@pytest.fixture(scope="module")
def layout():
  tok = tokens.load_tokenizer()
  ids = tokens.special_token_ids(tok)
  fcfg = FiFaConfig.tiny(llama=FCFG.llama.__class__(**{**FCFG.llama.__dict__, "vocab_size": len(tok)}),
                         image_token_id=ids[tokens.IMAGE], bbox_token_id=ids[tokens.BBOX],
                         p_open_token_id=ids[tokens.P_OPEN], p_close_token_id=ids[tokens.P_CLOSE],
                         seg_token_id=ids[tokens.SEG])
  return pipeline.Layout.for_model(fcfg, [96, 128, 160], None), tok


@pytest.mark.slow
def test_table17_mixing_proportions():
  srcs = {t: grain.MapDataset.range(1000 * i, 1000 * i + 7) for i, t in enumerate(tokens.TASKS)}
  stream = mixing.mixed_stream(srcs, TABLE17_RATIOS, seed=0)
  counts = collections.Counter(tokens.TASKS[stream[i] // 1000] for i in range(1800))
  total = sum(TABLE17_RATIOS.values())
  for t, w in TABLE17_RATIOS.items():
    assert abs(counts[t] / 1800 - w / total) < 0.01, (t, counts[t])
  # Hosts take interleaved slices: together they are the global stream.
  hosts = [mixing.host_slice(stream, i, 4) for i in range(4)]
  assert [hosts[i % 4][i // 4] for i in range(40)] == [stream[i] for i in range(40)]
  # A new order each epoch of a task.
  one = mixing.mixed_stream({"det": grain.MapDataset.range(7)}, {"det": 1}, seed=0)
  assert sorted(one[i] for i in range(7)) == list(range(7))
  assert [one[i] for i in range(7)] != [one[i] for i in range(7, 14)]


def test_missing_task_is_a_clear_error(root):
  with pytest.raises(FileNotFoundError, match="task 'det' has weight"):
    mixing.task_sources("{root}/nowhere/{split}/{task}-*.array_record", str(root), "train", {"det": 1})


def test_sample_contents(root, layout):
  lay, tok = layout
  ids_of = tokens.special_token_ids(tok)
  it = pipeline.iterate(pc(root, {"b-age": 1}, batch=2), lay)
  b = next(it)
  assert b["input_ids"].shape == b["loss_mask"].shape == b["attention_mask"].shape
  assert b["input_ids"].shape[1] in lay.buckets
  assert b["pixels"].shape == (2, lay.image_size, lay.image_size, 3)
  assert b["masks"].shape == (lay.seg_capacity, 2, *lay.target_size)
  assert b["boxes"].shape == (2, 1, 4) and (b["boxes"][:, 0, 2] > b["boxes"][:, 0, 0]).all()
  assert (b["task"] == tokens.TASKS.index("b-age")).all()
  for i in range(2):
    ids, lm, am = b["input_ids"][i], b["loss_mask"][i], b["attention_mask"][i]
    n = int(am.sum())
    assert (ids == ids_of[tokens.IMAGE]).sum() == lay.num_image_tokens
    assert (ids == ids_of[tokens.BBOX]).sum() == 1
    # Loss only on the answer: after ASSISTANT:, ending with </s>, never on padding.
    first = int(np.argmax(lm))
    assert lm[first:n].all() and not lm[:first].any() and not lm[n:].any()
    assert ids[n - 1] == tok.eos_token_id
    assert "ASSISTANT:" in tok.decode(ids[:first]) and "ASSISTANT" not in tok.decode(ids[first:n])
    # Every [SEG] has a slot: row i's slots are its [SEG]s, in order, read one position earlier.
    seg_at = np.flatnonzero(ids == ids_of[tokens.SEG])
    mine = b["seg_valid"] & (b["seg_rows"] == i)
    assert len(seg_at) > 0 and b["seg_cols"][mine].tolist() == (seg_at - 1).tolist()
  assert not b["masks_dropped"].any()
  first_of = {i: int(np.flatnonzero(b["seg_valid"] & (b["seg_rows"] == i))[0]) for i in range(2)}
  # Each row's first slot: its concept's Region Mask and Regional Artifact Mask, binary, image size.
  src = grain.sources.ArrayRecordDataSource(mixing.task_files(
      "{root}/qa/{split}/{task}-*.array_record", str(root), "train", "b-age"))
  recs = [QARecord.from_bytes(src[j]) for j in range(len(src))]
  store = MaskStore(root / "masks")
  found = 0
  for r in recs:
    e = store[r.image_id]
    region = pipeline.resize_mask(e.region_mask(r.seg_concepts[0]), lay.target_size)
    art = pipeline.resize_mask(e.artifact_region_mask(r.seg_concepts[0]), lay.target_size)
    for i in range(2):
      k = first_of[i]
      if np.allclose(b["masks"][k, 0], region) and np.allclose(b["masks"][k, 1], art):
        found += 1
  assert found >= 1
  v = b["seg_valid"]
  assert b["masks"].dtype == np.uint8 and 0 < b["masks"][v, 0].mean() < 1
  assert b["masks"][v, 1].sum() <= b["masks"][v, 0].sum()
  assert not b["masks"][~v].any()


def test_pack_segs_no_cap_per_row_overflow_counted_micro_groups():
  mk = lambda n, c0: {"seg_cols": np.arange(c0, c0 + n, dtype=np.int32),
                      "masks": np.full((n, 2, 2, 2), c0, np.float32)}
  samples = [mk(1, 10), mk(5, 20), mk(0, 30), mk(2, 40)]
  p = pipeline.pack_segs(samples, 8, 1, (2, 2))
  assert p["seg_rows"].tolist() == [0, 1, 1, 1, 1, 1, 3, 3]
  assert p["seg_cols"].tolist() == [10, 20, 21, 22, 23, 24, 40, 41]
  assert p["seg_valid"].all() and not p["masks_dropped"].any()
  assert p["masks"][6, 0, 0, 0] == 40
  # Too few slots: the overflow is counted per row, never silently lost.
  p = pipeline.pack_segs(samples, 4, 1, (2, 2))
  assert p["seg_rows"].tolist() == [0, 1, 1, 1] and p["masks_dropped"].tolist() == [0, 2, 0, 2]
  # Two micro-batches (rows 0, 2 | rows 1, 3): slots grouped, 4 each.
  p = pipeline.pack_segs(samples, 8, 2, (2, 2))
  assert p["seg_rows"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  assert p["seg_valid"].tolist() == [True, False, False, False, True, True, True, True]
  assert p["masks_dropped"].tolist() == [0, 1, 0, 2]


def test_seg_capacity_from_the_data():
  counts = {"i-loc": np.asarray([50, 40]), "r-loc": np.asarray([2, 3, 4, 3])}
  cap = pipeline.seg_capacity_for(counts, {"i-loc": 1, "r-loc": 3, "det": 4}, batch=8)
  assert cap % 8 == 0 and 50 <= cap <= 8 * 50
  # Mean of a batch: 8 * (1/8 * 45 + 3/8 * 3) = 54; mean + 4 sd lies above it.
  assert cap > 54
  assert pipeline.seg_capacity_for({"r-loc": np.asarray([3, 3])}, {"r-loc": 1}, batch=4) == 16


def test_labels_and_padding(root, layout):
  lay, _ = layout
  b = next(pipeline.iterate(pc(root, {"det": 1, "cls": 1}, batch=8), lay))
  det = b["task"] == tokens.TASKS.index("det")
  assert det.any() and (~det).any()
  assert set(b["det_label"][det]) <= {0, 1} and (b["det_label"][~det] == -1).all()
  assert (b["cls_label"][det] == -1).all() and (b["cls_label"][~det] >= 0).all()
  assert not b["seg_valid"].any() and not b["boxes"].any()
  wider = pipeline.pad_to_length(b, 160, 0)
  assert wider["input_ids"].shape[1] == 160 and not wider["attention_mask"][:, b["input_ids"].shape[1]:].any()


@pytest.mark.parametrize("batch,group,skip,take", [(3, 0, 2, 2), (2, 3, 4, 3)],
                         ids=["mixed", "length-grouped, into the second window"])
def test_iterator_state_resumes_exactly(root, layout, batch, group, skip, take):
  lay, _ = layout
  cfg = pc(root, dict(TABLE17_RATIOS), batch=batch, group_by_length=group)
  it = pipeline.iterate(cfg, lay)
  for _ in range(skip):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(take)]
  again = pipeline.iterate(cfg, lay, state=state)
  for w in want:
    got = next(again)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k], err_msg=k)


def test_bucket_length():
  assert pipeline.bucket_length(10, [96, 128]) == 96
  assert pipeline.bucket_length(97, [96, 128]) == 128
  assert pipeline.bucket_length(500, [96, 128]) == 128
  assert fict.NUM_ATOMIC == 112


def _rows(batch) -> list[tuple[int, ...]]:
  """Each row's unpadded ids."""
  return [tuple(r[m.astype(bool)]) for r, m in zip(batch["input_ids"], batch["attention_mask"])]


def test_length_grouped_batches_hold_the_same_records_padded_less(root, layout):
  lay = dataclasses.replace(layout[0], buckets=(32, 48, 64, 96))  # the toy records: 24-54 tokens
  window, batch = 4, 3
  padded = {"plain": 0, "grouped": 0}
  plain = pipeline.iterate(pc(root, dict(TABLE17_RATIOS), batch=batch), lay)
  grouped = pipeline.iterate(pc(root, dict(TABLE17_RATIOS), batch=batch, group_by_length=window), lay)
  for _ in range(2):  # two windows
    a = [next(plain) for _ in range(window)]
    b = [next(grouped) for _ in range(window)]
    # The same records (and masks) within a window, only regrouped ...
    assert sorted(r for x in a for r in _rows(x)) == sorted(r for x in b for r in _rows(x))
    assert sum(int(x["seg_valid"].sum()) for x in a) == sum(int(x["seg_valid"].sum()) for x in b)
    # ... each batch a run of the window's records sorted by length ...
    spans = sorted((min(map(len, _rows(x))), max(map(len, _rows(x)))) for x in b)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
    # ... so they pad to no more tokens than batches as mixed.
    padded["plain"] += sum(x["input_ids"].size for x in a)
    padded["grouped"] += sum(x["input_ids"].size for x in b)
    assert padded["grouped"] <= padded["plain"]
  assert padded["grouped"] < padded["plain"], padded


def test_seg_capacity_by_bucket_follows_the_records_of_each_length(root, layout):
  lay = dataclasses.replace(layout[0], buckets=(32, 48, 64, 96))
  cfg = pc(root, dict(TABLE17_RATIOS), batch=4, group_by_length=4)
  by_bucket = pipeline.seg_capacity_by_bucket(cfg, lay, multiple=4)
  assert [b for b, _ in by_bucket] == list(lay.buckets)
  assert all(c % 4 == 0 and c >= 4 for _, c in by_bucket)
  # The toy's short records (Det., Cls.: 24 tokens) carry no [SEG]; longer ones do.
  assert by_bucket[0][1] == 4 and by_bucket[2][1] > 4
  grouped = dataclasses.replace(lay, seg_capacity=max(c for _, c in by_bucket),
                                seg_capacity_by_bucket=by_bucket)
  it = pipeline.iterate(cfg, grouped)
  for _ in range(12):
    b = next(it)
    assert b["seg_rows"].shape[0] == grouped.capacity(b["input_ids"].shape[1])
    assert not b["masks_dropped"].any()


def test_pad_to_length_pads_slots_per_micro_batch():
  b = {"input_ids": np.ones((2, 3), np.int32), "attention_mask": np.ones((2, 3), np.int32),
       "loss_mask": np.ones((2, 3), np.int32), "seg_rows": np.asarray([0, 0, 1, 1], np.int32),
       "seg_cols": np.asarray([1, 2, 1, 2], np.int32), "seg_valid": np.asarray([1, 0, 1, 1], bool),
       "masks": np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)}
  out = pipeline.pad_to_length(b, 5, 0, capacity=8, micro_batches=2)
  assert out["input_ids"].shape == (2, 5) and not out["attention_mask"][:, 3:].any()
  # Micro-batch g's slots stay together at [4g, 4g + 4): the new ones at each group's end.
  assert out["seg_rows"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
  assert out["seg_valid"].tolist() == [True, False, False, False, True, True, False, False]
  assert out["masks"][:, 0, 0, 0].tolist() == [0, 1, 0, 0, 2, 3, 0, 0]
