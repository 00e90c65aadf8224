"""gs:// paths (fifa_jax/paths.py), with a local folder standing in for the bucket: fsspec's
"gs" protocol is registered to a LocalFileSystem rooted in a temporary folder, which is
what etils and fifa-jax reach through fsspec when gcsfs is installed."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import fsspec
import jax
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from typer.testing import CliRunner

from fifa_jax import config, paths
from fifa_jax.checkpoint import read_meta
from fifa_jax.cli import app


class FakeGCS(LocalFileSystem):
  """gs://bucket/key -> <root>/bucket/key on the local disk; records the order of uploads."""
  protocol = ("gs", "gcs")
  root = "/nonexistent"
  puts: list[str] = []

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        return str(Path(cls.root) / path[len(prefix):].lstrip("/")).rstrip("/")
    return super()._strip_protocol(path)

  def put_file(self, lpath, rpath, *args, **kwargs):
    FakeGCS.puts.append(str(rpath))
    return super().put_file(lpath, rpath, *args, **kwargs)


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  bucket = tmp_path / "gcs"
  bucket.mkdir()
  monkeypatch.setattr(FakeGCS, "root", str(bucket))
  monkeypatch.setattr(FakeGCS, "puts", [])
  FakeGCS.clear_instance_cache()
  fsspec.register_implementation("gs", FakeGCS, clobber=True)
  monkeypatch.setenv("FIFA_JAX_CACHE", str(tmp_path / "cache"))
  return bucket


def test_stage_in_copies_once_and_names_a_missing_url(gcs):
  (gcs / "b" / "data" / "qa").mkdir(parents=True)
  (gcs / "b" / "data" / "qa" / "x.txt").write_text("one")
  local = paths.stage_in("gs://b/data", "data.root")
  assert (local / "qa" / "x.txt").read_text() == "one" and not str(local).startswith("gs:")
  (gcs / "b" / "data" / "qa" / "x.txt").write_text("two")
  assert paths.stage_in("gs://b/data/") == local  # the whole copy is reused
  assert (local / "qa" / "x.txt").read_text() == "one"
  assert paths.stage_in("gs://b/data/qa/x.txt").read_text() == "two"  # a file on its own
  with pytest.raises(paths.PathError, match=r"model.init_from: gs://b/nothing does not exist"):
    paths.stage_in("gs://b/nothing", "model.init_from")
  assert paths.stage_in("local/dir") == Path("local/dir")


def test_stage_out_uploads_the_marker_last(gcs, tmp_path):
  folder = tmp_path / "model"
  (folder / "state").mkdir(parents=True)
  for name in ("fifa_jax.json", "a.bin", "state/z.bin"):
    (folder / name).write_text(name)
  paths.stage_out(folder, "gs://b/model", last=("fifa_jax.json",))
  assert FakeGCS.puts[-1].endswith("fifa_jax.json") and len(FakeGCS.puts) == 3
  assert (gcs / "b" / "model" / "state" / "z.bin").read_text() == "state/z.bin"
  assert paths.is_nonempty("gs://b/model") and not paths.is_nonempty("gs://b/empty")


def test_eval_and_infer_load_a_checkpoint_from_a_url(gcs, workdir):
  from fifa_jax.infer import load as load_lib
  run, _, state = workdir
  paths.stage_out(run, "gs://b/run")
  loaded = load_lib.load("gs://b/run", layout="training")
  want = jax.tree.leaves(state["params"]["vit"])[0]
  got = jax.tree.leaves(jax.tree.map(np.asarray, loaded.model.vit))[0]
  assert got.shape == want.shape
  ours = load_lib.load(run, layout="training")
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, ours.model.vit)),
                  jax.tree.leaves(jax.tree.map(np.asarray, loaded.model.vit))):
    np.testing.assert_array_equal(a, b)


def test_training_inputs_given_as_urls_are_staged(gcs, workdir):
  from fifa_jax.train import loop
  _, data, _ = workdir
  paths.stage_out(data, "gs://b/toy")
  cfg = config.load(Path(__file__).resolve().parent.parent / "configs" / "tiny_cpu.yaml",
                    ["data.root=gs://b/toy", "model.init_from=gs://b/init"])
  assert cfg.model.init_from == "gs://b/init"  # kept as written, not read as a local path
  cfg.model.init_from = None
  loop.stage_inputs(cfg)
  assert not paths.is_url(cfg.data.root)
  assert sorted(p.name for p in Path(cfg.data.root).iterdir()) == sorted(p.name for p in Path(data).iterdir())
  # The shards and the mask store apart from the data root, each in its own bucket.
  paths.stage_out(Path(data) / "masks", "gs://store/masks")
  paths.stage_out(Path(data) / "qa", "gs://shards/qa")
  cfg = config.load(Path(__file__).resolve().parent.parent / "configs" / "tiny_cpu.yaml",
                    [f"data.root={data}", "data.masks=gs://store/masks",
                     "data.qa_glob=gs://shards/qa/{split}/{task}-*.array_record"])
  loop.stage_inputs(cfg)
  assert (Path(cfg.data.masks) / "index.json").is_file()
  assert cfg.data.qa_glob.endswith("/qa/{split}/{task}-*.array_record") and not paths.is_url(cfg.data.qa_glob)
  local = sorted(Path(p).name for p in glob.glob(cfg.data.qa_glob.format(split="test", task="*")))
  assert local and local == sorted(p.name for p in (Path(data) / "qa" / "test").iterdir())


