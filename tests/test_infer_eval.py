"""Inference and evaluation end to end on a tiny checkpoint in the training format:
the loader returns the saved weights, `fifa infer` writes JSON + overlay for every
task, `fifa eval` writes the Table 3 report, and mask scores from stored counts
equal metrics.mask_scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from fifa_jax import tokens
from fifa_jax.data import records
from fifa_jax.eval import bench, metrics
from fifa_jax.infer import load as load_lib
from fifa_jax.infer import predict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_loader_returns_the_saved_weights(workdir):
  work, _, state = workdir
  for path in (work, work / "checkpoints" / "3"):
    loaded = load_lib.load(path, layout="training")
    assert loaded.step == 3
    got = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
    want = {**state["params"]}
    leaves = dict(jax.tree_util.tree_leaves_with_path(got))
    for k, v in jax.tree_util.tree_leaves_with_path(state["params"]):
      np.testing.assert_array_equal(np.asarray(leaves[k]), np.asarray(v))
    assert want  # non-empty
  # By default the loader hands out the decoding layout: no adapters left to run.
  assert load_lib.load(work).model.llm.config.lora is None


def test_loader_errors_name_the_path(tmp_path):
  with pytest.raises(load_lib.CheckpointError, match="does not exist"):
    load_lib.load(tmp_path / "missing")
  with pytest.raises(load_lib.CheckpointError, match="is not a checkpoint"):
    load_lib.load(tmp_path)


def test_queries_are_validated():
  rgb = np.zeros((40, 50, 3), np.uint8)
  with pytest.raises(predict.QueryError, match="nearest FICT names: 'nose'"):
    predict.Query(rgb, "r-loc", region="noze").validate()
  with pytest.raises(predict.QueryError, match="does not lie inside the 50x40 image"):
    predict.Query(rgb, "b-age", box=(0, 0, 60, 10)).validate()
  with pytest.raises(predict.QueryError, match="needs --box"):
    predict.Query(rgb, "b-toe").validate()
  with pytest.raises(predict.QueryError, match="unknown task"):
    predict.Query(rgb, "seg").validate()


@pytest.mark.slow
def test_every_task_is_answered_with_json_and_overlay(workdir, tmp_path):
  work, data, _ = workdir
  from fifa_jax.data.pipeline import decode_image
  from fifa_jax.infer import run as infer_run
  from fifa_jax.infer.overlay import save_png

  store = records.MaskStore(data / "masks")
  rgb = decode_image(store[store.ids()[0]].image)
  h, w = rgb.shape[:2]
  loaded = load_lib.load(work)
  queries = [predict.Query(rgb, t, region="nose" if tokens.task_level(t) == "region" else None,
                           box=(2, 3, w - 5, h - 4) if tokens.task_level(t) == "box" else None)
             for t in tokens.TASKS]
  preds = predict.predict(loaded, queries, max_new_tokens=6)  # one batch, one compile
  for q, p in zip(queries, preds):
    ans = json.loads(json.dumps(infer_run.answer_json(q, p, loaded.source, "face.png")))
    assert ans["task"] == q.task and ans["size"] == [h, w] and ans["prompt"].startswith("<image>")
    assert abs(sum(ans["det_probs"].values()) - 1) < 1e-5 and len(ans["cls_probs"]) == 5
    assert len(p.artifact_masks) == len(p.phrases) == len(ans["grounded"])
    for g, m in zip(ans["grounded"], p.artifact_masks):  # RLE decodes to the image-size mask
      back = records.rle_decode({"size": g["mask_rle"]["size"],
                                 "counts": np.asarray(g["mask_rle"]["counts"], "<u4").tobytes()})
      np.testing.assert_array_equal(back, m)
  # The command itself, once: prints the answer, writes answer.json and overlay.png.
  img = tmp_path / "face.png"
  save_png(img, rgb)
  r = subprocess.run([sys.executable, "-m", "fifa_jax.cli", "infer", "--checkpoint", str(work),
                      "--image", str(img), "--task", "b-age", "--box", f"2,3,{w - 5},{h - 4}",
                      "--out", str(tmp_path / "o"), "--max-new-tokens", "6"], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads((tmp_path / "o" / "answer.json").read_text())["task"] == "b-age"
  assert (tmp_path / "o" / "overlay.png").stat().st_size > 0


@pytest.mark.slow
def test_eval_writes_the_table3_report(workdir, tmp_path):
  work, data, _ = workdir
  loaded = load_lib.load(work)
  out = tmp_path / "eval"
  tasks = ("det", "cls", "r-loc", "b-age")  # every scorer; all 11 run in `make demo`
  result = bench.evaluate(loaded, data, "test", out, tasks=tasks, max_per_task=2, batch_size=8,
                          max_new_tokens=6, progress=False)
  rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
  assert {r["task"] for r in rows} == set(tasks)
  md = (out / "report.md").read_text()
  for task_name, column in __import__("fifa_jax.eval.report", fromlist=["TABLE3"]).TABLE3:
    assert f"{task_name} {column}" in md
  per_task = json.loads((out / "report.json").read_text())["per_task"]
  assert set(per_task) == set(tasks)
  assert 0 <= per_task["det"]["accuracy"] <= 1 and "METEOR" in per_task["b-age"]
  assert "mIoU" in per_task["r-loc"] and "METEOR" not in per_task["r-loc"]
  assert 0 <= per_task["r-loc"]["matched_mIoU"] <= 1 and "matched mIoU" in md
  for r in rows:
    if tokens.task_has_masks(r["task"]):
      assert len(r["mask_inter"]) == len(r["mask_union"]) >= 1
  assert list((out / "overlays").glob("*.png"))
  assert result["metrics"]["det"]["num_samples"] == len([r for r in rows if r["task"] == "det"])


def test_mask_scores_from_counts_equal_metrics():
  rng = np.random.default_rng(0)
  preds = [rng.random((n, 8, 8)) < 0.5 for n in (1, 3)]
  trues = [rng.random((n, 8, 8)) < 0.5 for n in (1, 3)]
  trues[1][2] = False
  preds[1][2] = False
  rows = [{"mask_inter": (p & t).reshape(len(t), -1).sum(1).tolist(),
           "mask_union": (p | t).reshape(len(t), -1).sum(1).tolist()} for p, t in zip(preds, trues)]
  got = bench._mask_scores_from_counts(rows)
  want = metrics.mask_scores(preds, trues)
  for k in ("mIoU", "gIoU", "cIoU"):
    assert got[k] == pytest.approx(want[k])


def test_max_per_task_spreads_over_the_split():
  """Shards list a split's reals before its fakes: a subset must span both."""
  items = [("real", i) for i in range(15)] + [("fake", i) for i in range(22)]
  picked = bench.spread(items, 16)
  assert len(picked) == len(set(picked)) == 16
  assert picked[0] == items[0] and picked[-1] == items[-1] and picked == sorted(picked, key=items.index)
  assert {c for c, _ in picked} == {"real", "fake"}
  assert bench.spread(items, None) == items and bench.spread(items[:3], 16) == items[:3]


def test_answer_limit_covers_the_longest_reference(workdir):
  """`fifa eval`'s default answer limit comes from the references evaluated."""
  work, data, _ = workdir
  tok = load_lib.load(work).tokenizer
  recs = bench.find_records(data, "test", "b-age")[:3]
  longest = max(len(tok(r.answer, add_special_tokens=False)["input_ids"]) for r in recs)
  limit = bench.answer_limit(tok, recs)
  assert limit % 32 == 0 and longest + 1 + 16 <= limit < longest + 1 + 16 + 32
