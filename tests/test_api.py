"""The Python API (`fifa_jax.FiFa`) on a tiny checkpoint: the answers `fifa infer`
gives, for every way of passing an image and a query, batched or not, and one clear
QueryError for each bad query."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fifa_jax
from fifa_jax import tokens
from fifa_jax.infer import load as load_lib
from fifa_jax.infer import overlay, predict
from fifa_jax.infer import run as infer_run

N = 6  # new tokens: enough to exercise the path, quick to compile


@pytest.fixture(scope="module")
def model(workdir):
  return fifa_jax.FiFa.load(workdir[0], max_new_tokens=N)


@pytest.fixture(scope="module")
def face(workdir, tmp_path_factory):
  rgb = np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)
  path = tmp_path_factory.mktemp("api") / "face.png"
  overlay.save_png(path, rgb)
  return rgb, path


@pytest.mark.slow
def test_answers_equal_fifa_infers(model, face, workdir):
  rgb, path = face
  queries = [predict.Query(rgb, "r-loc", region="nose"), predict.Query(rgb, "b-age", box=(2, 3, 40, 30)),
             predict.Query(rgb, "det")]
  loaded = load_lib.load(workdir[0])
  want = [infer_run.answer_json(q, p, loaded.source, "face.png")
          for q, p in zip(queries, predict.predict(loaded, queries, max_new_tokens=N))]
  got = model.ask_many([(path, "r-loc", "nose"), (rgb, "b-age", (2, 3, 40, 30)),
                        {"image": rgb, "task": "det"}])
  assert [json.loads(json.dumps(a.to_json("face.png"))) for a in got] == json.loads(json.dumps(want))
  # batching does not change an answer (greedy, left-padded prompts)
  one = model.ask(rgb, task="b-age", box=(2, 3, 40, 30))
  assert one.text == got[1].text and one.det_probs == pytest.approx(got[1].det_probs, abs=1e-6)
  a = got[0]
  assert a.task == "r-loc" and a.region == "nose" and a.is_fake == (a.det_probs["fake"] > 0.5)
  assert set(a.cls_probs) == set(tokens.CLS_CLASSES) and len(a.grounded) == tokens.count_segs(a.text)
  for g in a.grounded:
    assert g.mask.shape == g.region_mask.shape == rgb.shape[:2] and g.mask.dtype == bool
  picture = a.overlay()
  assert picture.ndim == 3 and picture.shape[0] >= rgb.shape[0] and picture.dtype == np.uint8


@pytest.mark.slow
def test_images_and_free_questions(model, face, tmp_path):
  rgb, path = face
  from PIL import Image

  by_path = model.ask(path, "det")  # a task name positionally
  for image in (rgb, Image.fromarray(rgb), np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])):
    assert model.ask(image, task="det").text == by_path.text
  grey = model.ask(rgb[..., 0], task="det")
  assert grey.image.shape == rgb.shape
  free = model.ask(rgb, "Is anything odd about the eyes?")
  assert free.task is None and free.question == "<image>\nIs anything odd about the eyes?"
  boxed = model.ask(rgb, "What is inside this box?", box=(1, 1, 20, 20))
  assert boxed.question.endswith("<bbox>") and boxed.box == (1.0, 1.0, 20.0, 20.0)
  assert model.ask(rgb, task="det").save_overlay(tmp_path / "o.png").stat().st_size > 0


def test_bad_queries_are_named(model, face):
  rgb, _ = face
  for kwargs, message in [
      (dict(task="det", question="why?"), "a task .* or a question, not both"),
      (dict(), "a task .* or a question"),
      (dict(task="segment"), "unknown task 'segment'"),
      (dict(task="r-loc"), "needs --region"),
      (dict(task="r-loc", region="noze"), "nearest FICT names: 'nose'"),
      (dict(task="b-age", box=(0, 0, 99, 10)), "does not lie inside the 48x40 image"),
      (dict(question="why?", region="nose"), "region goes with the R- tasks"),
      (dict(question="  "), "the question is empty")]:
    with pytest.raises(fifa_jax.api.QueryError, match=message):
      model.ask(rgb, **kwargs)
  for image, message in [(rgb.astype(np.float32), "dtype float32"), (rgb[:1, :1], "too small"),
                         ("no/such.png", "does not exist")]:
    with pytest.raises(fifa_jax.api.QueryError, match=message):
      model.ask(image, task="det")
  with pytest.raises(fifa_jax.api.QueryError, match="unknown query fields \\['colour'\\]"):
    model.ask_many([{"image": rgb, "task": "det", "colour": "red"}])
