"""`fifa serve` on loopback with the tiny checkpoint: answers equal the Python API's,
concurrent requests are batched, every bad request gets a 4xx naming the problem, and a
load test of 200 requests at concurrency 8 runs without an error (its latencies are
printed, not asserted; bench/bench_serve.py records them)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import time
import urllib.error
import urllib.request
import uuid

import cv2
import numpy as np
import pytest

from data_prep import samples
from fifa_jax import api, serve as serve_lib

N = 6


@pytest.fixture(scope="module")
def server(workdir):
  model = api.FiFa.load(workdir[0], max_new_tokens=N)
  limits = serve_lib.Limits(max_body_bytes=2 * 2**20, max_side=512, max_batch=8, max_waiting=64)
  with serve_lib.in_background(serve_lib.create_app(model, limits)) as url:
    yield url, model


def _post(url: str, data: bytes, kind: str = "application/json") -> tuple[int, dict]:
  req = urllib.request.Request(url, data=data, headers={"Content-Type": kind}, method="POST")
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _png(rgb: np.ndarray) -> bytes:
  return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _ask_json(url, rgb, **fields) -> tuple[int, dict]:
  body = {"image": base64.b64encode(_png(rgb)).decode(), **fields}
  return _post(url + "/ask", json.dumps(body).encode())


def _multipart(fields: dict, image: bytes, name: str = "face.png") -> tuple[bytes, str]:
  sep = uuid.uuid4().hex
  parts = [f'--{sep}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
           for k, v in fields.items()]
  parts.append(f'--{sep}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
               f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
  return b"".join(parts) + f"--{sep}--\r\n".encode(), f"multipart/form-data; boundary={sep}"


RGB = np.random.default_rng(3).integers(0, 255, (40, 48, 3), np.uint8)


@pytest.mark.slow
def test_answers_equal_the_python_api(server):
  url, model = server
  with urllib.request.urlopen(url + "/health") as r:
    assert json.loads(r.read()) == {"status": "ok"}
  with urllib.request.urlopen(url + "/info") as r:
    info = json.loads(r.read())
  assert "r-loc" in info["tasks"] and info["limits"]["max_batch"] == 8
  status, got = _ask_json(url, RGB, task="b-age", box=[2, 3, 40, 30])
  want = model.ask(RGB, task="b-age", box=(2, 3, 40, 30)).to_json()
  assert status == 200 and got["answer"] == want["answer"] and got["grounded"] == want["grounded"]
  body, kind = _multipart({"task": "r-loc", "region": "nose"}, _png(RGB))
  status, got = _post(url + "/ask", body, kind)
  assert status == 200 and got["image"] == "face.png"
  assert got["answer"] == model.ask(RGB, task="r-loc", region="nose").text


@pytest.mark.slow
def test_bad_requests_get_a_4xx_naming_the_problem(server):
  url, _ = server
  cases = [
      (_post(url + "/ask", b"{not json"), 400, "not JSON"),
      (_post(url + "/ask", b"[1, 2]"), 400, "must be a JSON object"),
      (_post(url + "/ask", json.dumps({"task": "det"}).encode()), 400, "base64 string"),
      (_post(url + "/ask", json.dumps({"image": "@@@", "task": "det"}).encode()), 400, "not valid base64"),
      (_post(url + "/ask", json.dumps({"image": base64.b64encode(b"GIF89a junk").decode(),
                                       "task": "det"}).encode()), 400, "could not be read as an image"),
      (_ask_json(url, RGB, task="segment"), 400, "unknown task 'segment'"),
      (_ask_json(url, RGB, task="r-loc", region="noze"), 400, "nearest FICT names: 'nose'"),
      (_ask_json(url, RGB, task="b-age", box=[1, 2]), 400, "box must be four numbers"),
      (_ask_json(url, RGB, task="det", colour="red"), 400, "unknown fields ['colour']"),
      (_ask_json(url, np.zeros((600, 20, 3), np.uint8), task="det"), 413, "exceeds the limit of 512"),
      (_post(url + "/ask", b"x" * (2 * 2**20 + 1)), 413, "exceeds the limit of 2097152"),
  ]
  for (status, body), want_status, message in cases:
    assert status == want_status and message in body["error"], (status, body)


@pytest.mark.slow
def test_photos_are_answered_face_by_face(server, tmp_path):
  url, model = server
  photo = np.full((300, 400, 3), 120, np.uint8)
  photo[80:192, 200:312] = samples.tom_hanks()
  status, one = _ask_json(url, photo, task="det", faces="largest")
  assert status == 200 and one["size"] == [300, 400], one
  x0, y0, side = one["face"]["crop"]
  assert x0 <= 256 <= x0 + side and y0 <= 136 <= y0 + side
  want = model.ask(photo, task="det", faces="largest").to_json()
  assert one["answer"] == want["answer"] and one["face"] == want["face"]
  status, every = _ask_json(url, photo, task="det", faces="all")
  assert status == 200 and [f["face"] for f in every["faces"]] == [one["face"]]
  noise = np.random.default_rng(0).integers(0, 255, (200, 240, 3), np.uint8)
  status, body = _ask_json(url, noise, task="det", faces="largest")
  assert status == 422 and "no face found" in body["error"]
  status, body = _ask_json(url, photo, task="det", faces="every")
  assert status == 400 and "faces must be one of none, largest, all" in body["error"]


@pytest.mark.slow
def test_load_200_requests_at_concurrency_8(server):
  url, _ = server
  tasks = ["det", "cls", "i-loc", "i-age"]

  def one(i: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    status, _ = _ask_json(url, RGB, task=tasks[i % len(tasks)])
    return status, time.perf_counter() - t0

  for i in range(8):  # warm-up: compile the batch shapes before timing
    one(i)
  with cf.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(one, range(200)))
  statuses = [s for s, _ in results]
  assert statuses == [200] * 200
  lat = np.asarray([t for _, t in results]) * 1e3
  print(f"\n200 requests at concurrency 8: p50 {np.percentile(lat, 50):.0f} ms, "
        f"p95 {np.percentile(lat, 95):.0f} ms")
