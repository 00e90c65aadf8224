"""`fifa data build` / stats / show on small fabricated annotations (no MediaPipe):
all 11 tasks in every split, [SEG] = mask count, resume, failures logged, the LLM
explainer against a loopback server (retries, cache, rejected summaries)."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest

from data_prep import artifacts, bage, regions, store
from fifa_jax import fict, tokens
from llm_server import LoopbackLLM
from data_prep import build as B
from fifa_jax.data import records as R
from fifa_jax.data import show as S
from fifa_jax.data import stats as ST

H = W = 160


def _atomic_grid() -> np.ndarray:
  """112 atomic masks tiling the picture (8 x 14 cells of about 20 x 11 px)."""
  masks = np.zeros((fict.NUM_ATOMIC, H, W), bool)
  k = 0
  for r in np.array_split(np.arange(H), 8):
    for c in np.array_split(np.arange(W), 14):
      masks[k][np.ix_(r, c)] = True
      k += 1
  return masks


def _annotation(atomic, art, key):
  d = {"format": np.array(store.FORMAT), "height": np.array(H), "width": np.array(W),
       "atomic_bits": np.packbits(atomic, axis=-1), "parsing": np.zeros((H, W), np.uint8),
       "landmarks": np.zeros((478, 3), np.float32),
       "parent_boxes": artifacts.parent_boxes(regions.all_from_atomic(atomic))}
  meta = {"key": key, "parser": "test-grid", "flags": [], "n_faces": 1, "cut_fraction": 0.0}
  if art is not None:
    s2 = artifacts.step2_from_atomic(atomic, art)
    d.update(s2, artifact_bits=np.packbits(art, axis=-1))
    ex = s2["artifact_existing"][[fict.NAMES.index(a) for a in fict.ATOMIC]]
    d.update(bage.bage_boxes(list(atomic), art, ex, bage.BageRule(), key))
    meta["artifact_source"] = "test"
  d["meta"] = np.array(json.dumps(meta))
  return d


def make_source(root, n_real=(2, 1, 1), n_fake=(3, 2, 2), annotate_missing=()):
  """SRC (images + manifest) and ANN (annotator .npz) folders like synth + prep batch make."""
  src, ann = root / "src", root / "ann"
  atomic = _atomic_grid()
  rng = np.random.default_rng(0)
  items = []
  for kind, counts in (("real", n_real), ("fake", n_fake)):
    for split, n in zip(R.SPLITS, counts):
      for i in range(n):
        rel = f"{kind}/{split}/{i:03d}.png"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / rel), rng.integers(0, 255, (H, W, 3), np.uint8))
        art = None
        if kind == "fake":
          art = np.zeros((H, W), bool)
          r0, c0 = 20 * (1 + i % 3), 11 * (i % 6)
          art[r0:r0 + 60, c0:c0 + 66] = True  # about 3 x 6 atomic cells
        image_id = f"{kind}-{split}-{i}"
        if image_id not in annotate_missing:
          store.save(ann / f"{kind}/{split}/{i:03d}.npz", _annotation(atomic, art, rel))
        items.append({"image_id": image_id, "image": rel, "split": split, "label": kind,
                      "technique": "synthetic" if kind == "fake" else "real",
                      "source": "synthetic" if kind == "fake" else "grid"})
  (src / "manifest.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
  return src, ann


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("build")
  src, ann = make_source(root)
  summary = B.build(src, ann, root / "out", images_per_unit=2, progress=False)
  return root, src, ann, summary


def test_every_task_in_every_split_and_seg_equals_masks(built):
  root, _, _, summary = built
  per_split, sources = ST.count(root / "out")
  for split in R.SPLITS:
    for task in tokens.TASKS:
      assert per_split[split][task] > 0, (split, task)
      assert per_split[split][task] == summary["counts"][split][task]
  res = ST.check_masks(root / "out")
  assert res["checked"] > 100 and res["bad"] == []
  assert summary["images_in_store"] == summary["images"] == 11 and summary["failures_this_run"] == 0


def test_records_follow_the_task_rules(built):
  root = built[0]
  store_ = R.MaskStore(root / "out" / "masks")
  for rec in R.iter_records(root / "out"):
    kind, level = tokens.task_kind(rec.task), tokens.task_level(rec.task)
    if kind in ("det", "cls"):
      fake = rec.image_id.startswith("fake")
      assert rec.det_label in (None, int(fake))
      assert (rec.cls_label == R.cls_label_of("synthetic" if fake else "real")) or rec.task == "det"
    else:
      assert rec.image_id.startswith("fake")
    if kind in ("toe", "age"):
      assert rec.explainer == "offline-template"
    if kind == "toe":
      assert tokens.SEG not in rec.answer
    if level == "region":
      assert not fict.is_atomic(rec.region) and rec.region != fict.ROOT
    if level == "box":
      x1, y1, x2, y2 = rec.box
      assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    if kind in ("loc", "age") and level != "image":
      # Each [SEG] concept lies under the queried region, or inside the queried box.
      entry = store_[rec.image_id]
      for c in rec.seg_concepts:
        if level == "region":
          assert c in fict.atomic_descendants(rec.region)
        else:
          m = entry.artifact_region_mask(c)
          x1, y1, x2, y2 = (int(v) for v in rec.box)
          assert m[y1:y2, x1:x2].sum() >= 0.5 * m.sum()
  entry = store_["real-train-0"]
  assert entry.artifact is None and entry.meta["split"] == "train" and entry.meta["regions"] == "annotator"
  assert store_["fake-dev-0"].meta["explainer"] == "offline-template"


def test_resume_skips_done_units_and_rebuilds_the_rest(built, tmp_path):
  root, src, ann, first = built
  out = tmp_path / "out"
  shutil.copytree(root / "out", out)
  before = sorted((p.name, p.read_bytes()) for p in (out / "qa").rglob("*.array_record"))
  # A build killed while writing unit train-00001: its marker and shards are gone.
  (out / "units" / "train-00001.json").unlink()
  for p in (out / "qa" / "train").glob("*-train-00001.array_record"):
    p.unlink()
  s = B.build(src, ann, out, images_per_unit=2, progress=False)
  assert s["units_done_before"] == s["units"] - 1
  after = sorted((p.name, p.read_bytes()) for p in (out / "qa").rglob("*.array_record"))
  assert after == before and s["counts"] == first["counts"]
  # Nothing left to do: a rerun touches no unit.
  assert B.build(src, ann, out, images_per_unit=2, progress=False)["units_done_before"] == s["units"]


def test_another_configuration_is_refused(built):
  root, src, ann, _ = built
  with pytest.raises(B.BuildError, match="another manifest or configuration"):
    B.build(src, ann, root / "out", images_per_unit=3, progress=False)


def test_a_missing_annotation_is_logged_and_the_rest_goes_on(tmp_path):
  src, ann = make_source(tmp_path, annotate_missing=("fake-train-1",))
  s = B.build(src, ann, tmp_path / "out", progress=False)
  assert s["failures_this_run"] == 1 and s["images_in_store"] == s["images"] - 1
  log = (tmp_path / "out" / "failures.tsv").read_text()
  assert "fake-train-1\t" in log and "not annotated" in log


def test_manifest_errors_name_the_line(tmp_path):
  (tmp_path / "manifest.jsonl").write_text(json.dumps({"image_id": "a", "image": "a.png", "split": "val",
                                                       "label": "real", "technique": "real"}) + "\n")
  with pytest.raises(B.BuildError, match=r"manifest.jsonl:1: split 'val'"):
    B.read_manifest(tmp_path)


def test_stats_table_and_show(built, tmp_path):
  root = built[0]
  per_split, sources = ST.count(root / "out")
  text = ST.render(ST.table(per_split, sources))
  assert text.splitlines()[0].split() == ["Task", "Data", "Source", "Training", "Dev.", "Test"]
  assert "B-AGE" in text and text.splitlines()[-1].startswith("Total")
  shard = R.qa_shards(root / "out", "dev", "b-age")[0]
  rec = S.show(shard, 0, tmp_path / "rec.png")
  pic = cv2.imread(str(tmp_path / "rec.png"))
  assert rec.task == "b-age" and pic is not None and pic.shape[1] > S.PANEL
  with pytest.raises(IndexError, match="out of range"):
    S.show(shard, 10**6, tmp_path / "x.png")


# ---------------------------------------------------------------------------
# The LLM explainer against a loopback OpenAI-compatible server


class _LLMServer(LoopbackLLM):
  """Answers Step 3 with one line per concept and Step 4 with a tagged summary; every
  distinct prompt fails once (HTTP 500) first; summaries naming `poison` lose a tag."""

  def __init__(self, poison: str):
    self.seen: dict[str, int] = {}

    def respond(body):
      key = json.dumps(body["messages"])
      self.seen[key] = self.seen.get(key, 0) + 1
      if self.seen[key] == 1:
        return 500, ""
      content = body["messages"][0]["content"]
      if isinstance(content, list):  # Step 3: text + two images
        text = content[0]["text"]
        concepts = text.split("MUST be discussed:\n\n")[1].split("\n\nPlease analyze")[0].split("\n")
        return 200, "\n".join(f"{c}: shows a blending seam." for c in concepts)
      # Step 4: "Index Numbers" of the final input
      lines = content.rsplit("Index Numbers", 1)[1].strip().splitlines()
      idx = [re.match(r"\s*(.+): (\d+)$", ln).groups() for ln in lines]
      parts = [f"The {c}" if c == poison else f"The <{i}> {c} </{i}> looks smeared." for c, i in idx]
      return 200, "Summary:\n " + " ".join(parts)

    super().__init__(respond)


def test_llm_explainer_retries_caches_and_rejects_bad_tags(tmp_path, monkeypatch):
  src, ann = make_source(tmp_path, n_real=(1, 1, 1), n_fake=(2, 1, 1))
  # A concept that some parents' summaries contain: those summaries come back untagged.
  poison = fict.ATOMIC[14]  # row 1, column 0 of the grid: inside fake 0's artifact block
  server = _LLMServer(poison)
  monkeypatch.setenv("FIFA_LLM_BASE_URL", server.url)
  monkeypatch.setenv("FIFA_LLM_MODEL", "test-model")
  monkeypatch.setenv("FIFA_LLM_API_KEY", "sk-test")
  try:
    out = tmp_path / "out"
    s = B.build(src, ann, out, explainer="llm", images_per_unit=2, progress=False)
    assert s["explainer"] == "llm:test-model"
    assert "retries" in s["explainer_usage"] and "0 failed" in s["explainer_usage"]
    calls = len(server.calls)
    assert calls > 0 and all(v == 2 for v in server.seen.values())  # each failed once, then succeeded
    log = (out / "failures.tsv").read_text()
    assert "summary rejected" in log and f"{[poison]!r}) are not tagged" in log  # the reason, per summary
    recs = list(R.iter_records(out))
    ages = [r for r in recs if tokens.task_kind(r.task) == "age"]
    assert ages and all(r.explainer == "llm:test-model" for r in ages)
    assert all(poison not in r.seg_concepts for r in ages)  # those with it were rejected
    assert all(tokens.count_segs(r.answer) == len(r.seg_concepts) for r in ages)
    # Resume after an interruption: units redone, every answer from the cache.
    for p in (out / "units").glob("*.json"):
      p.unlink()
    s2 = B.build(src, ann, out, explainer="llm", images_per_unit=2, progress=False)
    assert len(server.calls) == calls and s2["counts"] == s["counts"]
    assert "0 requests" in s2["explainer_usage"]
  finally:
    server.close()