def test_convert_reads_and_writes_urls(gcs, tmp_path):
  from test_agent_train import tiny_llava
  _, folder = tiny_llava(tmp_path, "legacy")
  paths.stage_out(folder, "gs://b/hf")
  cli = CliRunner()
  r = cli.invoke(app, ["convert", "llava", "gs://b/hf", "gs://b/policy", "--quiet"])
  assert r.exit_code == 0, r.output
  assert FakeGCS.puts[-1].endswith("fifa_jax.json")  # complete before it is marked complete
  meta = read_meta(paths.stage_in("gs://b/policy"))
  assert meta["kind"] == "llava" and json.loads(json.dumps(meta))["config"]["vision"]["width"] == 32
  r = cli.invoke(app, ["convert", "llava", "gs://b/hf", "gs://b/policy", "--quiet"])
  assert r.exit_code == 2 and "gs://b/policy exists and is not empty" in r.output


@pytest.mark.slow  # an evaluation run
def test_fifa_eval_reads_and_writes_urls(gcs, workdir):
  run, data, _ = workdir
  paths.stage_out(run, "gs://b/run")
  paths.stage_out(data, "gs://b/toy")
  r = CliRunner().invoke(app, ["eval", "--checkpoint", "gs://b/run", "--data", "gs://b/toy",
                               "--out", "gs://b/eval", "--tasks", "det", "--max-per-task", "2",
                               "--max-new-tokens", "8"])
  assert r.exit_code == 0, r.output
  assert FakeGCS.puts[-1].endswith("report.json")  # the report is the eval's completion mark
  report = json.loads((gcs / "b" / "eval" / "report.json").read_text())
  assert report and (gcs / "b" / "eval" / "report.md").exists()


@pytest.mark.slow  # two generations
def test_fifa_infer_reads_images_and_writes_answers_at_urls(gcs, workdir, tmp_path):
  import cv2
  run, _, _ = workdir
  paths.stage_out(run, "gs://b/run")
  faces = tmp_path / "faces"
  faces.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.png"):
    cv2.imwrite(str(faces / name), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
  (faces / "notes.txt").write_text("not a face")
  paths.stage_out(faces, "gs://b/faces")
  cli = CliRunner()
  common = ["--checkpoint", "gs://b/run", "--task", "det", "--max-new-tokens", "4"]
  r = cli.invoke(app, ["infer", "--image", "gs://b/faces/a.png", "--out", "gs://b/one", *common])
  assert r.exit_code == 0, r.output
  assert json.loads((gcs / "b" / "one" / "answer.json").read_text())["task"] == "det"
  assert FakeGCS.puts[-1].endswith("answer.json")  # the answer is the run's completion mark
  r = cli.invoke(app, ["infer", "--image", "gs://b/faces/*.png", "--out", "gs://b/many", *common])
  assert r.exit_code == 0, r.output
  lines = (gcs / "b" / "many" / "answers.jsonl").read_text().splitlines()
  assert sorted(Path(json.loads(l)["image"]).name for l in lines) == ["a.png", "b.png"]
  r = cli.invoke(app, ["infer", "--image", "gs://b/nowhere.png", "--out", "gs://b/x", *common])
  assert r.exit_code == 2 and "--image: gs://b/nowhere.png does not exist" in r.output


def test_metrics_follow_a_gs_workdir_while_the_run_goes(gcs, tmp_path, monkeypatch):
  """The metrics folder is copied up during the run (throttled), and a run resumed on
  another machine appends to the bucket's metrics.jsonl rather than replacing it."""
  from fifa_jax.train import metrics as metrics_lib
  clock = [0.0]
  monkeypatch.setattr(metrics_lib.time, "monotonic", lambda: clock[0])
  first = metrics_lib.MetricsWriter(tmp_path / "host1", tensorboard=False, mirror="gs://b/run",
                                    mirror_every_s=60)
  first.write(1, {"train/loss": 2.0})
  assert not (gcs / "b" / "run" / "metrics.jsonl").exists()  # not yet: at most once a minute
  clock[0] = 61.0
  first.write(2, {"train/loss": 1.5})
  steps = lambda: [json.loads(l)["step"] for l in (gcs / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
  assert steps() == [1, 2]  # live, before the run ends
  first.close()
  resumed = metrics_lib.MetricsWriter(tmp_path / "host2", tensorboard=False, mirror="gs://b/run")
  resumed.write(3, {"train/loss": 1.0})
  resumed.close()
  assert steps() == [1, 2, 3]
