"""Overlays: one colour per phrase, blended only inside its mask, with a legend."""

import cv2
import numpy as np
import pytest

from fifa_jax.infer import overlay


def test_palette_is_distinct():
  cols = overlay.palette(12)
  assert len(set(cols)) == 12


def test_masks_are_blended_in_their_colours_only_inside(tmp_path):
  img = np.full((600, 600, 3), 100, np.uint8)  # large enough not to be enlarged
  a = np.zeros((600, 600), bool)
  a[50:150, 50:150] = True
  b = np.zeros((600, 600), bool)
  b[300:400, 300:500] = True
  out = overlay.draw_overlay(img, [a, b], ["left cheek", "nose base"], title="I-AGE",
                             text="The <p>left cheek</p>[SEG] is smooth.", box=(10, 10, 590, 590))
  assert out.shape[0] >= 600 and out.shape[1] == 600 + 360
  c0, c1 = overlay.palette(2)
  want0 = (0.5 * 100 + 0.5 * np.asarray(c0)).astype(np.uint8)
  want1 = (0.5 * 100 + 0.5 * np.asarray(c1)).astype(np.uint8)
  np.testing.assert_array_equal(out[100, 100], want0)
  np.testing.assert_array_equal(out[350, 400], want1)
  np.testing.assert_array_equal(out[250, 250], [100, 100, 100])  # outside every mask
  assert (out[:, 600:] != 24).any()  # the legend has been written
  overlay.save_png(tmp_path / "o.png", out)
  back = cv2.cvtColor(cv2.imread(str(tmp_path / "o.png")), cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(back, out)


def test_small_images_are_enlarged_and_bad_input_is_named():
  img = np.zeros((112, 112, 3), np.uint8)
  m = np.zeros((112, 112), bool)
  m[10:20, 10:20] = True
  out = overlay.draw_overlay(img, [m], ["nasion"])
  assert out.shape[1] == 512 + 360
  with pytest.raises(ValueError, match="does not match the image"):
    overlay.draw_overlay(img, [np.zeros((10, 10), bool)], ["x"])
  with pytest.raises(ValueError, match="1 masks for 2 labels"):
    overlay.draw_overlay(img, [m], ["x", "y"])
