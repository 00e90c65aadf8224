"""Image reading, per-image face outcomes, and the Step 1 pair rule."""

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep import artifacts, imageio, landmarks


def test_load_image_modes_and_exif(tmp_path, astronaut):
  small = np.ascontiguousarray(astronaut[::4, ::4])
  Image.fromarray(small).convert("RGBA").save(tmp_path / "rgba.png")
  Image.fromarray(small).convert("L").save(tmp_path / "grey.png")
  Image.fromarray((small[..., 0].astype(np.uint16) * 257)).save(tmp_path / "grey16.png")
  Image.fromarray(small).convert("P").save(tmp_path / "pal.png")
  assert np.array_equal(imageio.load_image(tmp_path / "rgba.png"), small)
  for name in ("grey.png", "grey16.png", "pal.png"):
    a = imageio.load_image(tmp_path / name)
    assert a.shape == small.shape and a.dtype == np.uint8, name
  g16 = imageio.load_image(tmp_path / "grey16.png")
  assert np.array_equal(g16[..., 0], small[..., 0]) and np.array_equal(g16[..., 1], g16[..., 2])
  # stored rotated, with EXIF orientation 6 ("rotate 90 degrees clockwise to display")
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.ascontiguousarray(np.rot90(small, 1))).save(tmp_path / "exif.png", exif=exif)
  assert np.array_equal(imageio.load_image(tmp_path / "exif.png"), small)
  (tmp_path / "junk.png").write_bytes(b"junk")
  with pytest.raises(imageio.ImageError, match="junk.png: not a readable image"):
    imageio.load_image(tmp_path / "junk.png")
  with pytest.raises(imageio.ImageError, match="no such file"):
    imageio.load_image(tmp_path / "missing.png")


def test_png_decoders_agree(tmp_path, astronaut, monkeypatch):
  """libspng (when installed) and OpenCV give PIL's pixels for 8-bit RGB, RGBA and grey PNGs."""
  small = np.ascontiguousarray(astronaut[::3, ::3])
  for mode in ("RGB", "RGBA", "L"):
    Image.fromarray(small).convert(mode).save(tmp_path / f"{mode}.png")
  want = {m: np.asarray(Image.open(tmp_path / f"{m}.png").convert("RGB")) for m in ("RGB", "RGBA", "L")}
  for spng in {imageio._spng, None}:
    monkeypatch.setattr(imageio, "_spng", spng)
    for m, w in want.items():
      assert np.array_equal(imageio.load_image(tmp_path / f"{m}.png"), w), (m, spng)
    assert np.array_equal(imageio.load_mask(tmp_path / "L.png"), want["L"][..., 0] > 127)


@pytest.fixture(scope="module")
def landmarker():
  lm = landmarks.Landmarker()
  yield lm
  lm.close()


def _face_crop(astronaut, size):
  return cv2.resize(np.ascontiguousarray(astronaut[20:210, 130:320]), (size, size), interpolation=cv2.INTER_AREA)


def test_no_face_is_an_error(landmarker):
  noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
  with pytest.raises(landmarks.NoFaceError, match="no face"):
    landmarker.detect(noise)


def test_several_faces_choose_the_largest_and_flag(landmarker, astronaut):
  canvas = np.full((300, 520, 3), 128, np.uint8)
  canvas[20:280, 10:270] = _face_crop(astronaut, 260)
  canvas[80:240, 330:490] = _face_crop(astronaut, 160)
  r = landmarker.detect(canvas)
  assert r.n_faces == 2 and "several_faces" in r.flags
  assert r.landmarks[:, 0].max() < 300  # the larger (left) face
  strict = landmarks.Landmarker(multi_face="error")
  with pytest.raises(landmarks.SeveralFacesError):
    strict.detect(canvas)
  strict.close()


def test_cut_face_is_flagged_or_rejected(landmarker, astronaut):
  face = _face_crop(astronaut, 300)
  cut = np.ascontiguousarray(face[:, 120:])  # the subject's right side of the face is cut off
  r = landmarker.detect(cut)
  assert r.cut_fraction > 0.05 and "cut_face" in r.flags
  strict = landmarks.Landmarker(max_cut=0.02)
  with pytest.raises(landmarks.CutFaceError, match="cut by the image border"):
    strict.detect(cut)
  strict.close()


def test_pair_rule(astronaut):
  real = astronaut
  fake = real.copy()
  fake[100:140, 190:260] = np.clip(fake[100:140, 190:260].astype(int) + 35, 0, 255)
  fake[300:302, 0:5] = 255 - fake[300:302, 0:5]
  mask, info = artifacts.artifact_mask_from_pair(real, fake)
  assert mask.shape == real.shape[:2]
  assert mask[100:140, 190:260].all()  # the edited block is the artifact
  assert mask.sum() <= 0.05 * mask.size + 2800  # at most the top 5% (plus ties)
  assert info["shift"] == pytest.approx([0, 0], abs=0.2)
  top = artifacts.artifact_mask_from_pair(real, fake, artifacts.PairRule(top_percent=1.0))[0]
  assert 0 < top.sum() <= mask.sum()
  shifted = np.roll(fake, 4, axis=1)
  with pytest.raises(artifacts.PairError, match="misaligned"):
    artifacts.artifact_mask_from_pair(real, shifted)
  other = np.ascontiguousarray(real[::-1])
  with pytest.raises(artifacts.PairError, match="not the same picture"):
    artifacts.artifact_mask_from_pair(real, other)
  half = cv2.resize(fake, (256, 256), interpolation=cv2.INTER_AREA)
  m2, _ = artifacts.artifact_mask_from_pair(real, half)
  assert m2.shape == (256, 256)
  with pytest.raises(artifacts.PairError, match="sizes differ"):
    artifacts.artifact_mask_from_pair(real, np.ascontiguousarray(fake[:, :300]))
