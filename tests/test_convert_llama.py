"""HF LLaMA folders <-> fifa-jax: parity with transformers, bit-exact round trips, errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from fifa_jax.convert import llama as conv
from fifa_jax.convert.stream import ConversionError
from test_llama import hf_model  # tiny random LlamaForCausalLM (mha, gqa, tied)

TOL = 1e-4


def logits_of(hf, ids):
  with torch.no_grad():
    return hf(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def tensors(folder) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(folder.glob("*.safetensors")):
    with safe_open(f, "pt") as st:
      out.update({k: st.get_tensor(k) for k in st.keys()})
  return out


def assert_same_tensors(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


IDS = np.random.default_rng(0).integers(0, 97, (2, 9)).astype(np.int32)


@pytest.mark.parametrize("name", ["mha", "gqa", "tied"])
def test_hf_to_jax_to_hf_is_bit_exact_and_logits_match(tmp_path, name):
  hf = hf_model(name)
  hf.save_pretrained(tmp_path / "hf")
  cfg, model = conv.load_hf(tmp_path / "hf")
  assert cfg.num_key_value_heads == hf.config.num_key_value_heads
  ours = np.asarray(model(jnp.asarray(IDS)))
  assert ours.shape == (2, 9, 97) and ours.dtype == np.float32
  diff = np.abs(ours - logits_of(hf, IDS)).max()
  print(f"{name}: max |logits diff| vs transformers = {diff:.2e}")
  assert diff <= TOL
  conv.save_hf(model, tmp_path / "back")
  assert_same_tensors(tensors(tmp_path / "hf"), tensors(tmp_path / "back"))
  again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back",
                                                       attn_implementation="eager").eval()
  for k, v in hf.state_dict().items():
    assert torch.equal(v, again.state_dict()[k]), k
  np.testing.assert_array_equal(logits_of(again, IDS), logits_of(hf, IDS))


def test_sharded_safetensors_and_bin_and_bf16(tmp_path):
  hf = hf_model("gqa")
  hf.save_pretrained(tmp_path / "st", max_shard_size="20KB")
  assert (tmp_path / "st" / "model.safetensors.index.json").exists()
  _, a = conv.load_hf(tmp_path / "st")
  # a sharded .bin folder as older releases (Vicuna v1.1) ship it, with rotary buffers
  sd = hf.state_dict()
  keys = sorted(sd)
  half = len(keys) // 2
  (tmp_path / "bin").mkdir()
  for i, part in enumerate((keys[:half], keys[half:])):
    shard = {k: sd[k].clone() for k in part}
    shard[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    torch.save(shard, tmp_path / "bin" / f"pytorch_model-0000{i + 1}-of-00002.bin")
  wm = {k: f"pytorch_model-0000{1 + (k in keys[half:])}-of-00002.bin" for k in keys}
  (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
  (tmp_path / "bin" / "config.json").write_text(hf.config.to_json_string())
  _, b = conv.load_hf(tmp_path / "bin")
  np.testing.assert_array_equal(np.asarray(a(jnp.asarray(IDS))), np.asarray(b(jnp.asarray(IDS))))

  # bf16 kept as bf16, bit for bit; or chosen: fp32 in, bf16 out
  hf16 = hf_model("gqa").to(torch.bfloat16)
  hf16.save_pretrained(tmp_path / "bf16")
  cfg, m16 = conv.load_hf(tmp_path / "bf16")
  assert cfg.param_dtype == "bfloat16"
  assert m16.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  conv.save_hf(m16, tmp_path / "bf16_back", max_shard_bytes=30_000)
  assert (tmp_path / "bf16_back" / "model.safetensors.index.json").exists()
  assert_same_tensors(tensors(tmp_path / "bf16"), tensors(tmp_path / "bf16_back"))
  conv.save_hf(a, tmp_path / "chosen", dtype="bfloat16")
  assert_same_tensors(tensors(tmp_path / "bf16"), tensors(tmp_path / "chosen"))
  assert transformers.LlamaForCausalLM.from_pretrained(tmp_path / "chosen").dtype == torch.bfloat16


def test_glamm_lisa_checkpoint_llm_part(tmp_path):
  """LLM keys under model. / base_model.model.model. beside vision and SAM parts."""
  hf = hf_model("mha")
  sd = hf.state_dict()
  mixed = {}
  for k, v in sd.items():  # half PEFT-wrapped (base_layer), half plain, as LISA saves
    if ".layers.1." in k and "_proj" in k:
      k = "base_model.model." + k.replace(".weight", ".base_layer.weight")
    mixed[k] = v
  mixed["model.vision_tower.vision_tower.vision_model.embeddings.class_embedding"] = torch.ones(8)
  mixed["model.grounding_encoder.mask_decoder.iou_token.weight"] = torch.ones(1, 8)
  mixed["model.mm_projector.0.weight"] = torch.ones(4, 8)
  mixed["model.text_hidden_fcs.0.0.weight"] = torch.ones(4, 8)
  (tmp_path / "glamm").mkdir()
  torch.save(mixed, tmp_path / "glamm" / "pytorch_model.bin")
  cfg = {**json.loads(hf.config.to_json_string()), "model_type": "llava"}
  (tmp_path / "glamm" / "config.json").write_text(json.dumps(cfg))
  _, model, skipped = conv.load(tmp_path / "glamm")
  assert sorted(conv.summarise(skipped)) == ["model.grounding_encoder", "model.mm_projector",
                                             "model.text_hidden_fcs", "model.vision_tower"]
  diff = np.abs(np.asarray(model(jnp.asarray(IDS))) - logits_of(hf, IDS)).max()
  assert diff <= TOL


def test_missing_unexpected_misshaped_keys_are_named(tmp_path):
  from safetensors.torch import save_file

  hf = hf_model("mha")
  hf.save_pretrained(tmp_path / "ok")
  good = {k: v.contiguous() for k, v in hf.state_dict().items()}

  def folder(name, sd):
    (tmp_path / name).mkdir()
    save_file(sd, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / name / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    return tmp_path / name

  missing = {k: v for k, v in good.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(ConversionError, match=r"missing key 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    conv.load_hf(folder("missing", missing))
  extra = {**good, "model.layers.0.self_attn.qq_proj.weight": torch.zeros(2, 2)}
  with pytest.raises(ConversionError, match=r"unexpected key 'model\.layers\.0\.self_attn\.qq_proj"):
    conv.load_hf(folder("extra", extra))
  bad = {**good, "model.norm.weight": torch.ones(63)}
  with pytest.raises(ConversionError, match=r"mis-shaped key 'model\.norm\.weight': checkpoint \[63\]"):
    conv.load_hf(folder("bad", bad))
  with pytest.raises(ConversionError, match="does not exist"):
    conv.load_hf(tmp_path / "nowhere")


def test_config_inferred_without_config_json(tmp_path):
  hf = hf_model("gqa")
  torch.save(hf.state_dict(), tmp_path / "llm.bin")
  cfg, model = conv.load_hf(tmp_path / "llm.bin", num_attention_heads=6, rope_theta=500.0)
  assert (cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers) == (2, 16, 2)
  assert np.abs(np.asarray(model(jnp.asarray(IDS))) - logits_of(hf, IDS)).max() <= TOL
