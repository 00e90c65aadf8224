"""A FaRL-format .pth built from a random transformers CLIPVisionModel loads into
fifa-jax and gives CLIP's features; export back is bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from jax import numpy as jnp

from fifa_jax.convert import farl
from fifa_jax.convert.stream import ConversionError

WIDTH, LAYERS, HEADS, PATCH, SIZE = 128, 3, 2, 16, 64  # heads of 64, as FaRL (inferred)


@pytest.fixture(scope="module")
def clip():
  torch.manual_seed(0)
  cfg = transformers.CLIPVisionConfig(
      hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, image_size=SIZE, patch_size=PATCH, hidden_act="quick_gelu",
      attn_implementation="eager")
  model = transformers.CLIPVisionModel(cfg).eval()
  with torch.no_grad():  # identity LayerNorms would hide a mapping error
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def farl_pth(clip, tmp_path_factory):
  """FaRL's file layout: {"state_dict": visual.* in OpenAI names + the text tower}."""
  proj = torch.randn(WIDTH, 32)
  sd = {k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in farl.hf_clip_to_openai(clip.state_dict(), proj=proj.numpy()).items()}
  sd.update({"token_embedding.weight": torch.randn(50, 16), "ln_final.weight": torch.ones(16),
             "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
             "text_projection": torch.randn(16, 32), "logit_scale": torch.tensor(4.6)})
  path = tmp_path_factory.mktemp("farl") / "FaRL-Base-Patch16-LAIONFace20M-ep16.pth"
  torch.save({"state_dict": sd, "epoch": 16}, path)
  return path


def test_farl_pth_gives_clip_features(clip, farl_pth):
  cfg, encoder = farl.load_pth(farl_pth)
  assert (cfg.width, cfg.layers, cfg.heads, cfg.patch_size, cfg.image_size, cfg.output_dim) == \
      (WIDTH, LAYERS, HEADS, PATCH, SIZE, 32)
  pixels = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    want = clip(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  got = np.asarray(encoder(jnp.asarray(pixels)))
  assert got.shape == (2, 1 + SIZE * SIZE // PATCH ** 2, WIDTH) == want.shape
  diff = np.abs(got - want).max()
  print(f"FaRL .pth vs CLIPVisionModel: max |features diff| = {diff:.2e}")
  assert diff <= 1e-4


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_round_trip_is_bit_exact(farl_pth, tmp_path, suffix):
  _, encoder = farl.load_pth(farl_pth)
  out = farl.save_pth(encoder, tmp_path / f"back{suffix}")
  _, again = farl.load_pth(out)
  orig = torch.load(farl_pth)["state_dict"]
  if suffix == ".pth":
    back = torch.load(out)["state_dict"]
    assert sorted(back) == sorted(k for k in orig if k.startswith("visual."))
    for k, v in back.items():
      assert torch.equal(v, orig[k]), k
  pixels = jnp.asarray(np.random.default_rng(1).normal(size=(1, SIZE, SIZE, 3)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(again(pixels)), np.asarray(encoder(pixels)))


def test_bf16_kept_and_errors(farl_pth, tmp_path):
  sd = torch.load(farl_pth)["state_dict"]
  torch.save({"state_dict": {k: v.to(torch.bfloat16) for k, v in sd.items()}}, tmp_path / "bf16.pth")
  cfg, enc = farl.load_pth(tmp_path / "bf16.pth")
  assert cfg.param_dtype == "bfloat16" and enc.conv1.kernel[...].dtype == jnp.bfloat16
  farl.save_pth(enc, tmp_path / "bf16_back.pth")
  back = torch.load(tmp_path / "bf16_back.pth")["state_dict"]
  for k, v in back.items():
    assert v.dtype == torch.bfloat16 and torch.equal(v, sd[k].to(torch.bfloat16)), k

  bad = dict(sd)
  bad["visual.transformer.resblocks.1.mlp.c_fc.bias"] = torch.zeros(7)
  torch.save({"state_dict": bad}, tmp_path / "bad.pth")
  with pytest.raises(ConversionError, match=r"mis-shaped key 'transformer\.resblocks\.1\.mlp\.c_fc\.bias'"):
    farl.load_pth(tmp_path / "bad.pth")
  del bad["visual.transformer.resblocks.1.mlp.c_fc.bias"]
  torch.save({"state_dict": bad}, tmp_path / "missing.pth")
  with pytest.raises(ConversionError, match=r"missing key 'transformer\.resblocks\.1\.mlp\.c_fc\.bias'"):
    farl.load_pth(tmp_path / "missing.pth")
  torch.save({"state_dict": {"token_embedding.weight": torch.ones(2, 2)}}, tmp_path / "text.pth")
  with pytest.raises(ConversionError, match="not a CLIP/FaRL image tower"):
    farl.load_pth(tmp_path / "text.pth")
