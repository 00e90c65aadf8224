"""Strict configs (unknown keys name themselves, exit 2), precedence, recipes, launcher dry runs."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fifa_jax import config
from fifa_jax.cli import app

REPO = Path(__file__).resolve().parent.parent
# Training recipes; configs/agent/ holds `fifa agent train`'s, checked in test_agent_train.py.
RECIPES = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "agent" not in p.parts)


def test_unknown_and_misspelt_keys_are_named(tmp_path):
  f = tmp_path / "c.yaml"
  f.write_text("train:\n  stpes: 3\n")
  with pytest.raises(config.ConfigError, match=r"train\.stpes: unknown key \(did you mean 'steps'\?\)"):
    config.load(f)
  with pytest.raises(config.ConfigError, match=r"^optimizer: unknown key"):
    config.load(None, ["optimizer.lr=1"])
  with pytest.raises(config.ConfigError, match=r"model\.llama\.hiden_size: unknown key"):
    config.load(None, ["model.llama.hiden_size=8"])
  with pytest.raises(config.ConfigError, match=r"data\.tasks\.dett: unknown task"):
    config.load(None, ["data.tasks={dett: 1}"])
  with pytest.raises(config.ConfigError, match=r"train\.steps: expected an integer"):
    config.load(None, ["train.steps=ten"])
  with pytest.raises(config.ConfigError, match="not divisible"):
    config.load(None, ["train.batch_size=10", "train.grad_accum=3"])


def test_model_parts_are_typed_overrides_of_the_preset():
  # Each model.<part> overrides its dataclass key by key; the rest stays the preset's.
  c = config.load(None, ["model.preset=cpu", "model.vit.layers=2", "model.decoder.heads=2",
                         "model.lora.rank=4", "model.box.layers=[1,2,2,2]", "model.llama.scan_layers=true"])
  f = config.model_config(c)
  assert (f.vit.layers, f.vit.width, f.decoder.heads, f.box.layers) == (2, 128, 2, (1, 2, 2, 2))
  assert (f.llama.lora.rank, f.llama.lora.alpha, f.llama.scan_layers) == (4, 16.0, True)
  # the older flat spelling still reads; model.lora wins over it
  f = config.model_config(config.load(None, ["model.lora_rank=6", "model.lora.alpha=3"]))
  assert (f.llama.lora.rank, f.llama.lora.alpha) == (6, 3.0)
  for override, message in [
      ("model.vit.widht=64", r"model\.vit\.widht: unknown key \(did you mean 'width'\?\)"),
      ("model.pixel.dim=wide", r"model\.pixel\.dim: expected an integer, got 'wide'"),
      ("model.lora.target_modules=q_proj", r"model\.lora\.target_modules: expected a list"),
      ("model.box.layers=[1,2,99,4]", r"box encoder layers .* exceed the encoder's"),
      ("model.vit.stem=[8,8,8,8,8]", r"model: a stem of 5 stride-2 convolutions does not divide"),
      ("model.llama.lora={rank: 2}", r"model\.llama\.lora: set the adapters under model\.lora")]:
    with pytest.raises(config.ConfigError, match=message):
      config.load(None, [override])


def test_precedence_defaults_includes_file_overrides(tmp_path):
  (tmp_path / "base.yaml").write_text("train: {steps: 5, batch_size: 4}\noptim: {lr: 0.1}\n")
  (tmp_path / "mid.yaml").write_text("include: base.yaml\ntrain: {steps: 6}\n")
  (tmp_path / "top.yaml").write_text("include: [mid.yaml]\noptim: {lr: 0.2}\n")
  c = config.load(tmp_path / "top.yaml", ["optim.lr=0.3", "optim.lr=0.4"])
  assert (c.train.steps, c.train.batch_size, c.optim.lr) == (6, 4, 0.4)
  assert c.optim.warmup_steps == 100  # default
  (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
  with pytest.raises(config.ConfigError, match="include cycle"):
    config.load(tmp_path / "loop.yaml")


def test_an_override_into_a_mapping_sets_one_key():
  # `data.tasks.det=8` reweights one task and keeps the mixture; `data.tasks={...}` replaces it.
  c = config.load(None, ["data.tasks.det=8", "data.tasks.i-loc=0"])
  assert c.data.tasks == {**config.TABLE17_RATIOS, "det": 8.0, "i-loc": 0.0}
  assert config.load(None, ["data.tasks={det: 1, i-loc: 1}"]).data.tasks == {"det": 1.0, "i-loc": 1.0}
  with pytest.raises(config.ConfigError, match=r"data\.tasks\.dett: unknown task"):
    config.load(None, ["data.tasks.dett=1"])


def test_paper_recipe_matches_appendix_b():
  c = config.load(REPO / "configs/paper_multitask.yaml")
  assert (c.train.batch_size, c.train.steps, c.optim.lr, c.optim.warmup_steps) == (40, 12500, 3e-4, 100)
  lora = config.model_config(c).llama.lora
  assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules) == (128, 256.0, 0.05, ("q_proj", "v_proj"))
  assert not c.model.train_embeddings
  assert c.data.tasks == config.TABLE17_RATIOS
  assert (c.loss.text, c.loss.det_cls, c.loss.mask_bce, c.loss.mask_dice) == (1.0, 0.2, 0.5, 2.0)
  s = config.load(REPO / "configs/single/r-age.yaml")
  assert s.data.tasks == {"r-age": 1.0} and (s.train.batch_size, s.train.steps) == (10, 8333)
  assert config.load(REPO / "configs/tpu_v5e_16.yaml").mesh.tensor == 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recipe_loads(path):
  config.load(path)


def test_cli_exit_code_2_names_the_key(tmp_path):
  r = CliRunner().invoke(app, ["train", "--config", str(REPO / "configs/tiny_cpu.yaml"),
                               "--workdir", str(tmp_path), "--set", "train.lr=1"])
  assert r.exit_code == 2
  assert "train.lr: unknown key" in r.output
  r = CliRunner().invoke(app, ["train", "--config", str(REPO / "configs/tiny_cpu.yaml"),
                               "--workdir", str(tmp_path), "--set", "train.steps=7", "--print-config"])
  assert r.exit_code == 0 and "steps: 7" in r.output


def run_launcher(*args):
  r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  return r.stdout


def test_tpu_launcher_dry_run_v5e_16():
  out = run_launcher("launch/tpu.py", "--tpu", "fifa-v5e-16", "--zone", "us-west4-a", "--project", "p",
                     "--config", "configs/tpu_v5e_16.yaml", "--workdir", "gs://bucket/run", "--dry-run")
  (line,) = out.strip().splitlines()
  argv = shlex.split(line)
  assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "fifa-v5e-16", "--zone=us-west4-a"]
  assert "--project=p" in argv and "--worker=all" in argv
  remote = [a for a in argv if a.startswith("--command=")][0][len("--command="):]
  assert remote.startswith("cd ~/fifa-jax && ")
  inner = shlex.split(remote.split("&&", 1)[1])
  assert inner == [".venv/bin/python", "-m", "fifa_jax.cli", "train", "--config", "configs/tpu_v5e_16.yaml",
                   "--workdir", "gs://bucket/run", "--set", "distributed.initialize=true"]


def test_slurm_launcher_dry_run_two_nodes_of_four_gpus():
  out = run_launcher("launch/slurm.py", "--nodes", "2", "--gpus-per-node", "4", "--config",
                     "configs/gpu_4x_h800.yaml", "--workdir", "/shared/run", "--repo-dir", "/shared/fifa",
                     "--set", "train.steps=100", "--dry-run")
  lines = out.splitlines()
  for want in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
               "#SBATCH --signal=TERM@120", "#SBATCH --requeue"):
    assert want in lines
  srun = [line for line in lines if line.startswith("srun ")][0]
  argv = shlex.split(srun)
  assert argv[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"]
  assert argv[4] == ("cd /shared/fifa && .venv/bin/python -m fifa_jax.cli train --config "
                     "configs/gpu_4x_h800.yaml --workdir /shared/run --set distributed.initialize=true "
                     "--set train.steps=100")
  assert lines[-1].startswith("# would run: sbatch")


def test_launchers_setup_installs_the_accelerators_jax():
  tpu = run_launcher("launch/tpu.py", "--tpu", "t", "--zone", "z", "--config", "c.yaml",
                     "--workdir", "gs://b/r", "--setup", "--dry-run").strip().splitlines()
  assert len(tpu) == 2 and "--worker=all" in shlex.split(tpu[0])
  assert shlex.split(tpu[0])[-1] == "--command=cd ~/fifa-jax && git pull --ff-only && make main-env ACCEL=tpu"
  slurm = run_launcher("launch/slurm.py", "--nodes", "2", "--config", "c.yaml", "--workdir", "/w",
                       "--repo-dir", "/shared/fifa", "--setup", "--accel", "cuda13", "--dry-run").splitlines()
  setup = [i for i, line in enumerate(slurm) if "make main-env" in line]
  train = [i for i, line in enumerate(slurm) if "fifa_jax.cli train" in line]
  assert len(setup) == 1 and setup[0] < train[0]
  assert shlex.split(slurm[setup[0]]) == ["srun", "--nodes=1", "--ntasks=1", "bash", "-c",
                                          "cd /shared/fifa && git pull --ff-only && make main-env ACCEL=cuda13"]


def _make(*args):
  return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("accel", ["cuda12", "cuda13", "tpu"])
def test_make_env_accel_installs_jax_extra_at_the_pinned_version(accel):
  pinned = [line.split("==")[1] for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.startswith("jax==")][0]
  r = _make("main-env", f"ACCEL={accel}", f"VENV={REPO}/.no-such-venv")
  assert r.returncode == 0, r.stderr
  assert f'pip install -q "jax[{accel}]=={pinned}"' in r.stdout
  assert "jax[" not in _make("main-env", f"VENV={REPO}/.no-such-venv").stdout  # cpu: no extra


def test_make_env_rejects_an_unknown_accelerator():
  r = _make("env", "ACCEL=rocm")
  assert r.returncode == 2 and "ACCEL=rocm: expected one of cpu cuda12 cuda13 tpu" in r.stderr


def test_pyproject_dependencies_hold_the_tested_pins():
  """`pip install .` asks for what requirements.txt pins (lower bounds it satisfies)."""
  import tomllib
  from packaging.requirements import Requirement
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  pins = {}
  for line in (REPO / "requirements.txt").read_text().splitlines():
    if "==" in line and not line.startswith("#"):
      name, version = line.split("==")
      pins[name.strip().lower().replace("_", "-")] = version.strip()
  extras = project["optional-dependencies"]
  assert {"cuda12", "cuda13", "tpu"} <= set(extras)
  for spec in project["dependencies"] + extras["test"] + extras["torch"] + extras["tfds"]:
    req = Requirement(spec)
    name = req.name.lower().replace("_", "-")
    if name in pins:
      assert req.specifier.contains(pins[name]), f"{spec} excludes the tested {name}=={pins[name]}"
  required = {Requirement(s).name.lower() for s in project["dependencies"]}
  for module_dep in ("jax", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "typer", "fastapi"):
    assert module_dep in required
