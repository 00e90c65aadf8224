"""PEFT adapters from fifa-jax LoRA: peft loads them and gives fifa-jax's logits."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from fifa_jax.convert import llama as conv
from fifa_jax.convert import peft as peft_conv
from fifa_jax.convert.stream import ConversionError
from fifa_jax.models.lora import LoraConfig, lora_layers
from test_llama import hf_model

peft = pytest.importorskip("peft")

TOL = 1e-4
IDS = np.random.default_rng(0).integers(0, 97, (2, 9)).astype(np.int32)
LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.05, target_modules=("q_proj", "v_proj", "down_proj"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """An HF base folder and a fifa-jax model on it whose adapters are non-zero."""
  base = tmp_path_factory.mktemp("base")
  hf_model("gqa").save_pretrained(base)
  _, model = conv.load_hf(base, lora=LORA)
  for i, (_, layer) in enumerate(lora_layers(model)):
    b = layer.lora_b[...]
    layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(i), b.shape, b.dtype)
  return base, model


def torch_logits(model) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(IDS, dtype=torch.long)).logits.numpy()


def test_peft_adapter_gives_fifa_jax_logits(trained, tmp_path):
  base, model = trained
  ours = np.asarray(model(jnp.asarray(IDS)))
  peft_conv.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(base))
  cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (4, 8.0, ["down_proj", "q_proj", "v_proj"])
  hf = transformers.LlamaForCausalLM.from_pretrained(base, attn_implementation="eager")
  wrapped = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
  diff = np.abs(ours - torch_logits(wrapped)).max()
  print(f"peft vs fifa-jax LoRA: max |logits diff| = {diff:.2e}")
  assert diff <= TOL
  plain = np.asarray(conv.load_hf(base)[1](jnp.asarray(IDS)))
  assert np.abs(ours - plain).max() > 100 * TOL  # the adapter does change the logits

  # and back: base + adapter -> fifa-jax, bit-exact
  _, again = peft_conv.load_with_adapter(base, tmp_path / "adapter")
  assert set(again.config.lora.target_modules) == set(LORA.target_modules)
  assert (again.config.lora.rank, again.config.lora.alpha) == (LORA.rank, LORA.alpha)
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_merged_export_loads_in_transformers(trained, tmp_path):
  base, model = trained
  peft_conv.save_merged(model, tmp_path / "merged")
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager")
  diff = np.abs(np.asarray(model(jnp.asarray(IDS))) - torch_logits(hf)).max()
  print(f"merged export vs fifa-jax LoRA: max |logits diff| = {diff:.2e}")
  assert diff <= TOL


def test_adapter_errors(trained, tmp_path):
  base, _ = trained
  _, plain = conv.load_hf(base)
  with pytest.raises(ConversionError, match="no LoRA adapters"):
    peft_conv.save_adapter(plain, tmp_path / "x")
  with pytest.raises(ConversionError, match="use_dora"):
    peft_conv.lora_config_from({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True})
