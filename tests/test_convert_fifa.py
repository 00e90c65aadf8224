"""The whole FiFa-MLLM <-> PyTorch state dict (bit-exact), orbax folder, assembly from parts."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open

from fifa_jax.convert import farl, fifa, sam, stream
from fifa_jax.convert import llama as llama_conv
from fifa_jax.convert.stream import ConversionError
from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM
from fifa_jax.models.lora import lora_layers

CFG = FiFaConfig.tiny()


def weights(model) -> dict:
  return {stream.path_str(p): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model, stream.WEIGHTS))}


def assert_same(a, b, only=None):
  wa, wb = weights(a), weights(b)
  assert sorted(wa) == sorted(wb)
  for k in wa:
    if only is None or k.startswith(only):
      assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def model():
  m = FiFaMLLM(CFG, rngs=nnx.Rngs(0))
  for i, (_, layer) in enumerate(lora_layers(m)):  # adapters that matter
    layer.lora_b[...] = jax.random.normal(jax.random.key(i), layer.lora_b[...].shape)
  return m


@pytest.mark.slow
def test_state_dict_round_trip_is_bit_exact(model, tmp_path):
  fifa.save_pth(model, tmp_path / "pt")
  with safe_open(tmp_path / "pt" / "model.safetensors", "pt") as f:
    keys = set(f.keys())
    assert json.loads(f.metadata()["fifa_config"])["llama"]["lora"]["rank"] == 4
    assert tuple(f.get_slice("box_encoder.level_convs.0.weight").get_shape()) == (16, 16, 3, 3)
    assert tuple(f.get_slice("llm.model.layers.1.self_attn.q_proj.lora_A.weight").get_shape()) == (4, 64)
  for key in ("face_encoder.visual.transformer.resblocks.0.attn.in_proj_weight",
              "face_encoder.visual.conv1.weight", "llm.lm_head.weight",
              "llm.model.layers.0.self_attn.v_proj.lora_B.weight", "decoder.transformer.layers.0.norm1.weight",
              "decoder.pe_layer.positional_encoding_gaussian_matrix", "decoder.det_embed",
              "pixel_decoder.up1.weight", "image_projector.fc1.weight", "det_head.fc2.bias"):
    assert key in keys, key
  cfg, back = fifa.load_pth(tmp_path / "pt")
  assert cfg == CFG
  assert_same(model, back)
  fifa.save_pth(back, tmp_path / "pt2", max_shard_bytes=200_000)  # sharded this time
  _, again = fifa.load_pth(tmp_path / "pt2")
  assert_same(model, again)
  # a torch .pth of the same dict loads too (config from fifa_config.json beside it)
  with safe_open(tmp_path / "pt" / "model.safetensors", "pt") as f:
    torch.save({k: f.get_tensor(k) for k in f.keys()}, tmp_path / "pt" / "fifa.pth")
  _, from_pth = fifa.load_pth(tmp_path / "pt" / "fifa.pth")
  assert_same(model, from_pth)


def test_errors_name_the_key(model, tmp_path):
  fifa.save_pth(model, tmp_path / "pt")
  with safe_open(tmp_path / "pt" / "model.safetensors", "pt") as f:
    sd = {k: f.get_tensor(k) for k in f.keys()}
  del sd["box_encoder.pos_norm2.bias"]
  sd["decoder.det_embed"] = torch.zeros(3)
  torch.save(sd, tmp_path / "bad.pth")
  with pytest.raises(ConversionError) as e:
    fifa.load_pth(tmp_path / "bad.pth", config=CFG)
  assert "missing key 'box_encoder.pos_norm2.bias'" in str(e.value)
  assert "mis-shaped key 'decoder.det_embed': checkpoint [3], model expects [32]" in str(e.value)
  with pytest.raises(ConversionError, match="no FiFa config"):
    fifa.load_pth(tmp_path / "bad.pth")


def test_orbax_folder_round_trip(model, tmp_path):
  fifa.save(model, tmp_path / "ckpt")
  assert json.loads((tmp_path / "ckpt" / "fifa_jax.json").read_text())["kind"] == "fifa"
  cfg, back = fifa.restore(tmp_path / "ckpt")
  assert cfg == CFG
  assert_same(model, back)
  with pytest.raises(ConversionError, match="exists"):
    fifa.save(model, tmp_path / "ckpt")


@pytest.mark.slow
def test_assemble_from_farl_vicuna_sam(model, tmp_path):
  farl.save_pth(model.vit, tmp_path / "farl.pth")
  llama_conv.save_hf(model.llm, tmp_path / "vicuna")
  dec = stream.export(model.decoder, sam.decoder_entries(model.decoder))
  torch.save({f"model.grounding_encoder.{t.key}": torch.from_numpy(np.array(t.produce())) for t in dec}
             | {"model.grounding_encoder.mask_decoder.iou_token.weight": torch.ones(1, 32)},
             tmp_path / "glamm_sam.pth")
  built, report = fifa.assemble(CFG, farl_path=tmp_path / "farl.pth", llama_path=tmp_path / "vicuna",
                                sam_path=tmp_path / "glamm_sam.pth", seed=5)
  for part in ("vit.", "llm.model.layers.0.self_attn.q_proj.kernel", "llm.lm_head",
               "decoder.transformer.", "decoder.pe_layer."):
    assert_same(model, built, only=part)
  assert "decoder.det_embed" in report["fresh"] and "box_encoder.levels" in report["fresh"]
  assert "mask_decoder.iou_token.weight" in report["skipped"]
  for _, layer in lora_layers(built):  # adapters start fresh: B = 0
    assert not np.asarray(layer.lora_b[...]).any()


@pytest.mark.slow
def test_assemble_grows_the_vocabulary_with_mean_rows(tmp_path):
  """Vicuna's 32000 rows -> FiFa's 32005: the checkpoint's rows are kept, the new ones
  start at the mean row; a checkpoint with more rows than the model is refused."""
  import dataclasses

  from fifa_jax.models.llama import LlamaForCausalLM

  small = dataclasses.replace(CFG.llama, vocab_size=CFG.llama.vocab_size - 5)
  llm = LlamaForCausalLM(small, rngs=nnx.Rngs(3))
  llama_conv.save_hf(llm, tmp_path / "vicuna")
  built, report = fifa.assemble(CFG, llama_path=tmp_path / "vicuna")
  assert report["resized"] == {"model.embed_tokens.weight": [small.vocab_size, CFG.llama.vocab_size],
                               "lm_head.weight": [small.vocab_size, CFG.llama.vocab_size]}
  for ours, theirs in ((built.llm.model.embed_tokens.embedding, llm.model.embed_tokens.embedding),
                       (built.llm.lm_head.kernel, llm.lm_head.kernel)):
    a, b = np.asarray(ours[...]), np.asarray(theirs[...])
    if ours is built.llm.lm_head.kernel:  # [in, vocab]: rows are columns here
      a, b = a.T, b.T
    assert a.shape[0] == CFG.llama.vocab_size
    np.testing.assert_array_equal(a[:small.vocab_size], b)
    np.testing.assert_allclose(a[small.vocab_size:], np.repeat(b.mean(0, keepdims=True), 5, 0),
                               rtol=1e-5, atol=1e-8)

  big = dataclasses.replace(CFG.llama, vocab_size=CFG.llama.vocab_size + 2)
  llama_conv.save_hf(LlamaForCausalLM(big, rngs=nnx.Rngs(0)), tmp_path / "bigger")
  with pytest.raises(ConversionError, match=rf"{big.vocab_size} rows but the model's vocabulary "
                                            rf"is {CFG.llama.vocab_size}"):
    fifa.assemble(CFG, llama_path=tmp_path / "bigger")


@pytest.mark.slow
def test_whole_model_loads_into_scanned_layers_and_computes_the_same(model, tmp_path):
  """The same PyTorch state dict loads into a FiFa-MLLM whose LLM scans stacked layers;
  training outputs and generation (text and masks) equal the unrolled model's, and the
  export is the same file."""
  import dataclasses

  from fifa_jax.models.generate import GenerationConfig

  fifa.save_pth(model, tmp_path / "torch")
  scan_cfg = dataclasses.replace(CFG, llama=dataclasses.replace(CFG.llama, scan_layers=True))
  _, scanned = fifa.load_pth(tmp_path / "torch", config=scan_cfg)
  assert scanned.llm.model.layers.mlp.up_proj.kernel[...].shape[0] == CFG.llama.num_hidden_layers

  rng = np.random.default_rng(0)
  c = CFG
  ids = np.asarray([[1, c.image_token_id] + list(rng.integers(3, 90, 10)) + [c.seg_token_id, 5]] * 2,
                   np.int32)
  from fifa_jax.tokens import expand_image_tokens
  ids = np.asarray([expand_image_tokens(list(r), c.image_token_id, c.num_image_tokens) for r in ids])
  pixels = rng.normal(size=(2, c.image_size, c.image_size, 3)).astype(np.float32)
  a, b = model(ids, pixels), scanned(ids, pixels)
  for name in ("logits", "mask_logits", "det_logits"):
    np.testing.assert_allclose(np.asarray(getattr(b, name)), np.asarray(getattr(a, name)),
                               rtol=0, atol=1e-4, err_msg=name)
  gcfg = GenerationConfig(max_new_tokens=4, eos_token_ids=())
  ga, gb = model.generate(ids, pixels, config=gcfg), scanned.generate(ids, pixels, config=gcfg)
  np.testing.assert_array_equal(np.asarray(gb.tokens), np.asarray(ga.tokens))
  np.testing.assert_allclose(np.asarray(gb.mask_logits), np.asarray(ga.mask_logits), rtol=0, atol=1e-4)

  fifa.save_pth(scanned, tmp_path / "again")
  with safe_open(tmp_path / "torch" / "model.safetensors", "np") as f1, \
       safe_open(tmp_path / "again" / "model.safetensors", "np") as f2:
    assert sorted(f1.keys()) == sorted(f2.keys())
    for k in f1.keys():
      np.testing.assert_array_equal(f1.get_tensor(k), f2.get_tensor(k), err_msg=k)
