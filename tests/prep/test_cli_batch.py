"""The CLI (regions, artifact-mask, exit codes) and batch mode surviving a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep import cli, store
from fifa_jax import fict

ROOT = Path(__file__).resolve().parents[2]


def test_regions_command_writes_all_concepts(tmp_path, astronaut):
  img = tmp_path / "astro.png"
  Image.fromarray(astronaut).save(img)
  fake = astronaut.copy()
  fake[100:140, 190:260] = np.clip(fake[100:140, 190:260].astype(int) + 35, 0, 255)
  Image.fromarray(fake).save(tmp_path / "fake.png")
  assert cli.main(["artifact-mask", str(img), str(tmp_path / "fake.png"), "--out", str(tmp_path / "m.png")]) == 0
  rc = cli.main(["regions", str(tmp_path / "fake.png"), "--out", str(tmp_path / "r.npz"),
                 "--overlay", str(tmp_path / "o.png"), "--artifact", str(tmp_path / "m.png")])
  assert rc == 0
  with np.load(tmp_path / "r.npz") as z:
    assert set(fict.NAMES) <= set(z.files)
    assert all(z[n].shape == (512, 512) and z[n].dtype == bool for n in fict.NAMES)
    assert z["landmarks"].shape == (478, 3)
    flagged = {fict.NAMES[i] for i in np.flatnonzero(z["artifact_existing"])}
    assert set(fict.DEFAULT_ARTIFACT_PARENTS) <= flagged
    assert "nose" in flagged or "region around nose" in flagged  # the edit covers the nose and eyes
  assert Image.open(tmp_path / "o.png").size[0] > 1000


def test_bad_input_exits_2(tmp_path, capsys):
  assert cli.main(["regions", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.npz")]) == 2
  assert "missing.png" in capsys.readouterr().err
  noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
  Image.fromarray(noise).save(tmp_path / "noise.png")
  assert cli.main(["regions", str(tmp_path / "noise.png"), "--out", str(tmp_path / "x.npz")]) == 2
  err = capsys.readouterr().err
  assert "noise.png" in err and "no face" in err
  with pytest.raises(SystemExit) as e:
    cli.main(["regions"])
  assert e.value.code == 2


def _make_folder(d: Path, astronaut, tom, n=16):
  d.mkdir()
  (d / "sub").mkdir()
  face = np.ascontiguousarray(astronaut[20:210, 130:320])
  for i in range(n):
    im = cv2.resize(face, (200 + 8 * i, 200 + 8 * i), interpolation=cv2.INTER_AREA)
    Image.fromarray(np.clip(im.astype(int) + i - 8, 0, 255).astype(np.uint8)).save(
        d / ("sub" if i % 3 == 0 else ".") / f"face{i:02d}.png")
  Image.fromarray(tom).save(d / "tom.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(d / "noise.png")
  return sorted(p.relative_to(d) for p in d.rglob("*.png"))


def test_batch_survives_a_kill_and_resumes(tmp_path, astronaut, tom):
  src, out, masks = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
  rels = _make_folder(src, astronaut, tom)
  masks.mkdir()
  Image.fromarray((np.arange(112 * 112).reshape(112, 112) % 7 == 0).astype(np.uint8) * 255).save(masks / "tom.png")
  cmd = [sys.executable, "-m", "data_prep.cli", "batch", str(src), "--out", str(out), "--quiet",
         "--artifacts", str(masks)]
  p = subprocess.Popen(cmd + ["--workers", "1"], cwd=ROOT, start_new_session=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  t0 = time.time()
  while time.time() - t0 < 120 and len(list(out.rglob("*.npz"))) < 3 and p.poll() is None:
    time.sleep(0.01)
  os.killpg(p.pid, signal.SIGKILL)
  p.wait()
  first = {q: q.stat().st_mtime_ns for q in out.rglob("*.npz")}
  assert 3 <= len(first) < len(rels) - 1, "the batch should have been killed part way"
  for q in first:  # whatever exists under a final name is complete
    assert store.is_complete(q)
    store.load(q)
  (out / ".face99.npz.12345.tmp").write_bytes(b"half-written")  # as a kill mid-write would leave
  r = subprocess.run(cmd + ["--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stderr  # noise.png has no face
  s = json.loads((out / "summary.json").read_text())
  assert s["done_before"] == len(first) and s["stale_tmp_removed"] >= 1
  assert s["ok"] + s["done_before"] == len(rels) - 1 and s["failed"] == 1
  assert not list(out.rglob("*.tmp"))
  for q, t in first.items():  # done images were skipped, not redone
    assert q.stat().st_mtime_ns == t
  for rel in rels:
    q = out / rel.with_suffix(".npz")
    assert (q.exists()) == (rel.name != "noise.png")
  log = (out / "failures.tsv").read_text()
  assert "noise.png\tNoFaceError: no face found" in log
  d = store.load(out / "tom.npz")
  assert d["atomic"].shape == (112, 112, 112) and "artifact_existing" in d and d["meta"]["key"] == "tom.png"
  d = store.load(out / "sub" / "face00.npz")
  assert "artifact_existing" not in d and d["atomic"].any(axis=(1, 2)).sum() > 90
  r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)  # nothing left but the failure
  assert r2.returncode == 1 and json.loads((out / "summary.json").read_text())["processed"] == 1


@pytest.mark.parametrize("args,want", [([], (True, False)), (["--flip-average", "both"], (True, True)),
                                       (["--flip-average", "off"], (False, False)),
                                       (["--no-flip-average"], (False, False))])
def test_flip_average_option(args, want):
  a = cli.build_parser().parse_args(["regions", "x.png", "--out", "x.npz", *args])
  c = cli._config(a)
  assert (c.flip_average, c.flip_average_person) == want
