"""`model.init_from`: a run starts from a fifa-jax model folder (e.g. assembled from FaRL +
Vicuna + SAM), restored straight into the run's shardings; a folder that does not fit is
refused naming each weight."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from fifa_jax import config as config_lib, mesh as mesh_lib
from fifa_jax.convert import fifa
from fifa_jax.convert.stream import ConversionError
from fifa_jax.models.fifa import FiFaMLLM
from fifa_jax.models.lora import LoraConfig
from fifa_jax.train import state as state_lib

from test_train_resume import REPO, flat

CONFIG = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def run():
  cfg = config_lib.load(CONFIG, [])
  fcfg = config_lib.model_config(cfg)
  mesh = mesh_lib.make_mesh(2, 2, 2)
  return cfg, fcfg, state_lib.make_setup(cfg, fcfg, mesh)


@pytest.mark.slow
def test_initial_weights_replace_the_fresh_ones_in_the_run_shardings(run, tmp_path):
  cfg, fcfg, setup = run
  source = FiFaMLLM(fcfg, rngs=nnx.Rngs(7))  # not the run's seed (0)
  fifa.save(source, tmp_path / "init")
  fresh = state_lib.init_state(setup, 0)
  state = state_lib.load_initial_weights(setup, fresh, str(tmp_path / "init"))

  want = flat(nnx.to_pure_dict(nnx.state(source, nnx.Param)))
  got = {**flat(state["params"]), **flat(state["frozen"])}
  assert got.keys() == want.keys() and len(got) > 100
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert any(not np.array_equal(v, want[k]) for k, v in
             {**flat(fresh["params"]), **flat(fresh["frozen"])}.items())  # seed 0 differs
  for part in ("params", "frozen"):  # placed as the run places them
    jax.tree.map(lambda a, s: None if a.sharding.is_equivalent_to(s, a.ndim) else
                 pytest.fail(f"{part}: {a.sharding} != {s}"), state[part], setup.shardings[part])
  assert state["opt_state"] is fresh["opt_state"] and int(state["step"]) == 0


def test_a_folder_that_does_not_fit_is_refused_naming_the_weights(run, tmp_path):
  _, fcfg, setup = run
  other = dataclasses.replace(fcfg, llama=dataclasses.replace(
      fcfg.llama, lora=LoraConfig(rank=8, alpha=16.0, dropout=0.0)))
  fifa.save(FiFaMLLM(other, rngs=nnx.Rngs(0)), tmp_path / "rank8")
  with pytest.raises(ConversionError, match=r"lora_a: folder \[64, 8\], run \[64, 4\]"):
    state_lib.load_initial_weights(setup, state_lib.init_state(setup, 0), str(tmp_path / "rank8"))


def test_train_refuses_an_init_from_that_is_not_a_model_folder(tmp_path):
  r = subprocess.run([sys.executable, "-m", "fifa_jax.cli", "train", "--config", str(CONFIG),
                      "--workdir", str(tmp_path / "w"), "--set", f"model.init_from={tmp_path}",
                      "--print-config"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert "model.init_from" in r.stderr and "not a fifa-jax model folder" in r.stderr


@pytest.mark.slow
def test_convert_assembles_the_model_of_a_training_yaml(tmp_path):
  """`fifa convert model --config <yaml> --set ...` builds what `fifa train` with the same
  YAML and overrides builds: the folder then fits `model.init_from`."""
  from fifa_jax.convert import checkpoint as folder, llama as llama_conv
  from fifa_jax.models.llama import LlamaForCausalLM

  cfg = config_lib.load(CONFIG, ["model.lora_rank=8"])
  fcfg = config_lib.model_config(cfg)
  vicuna = dataclasses.replace(fcfg.llama, vocab_size=fcfg.llama.vocab_size - 5, lora=None)
  llama_conv.save_hf(LlamaForCausalLM(vicuna, rngs=nnx.Rngs(1)), tmp_path / "vicuna")
  r = subprocess.run([sys.executable, "-m", "fifa_jax.cli", "convert", "model", "--config", str(CONFIG),
                      "--set", "model.lora_rank=8", "--llama", str(tmp_path / "vicuna"),
                      "-o", str(tmp_path / "init"), "-q"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "grew the LLM vocabulary" in r.stderr and "orbax" not in r.stderr.lower()
  saved = folder.config_from_dict(type(fcfg), folder.read_meta(tmp_path / "init")["config"])
  assert saved == fcfg
  bad = subprocess.run([sys.executable, "-m", "fifa_jax.cli", "convert", "model", "--config", "tiny",
                        "--set", "model.lora_rank=8", "--llama", str(tmp_path / "vicuna"),
                        "-o", str(tmp_path / "bad")], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "--set applies to a training YAML" in bad.stderr
