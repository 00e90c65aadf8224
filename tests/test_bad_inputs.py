"""A corpus of bad inputs through the commands users touch: each gets one line naming the
input and the problem, exit status 2, and no traceback; images that are merely unusual
(16-bit, grey, with alpha, EXIF-rotated) are read, not refused."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fifa_jax.data import toy
from fifa_jax.infer import predict

FIFA = [sys.executable, "-m", "fifa_jax.cli"]
TINY = "configs/tiny_cpu.yaml"


def fifa(*args) -> subprocess.CompletedProcess:
  return subprocess.run([*FIFA, *args], capture_output=True, text=True,
                        env={**os.environ, "XLA_FLAGS": ""})


def one_clean_line(r: subprocess.CompletedProcess, *words: str, after_log: bool = False) -> None:
  """Exit 2, no traceback, one line naming the problem (`after_log`: the run's own log
  lines, such as `fifa train`'s device and model lines, may come before it)."""
  assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
  assert "Traceback" not in r.stderr, r.stderr[-1500:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  if after_log:
    assert sum("error" in l for l in lines) == 1, lines
    lines = lines[-1:]
  assert len(lines) == 1, lines
  for w in words:
    assert w in lines[0], lines[0]


@pytest.mark.slow
def test_weights_files_that_are_not_weights(tmp_path):
  header = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}'
  cut = tmp_path / "cut.safetensors"  # a valid header, then the data stop short
  cut.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 10)
  one_clean_line(fifa("convert", "llama", str(cut), str(tmp_path / "o1")), "cut.safetensors", "cut off")
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\":")
  one_clean_line(fifa("convert", "llama", str(junk), str(tmp_path / "o2")), "junk.safetensors",
                 "not a safetensors file")
  garbage = tmp_path / "garbage.bin"
  garbage.write_bytes(b"garbage" * 10)
  one_clean_line(fifa("convert", "llama", str(garbage), str(tmp_path / "o3")), "garbage.bin")
  cut_pth = tmp_path / "cut.pth"  # the first 100 bytes of a zip archive
  cut_pth.write_bytes(b"PK\x03\x04" + b"\0" * 96)
  one_clean_line(fifa("convert", "farl", str(cut_pth), str(tmp_path / "o4")), "cut.pth",
                 "not a whole PyTorch checkpoint")
  for out in ("o1", "o2", "o3", "o4"):  # nothing written half-way
    assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir())


@pytest.mark.slow
def test_training_inputs(tmp_path):
  (tmp_path / "a_file").write_text("x")
  one_clean_line(fifa("train", "--config", TINY, "--workdir", str(tmp_path / "a_file")),
                 "a_file", "is a file, not a folder")
  one_clean_line(fifa("train", "--config", TINY, "--workdir", str(tmp_path / "w"),
                      "--set", f"model.tokenizer={tmp_path / 'no_tokenizer'}"),
                 "model.tokenizer", "no_tokenizer", "does not exist")


@pytest.mark.slow
def test_images_that_cannot_be_asked_about(tmp_path):
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "text.png").write_text("not an image")
  cv2.imwrite(str(tmp_path / "dot.png"), np.zeros((1, 1, 3), np.uint8))
  for name, words in [("empty.png", ("empty.png", "could not be read as an image")),
                      ("text.png", ("text.png", "could not be read as an image")),
                      ("dot.png", ("1x1 pixels", "too small"))]:
    one_clean_line(fifa("infer", "--checkpoint", str(tmp_path / "none"), "--image", str(tmp_path / name),
                        "--task", "det", "--out", str(tmp_path / "o")), *words)


def test_unusual_images_are_read_as_8_bit_rgb(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 255, (24, 32, 3), np.uint8)
  cases = {
      "16bit.png": (rgb.astype(np.uint16) * 257)[..., ::-1],
      "grey.png": rgb[..., 0],
      "alpha.png": np.dstack([rgb[..., ::-1], np.full((24, 32), 255, np.uint8)]),
  }
  for name, pixels in cases.items():
    cv2.imwrite(str(tmp_path / name), pixels)
    got = predict.read_image(tmp_path / name)
    assert got.dtype == np.uint8 and got.shape == (24, 32, 3), name
  np.testing.assert_array_equal(predict.read_image(tmp_path / "16bit.png"), rgb)
  np.testing.assert_array_equal(predict.read_image(tmp_path / "alpha.png"), rgb)
  # EXIF orientation 6 (rotate 90 degrees clockwise to view): OpenCV applies it.
  ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
  exif = (b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0")
  app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
  (tmp_path / "rotated.jpg").write_bytes(jpg.tobytes()[:2] + app1 + jpg.tobytes()[2:])
  assert predict.read_image(tmp_path / "rotated.jpg").shape == (32, 24, 3)


@pytest.mark.slow
def test_model_folders_shards_and_huge_images(tmp_path, workdir):
  # A model folder whose fifa_jax.json lacks fields: every loading command names the file.
  model = tmp_path / "model"
  model.mkdir()
  (model / "fifa_jax.json").write_text('{"format": "fifa-jax/1", "kind": "fifa", "config": {"vit": {}}}')
  cv2.imwrite(str(tmp_path / "face.png"), np.full((64, 64, 3), 128, np.uint8))
  face = str(tmp_path / "face.png")
  for args in (["infer", "--checkpoint", str(model), "--image", face, "--task", "det", "--out", str(tmp_path / "o")],
               ["chat", "--checkpoint", str(model), "--image", face],
               ["serve", "--checkpoint", str(model), "--port", "1"]):
    one_clean_line(fifa(*args), "fifa_jax.json", "missing box, llama")
  (model / "fifa_jax.json").write_text('{"format": "fifa-jax/1", "kind": "fifa"}')
  one_clean_line(fifa("infer", "--checkpoint", str(model), "--image", face, "--task", "det",
                      "--out", str(tmp_path / "o")), "fifa_jax.json", "missing 'config'")

  # A shard cut short: training and evaluation name it.
  data = toy.write_toy_dataset(tmp_path / "data", n_images=4, splits=("train",))
  shard = sorted((data / "qa" / "train").glob("det-*.array_record"))[0]
  shard.write_bytes(shard.read_bytes()[:3000])
  one_clean_line(fifa("train", "--config", TINY, "--workdir", str(tmp_path / "w"),
                      "--set", f"data.root={data}", "--set", "train.steps=1"),
                 shard.name, "cut short", after_log=True)
  one_clean_line(fifa("eval", "--checkpoint", str(workdir[0]), "--data", str(data),
                      "--split", "train", "--out", str(tmp_path / "e"), "--tasks", "det"),
                 shard.name, "cut short")

  # 20000 x 20000 pixels in a 1-MB PNG: refused from its header, before decoding 400 MB.
  huge = tmp_path / "huge.png"
  cv2.imwrite(str(huge), np.zeros((20000, 20000), np.uint8))
  one_clean_line(fifa("infer", "--checkpoint", str(model), "--image", str(huge), "--task", "det",
                      "--out", str(tmp_path / "o")), "huge.png", "400 MP", "100 MP limit")
