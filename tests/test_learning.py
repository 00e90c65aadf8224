"""FiFa learns: a model trained with fifa-jax memorises a few records of all 11 tasks.

The fixture (tests/data/memorise.zip, 130 KB) holds one synthetic fake and one
real face from the demo's data (`fifa data synth --crop tight --max-ops 1`,
annotated, built with the offline explainer) at 128 px and their 13 records: one
of every task for the fake, Det. and Cls. for both.  Regenerate it with
  fifa data subset DATA --out few/ --fakes 1 --reals 1 --max-concepts 11 --size 128 \\
      --archive tests/data/memorise.zip

The run is the documented overfitting recipe (configs/overfit.yaml), through the
`fifa train` and `fifa eval` commands, so the answers are generated (KV-cache
decoding from the rendered prompt, masks from the generated [SEG]s' states),
never teacher-forced.  About 3 minutes 15 s on 2 idle cores, on one CPU device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fifa_jax import tokens
from fifa_jax.data import subset
from fifa_jax.eval import report

pytestmark = pytest.mark.slow  # trains for about 3 minutes

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "memorise.zip"
STEPS = 300
# Mask mIoU the test requires on the memorised records.  The target is 0.8;
# this recipe reaches 0.82-0.84 at 300 steps with the test's seed (0.77 with another
# seed at 260 steps): the masks learn only once the text is memorised, ~100 steps
# in.  0.75 leaves a margin for other CPUs' numerics.  See docs/learning.md.
MIN_MASK_MIOU = 0.75


def _fifa(*args: str, cwd: Path) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: fastest here
  proc = subprocess.run([sys.executable, "-m", "fifa_jax.cli", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"fifa {args[0]} failed:\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("memorise")
  data = subset.from_archive(FIXTURE, tmp / "data")
  run = tmp / "run"
  _fifa("train", "--config", str(REPO / "configs" / "overfit.yaml"), "--workdir", str(run),
        "--set", f"data.root={data}", "--set", f"train.steps={STEPS}",
        "--set", "data.buckets=[96,208]", "--set", "train.progress=false", cwd=tmp)
  _fifa("eval", "--checkpoint", str(run), "--data", str(data), "--split", "train",
        "--out", str(tmp / "eval"), "--max-new-tokens", "160", cwd=tmp)
  rows = [json.loads(l) for l in (tmp / "eval" / "predictions.jsonl").read_text().splitlines()]
  metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  return rows, metrics, tmp


def test_fixture_has_every_task():
  import zipfile
  with zipfile.ZipFile(FIXTURE) as z:
    tasks = {n.split("/")[2].split("-train")[0] for n in z.namelist() if n.startswith("qa/")}
  assert tasks == set(tokens.TASKS)


def test_answers_are_reproduced_exactly(memorised):
  rows, _, _ = memorised
  assert len(rows) == 13 and {r["task"] for r in rows} == set(tokens.TASKS)
  exact = [r["prediction"] == r["reference"] for r in rows]
  wrong = [(r["task"], r["prediction"][:120], r["reference"][:120]) for r, ok in zip(rows, exact)
           if not ok]
  assert np.mean(exact) >= 0.9, wrong


def test_every_seg_gets_a_mask_and_masks_match(memorised):
  rows, _, _ = memorised
  art, reg = [], []
  for r in rows:
    if not tokens.task_has_masks(r["task"]):
      continue
    assert r["num_pred_masks"] == r["num_segs"] == tokens.count_segs(r["prediction"]) > 0
    iou = lambda i, u: np.where(np.asarray(u) > 0, np.asarray(i) / np.maximum(u, 1), 1.0).mean()
    art.append(iou(r["mask_inter"], r["mask_union"]))
    reg.append(iou(r["region_inter"], r["region_union"]))
  print(f"memorised records: Regional Artifact Mask mIoU {np.mean(art):.3f}, "
        f"Region Mask mIoU {np.mean(reg):.3f} over {len(art)} records")
  assert np.mean(art) >= MIN_MASK_MIOU and np.mean(reg) >= MIN_MASK_MIOU


def test_det_and_cls_heads_and_answers_are_right(memorised):
  rows, _, _ = memorised
  det_of, cls_of = {}, {}
  for r in rows:
    if r["det_label"] is not None:
      det_of[r["image_id"]] = r["det_label"]
    if r["cls_label"] is not None:
      cls_of[r["image_id"]] = r["cls_label"]
  assert set(det_of.values()) == {0, 1}
  for r in rows:  # the heads read the image alone: right for every record of it
    assert int(np.argmax(r["det_probs"])) == det_of[r["image_id"]], r["record_id"]
    assert int(np.argmax(r["cls_probs"])) == cls_of[r["image_id"]], r["record_id"]
    if r["task"] == "det":
      assert report.parse_det(r["prediction"]) == r["det_label"]
    if r["task"] == "cls":
      assert report.parse_cls(r["prediction"]) == r["cls_label"]


def test_losses_fall_per_part_and_nothing_is_dropped(memorised):
  _, metrics, _ = memorised
  first, last = metrics[0], metrics[-1]
  for part in ("text", "mask_dice", "det", "cls"):
    assert last[f"train/{part}"] < 0.5 * first[f"train/{part}"], part
  assert all(m.get("train/masks_dropped", 0) == 0 for m in metrics)
  per_task = defaultdict(list)
  for m in metrics:
    for k, v in m.items():
      if k.endswith("/text") and k.count("/") == 2:
        per_task[k].append(v)
  assert len(per_task) == len(tokens.TASKS)  # every task's loss is logged
