"""`fifa convert ...`: round trips through the command line, clear errors, exit status 2."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from fifa_jax.cli import app
from test_llama import hf_model

runner = CliRunner()


def fifa(*args):
  return runner.invoke(app, ["convert", *map(str, args)])


def tensors(path):
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    with safe_open(f, "pt") as st:
      out.update({k: st.get_tensor(k) for k in st.keys()})
  return out


def test_llama_round_trip_and_peft_errors(tmp_path):
  hf_model("gqa").save_pretrained(tmp_path / "hf")
  r = fifa("llama", tmp_path / "hf", tmp_path / "jax")
  assert r.exit_code == 0, r.output
  assert "wrote" in r.output and (tmp_path / "jax" / "fifa_jax.json").exists()
  r = fifa("llama", tmp_path / "jax", tmp_path / "back", "--quiet")
  assert r.exit_code == 0, r.output
  a, b = tensors(tmp_path / "hf"), tensors(tmp_path / "back")
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
  r = fifa("peft", tmp_path / "jax", tmp_path / "adapter")
  assert r.exit_code == 2 and "no LoRA adapters" in r.output
  r = fifa("llama", tmp_path / "hf", tmp_path / "jax")
  assert r.exit_code == 2 and "not empty" in r.output


def test_bad_input_names_the_key_and_exits_2(tmp_path):
  hf = hf_model("mha")
  hf.save_pretrained(tmp_path / "hf")
  sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
  sd["model.layers.0.mlp.down_proj.weight"] = torch.zeros(3, 3)
  save_file(sd, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
  r = fifa("llama", tmp_path / "hf", tmp_path / "out")
  assert r.exit_code == 2
  assert "mis-shaped key 'model.layers.0.mlp.down_proj.weight'" in r.output
  r = fifa("farl", tmp_path / "missing.pth", tmp_path / "out2")
  assert r.exit_code == 2 and "does not exist" in r.output
  r = fifa("model", "--out", tmp_path / "out3")
  assert r.exit_code == 2 and "give SRC" in r.output


@pytest.mark.slow
def test_model_tiny_round_trip(tmp_path):
  from flax import nnx

  from fifa_jax.convert import fifa as fifa_conv
  from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM

  fifa_conv.save_pth(FiFaMLLM(FiFaConfig.tiny(), rngs=nnx.Rngs(0)), tmp_path / "pt")
  r = fifa("model", tmp_path / "pt", "--out", tmp_path / "jax", "-q")
  assert r.exit_code == 0, r.output
  r = fifa("model", tmp_path / "jax", "--out", tmp_path / "pt2", "-q")
  assert r.exit_code == 0, r.output
  a, b = tensors(tmp_path / "pt"), tensors(tmp_path / "pt2")
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
