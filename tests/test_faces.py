"""Photos, not crops: faces are found by the annotator's detector (in the data_prep
environment), each is cropped as the training faces are, and the answers' masks and
boxes land back on the photo.  No face, or none large enough, is a clear error."""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np
import pytest

from fifa_jax import api
from fifa_jax.infer import faces as faces_lib
from fifa_jax.infer import run as run_lib
from data_prep import samples


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """A 400x300 photo with Tom Hanks' face (112 px) at x 200-312, y 80-192; insightface's
  group photo t1.jpg at 512 px wide; and noise (no face)."""
  folder = tmp_path_factory.mktemp("photos")
  tom = cv2.imread(str(samples.tom_hanks_path()))
  one = np.full((300, 400, 3), 120, np.uint8)
  one[80:192, 200:312] = tom
  wheel = samples.cache_dir() / "wheels" / f"insightface-{samples.INSIGHTFACE_VERSION}-py3-none-any.whl"
  with zipfile.ZipFile(wheel) as z:
    group = cv2.imdecode(np.frombuffer(z.read("insightface/data/images/t1.jpg"), np.uint8), 1)
  group = cv2.resize(group, (512, 354), interpolation=cv2.INTER_AREA)
  noise = np.random.default_rng(0).integers(0, 255, (200, 240, 3), np.uint8)
  paths = {}
  for name, bgr in (("one", one), ("group", group), ("noise", noise)):
    paths[name] = folder / f"{name}.png"
    cv2.imwrite(str(paths[name]), bgr)
  return paths


def rgb(path) -> np.ndarray:
  return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# -- geometry (no detector) ---------------------------------------------------


def test_crops_move_inside_the_photo_and_masks_paste_back_where_they_came_from():
  assert faces_lib.fit_crop((-10.4, 50.6, 100.2), (300, 400)) == (0, 51, 100)
  assert faces_lib.fit_crop((350, 250, 100), (300, 400)) == (300, 200, 100)
  assert faces_lib.fit_crop((-20, -30, 500), (300, 400)) == (-20, -30, 500)  # larger: padded
  photo = np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8)
  face = faces_lib.Face(box=(0, 0, 1, 1), crop=(120, 40, 100), score=1.0)
  crop = faces_lib.crop_face(photo, face)
  np.testing.assert_array_equal(crop, photo[40:140, 120:220])
  mask = np.zeros((100, 100), bool)
  mask[10:30, 50:60] = True
  back = faces_lib.paste_mask(mask, face, (300, 400))
  assert back.shape == (300, 400) and back.sum() == mask.sum() and back[50:70, 170:180].all()
  # A crop past the border repeats edge pixels; what lands outside the photo is dropped.
  edge = faces_lib.Face(box=(0, 0, 1, 1), crop=(-20, -10, 60), score=1.0)
  assert faces_lib.crop_face(photo, edge).shape == (60, 60, 3)
  assert faces_lib.paste_mask(np.ones((60, 60), bool), edge, (300, 400)).sum() == 40 * 50
  box = (130.0, 50.0, 170.0, 90.0)
  assert faces_lib.box_to_photo(faces_lib.box_to_crop(box, face), face) == box


def test_choosing_faces_names_what_is_missing():
  big = faces_lib.Face((0, 0, 1, 1), (200, 0, 120), 0.9)
  small = faces_lib.Face((0, 0, 1, 1), (0, 0, 60), 0.9)
  tiny = faces_lib.Face((0, 0, 1, 1), (0, 100, 20), 0.9)
  assert faces_lib.choose([small, big, tiny], "all") == [big, small]
  assert faces_lib.choose([small, big], "largest") == [big]
  assert faces_lib.choose([small, big], "all", box=(10, 10, 30, 30)) == [small]
  with pytest.raises(faces_lib.FaceError, match="x.png: no face found"):
    faces_lib.choose([], "all", "x.png")
  with pytest.raises(faces_lib.FaceError, match="largest face found is 20 px across"):
    faces_lib.choose([tiny], "largest")
  with pytest.raises(faces_lib.FaceError, match="lies on none of the 2 faces"):
    faces_lib.choose([small, big], "all", box=(10, 200, 20, 210))
  with pytest.raises(api.QueryError, match="faces must be one of none, largest, all"):
    faces_lib.check_mode("every")


# -- the detector and the model ----------------------------------------------


def test_the_finder_locates_faces_in_photos(photos):
  with faces_lib.FaceFinder() as finder:
    one = finder.find(rgb(photos["one"]))
    group = finder.find(rgb(photos["group"]))
    assert finder.find(rgb(photos["noise"])) == []
  assert len(one) == 1
  x0, y0, side = one[0].crop
  assert x0 <= 256 <= x0 + side and y0 <= 136 <= y0 + side and 90 <= side <= 170, one
  assert len(group) >= 3 and [f.crop[2] for f in group] == sorted((f.crop[2] for f in group), reverse=True)


N = 6  # new tokens, as test_api and test_serve: their compiled generations serve here too


@pytest.mark.slow
def test_ask_about_a_photo_puts_the_answer_on_the_photo(workdir, photos):
  model = api.FiFa.load(workdir[0], max_new_tokens=N)
  try:
    photo = rgb(photos["one"])
    answer = model.ask(photos["one"], task="b-loc", box=(215, 110, 290, 180), faces="largest")
    x0, y0, side = answer.face.crop
    assert answer.image.shape == photo.shape and answer.box == pytest.approx((215, 110, 290, 180))
    # The same answer as asking about the crop itself, masks moved onto the photo.
    direct = model.ask(faces_lib.crop_face(photo, answer.face), task="b-loc",
                       box=faces_lib.box_to_crop((215, 110, 290, 180), answer.face))
    assert answer.text == direct.text and len(answer.grounded) == len(direct.grounded)
    for g, d in zip(answer.grounded, direct.grounded):
      assert g.mask.shape == photo.shape[:2] and g.mask.sum() == d.mask.sum()
      outside = g.mask.copy()
      outside[y0:y0 + side, x0:x0 + side] = False
      assert not outside.any()
    assert answer.to_json()["face"]["crop"] == [x0, y0, side]
    assert answer.overlay().shape[0] >= photo.shape[0]
    group = model.ask_faces(photos["group"], task="det")
    assert len(group) >= 3 and all(a.image.shape == (354, 512, 3) for a in group)
    assert len({a.face.crop for a in group}) == len(group)
    with pytest.raises(api.FaceError, match="no face found"):
      model.ask(photos["noise"], task="det", faces="largest")
  finally:
    model.close()


@pytest.mark.slow
def test_infer_over_a_folder_of_photos_writes_a_line_per_face(workdir, photos, tmp_path):
  # batch_size 1: each photo's faces are one generation, of the shapes the test above compiled.
  counts = run_lib.run_many(str(workdir[0]), str(photos["one"].parent), "det", str(tmp_path),
                            max_new_tokens=N, batch_size=1, faces="all", overlays=True,
                            progress=False)
  rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
  by_image = {}
  for row in rows:
    by_image.setdefault(row["image"].rsplit("/", 1)[-1], []).append(row)
  assert counts == {"answered": 2, "failed": 1, "skipped": 0}
  assert [r["face"]["index"] for r in by_image["group.png"]] == list(range(len(by_image["group.png"])))
  assert len(by_image["group.png"]) >= 3 and by_image["one.png"][0]["size"] == [300, 400]
  assert by_image["noise.png"] == [{"image": str(photos["noise"]), "task": "det",
                                    "error": f"image {str(photos['noise'])!r}: no face found"}]
  assert (tmp_path / "overlays" / "group.det.face-0.png").is_file()
