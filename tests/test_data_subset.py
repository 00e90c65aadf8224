"""fifa data subset (the overfitting check's data), its zip archive, augmentation, the plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fifa_jax import tokens
from fifa_jax.data import pipeline, subset, toy
from fifa_jax.data.records import MaskStore, read_qa_records


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return toy.write_toy_dataset(tmp_path_factory.mktemp("toy"), n_images=6, size=64)


def _records(build):
  return sorted((r.record_id, r.answer, tuple(r.box or ()))
                for p in sorted((build / "qa" / "train").glob("*.array_record"))
                for r in read_qa_records(p))


def test_subset_takes_whole_images_and_resizes(root, tmp_path):
  s = subset.subset(root, tmp_path / "few", fakes=1, reals=1, max_concepts=None, size=128)
  assert len(s["images"]) == 2 and s["records"]["det"] == 2 and s["records"]["i-age"] == 1
  store = MaskStore(tmp_path / "few" / "masks")
  for image_id in s["images"]:
    e = store[image_id]
    assert (e.height, e.width) == (128, 128) and e.meta["resized_from"] == [64, 64]
  # Boxes scale with the image (64 -> 128 px).
  orig = {r[0]: r[2] for r in _records(root)}
  for rid, _, box in _records(tmp_path / "few"):
    if box:
      np.testing.assert_allclose(box, 2 * np.asarray(orig[rid]))
  with pytest.raises(ValueError, match="asked for 9"):
    subset.subset(root, tmp_path / "none", fakes=9)


def test_archive_round_trip(root, tmp_path):
  subset.subset(root, tmp_path / "few", fakes=2, reals=1, max_concepts=None)
  subset.to_archive(tmp_path / "few", tmp_path / "few.zip")
  back = subset.from_archive(tmp_path / "few.zip", tmp_path / "back")
  assert _records(back) == _records(tmp_path / "few")
  a, b = MaskStore(tmp_path / "few" / "masks"), MaskStore(back / "masks")
  assert a.ids() == b.ids()
  for i in a.ids():
    assert a[i].to_bytes() == b[i].to_bytes()


def test_augment_moves_image_masks_and_box_together():
  aug = pipeline.Augment(scale=1.1, shift=(0.05, -0.03), gain=(1.0, 1.0, 1.0), contrast=1.0)
  size = 64
  m = np.zeros((size, size), np.uint8)
  m[20:30, 10:40] = 1
  box = np.asarray([10, 20, 40, 30], np.float32)
  moved, mbox = aug.mask(m), aug.box(box, size)
  ys, xs = np.nonzero(moved)
  np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], mbox, atol=1.5)
  img = np.zeros((size, size, 3), np.uint8)
  img[m.astype(bool)] = 200
  np.testing.assert_array_equal(aug.image(img)[..., 0] > 100, moved.astype(bool))


def test_learning_curve_plot(tmp_path):
  from fifa_jax.train import plot
  rows = [{"step": s, "train/loss": 5.0 / s, "train/text": 3.0 / s, "train/mask_dice": 1 - s / 100,
           "train/mask_bce": 0.1, "train/det": 0.6 / s, "train/cls": 1.0 / s,
           "train/i-age/text": 2.0 / s, "train/i-age/mask_dice": 1 - s / 100} for s in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = plot.plot(tmp_path / "metrics.jsonl", tmp_path / "curve.png")
  assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(ValueError, match="no training metrics"):
    (tmp_path / "empty.jsonl").write_text("")
    plot.plot(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_yaml_exponent_without_dot_is_a_float():
  from fifa_jax import config
  assert config.load(None, ["optim.lr=3e-3"]).optim.lr == pytest.approx(3e-3)
  with pytest.raises(config.ConfigError, match="expected a number"):
    config.load(None, ["optim.lr=fast"])


def test_all_tasks_present_in_toy(root):
  assert {p.name.split("-00000")[0] for p in (root / "qa" / "train").glob("*")} == set(tokens.TASKS)
