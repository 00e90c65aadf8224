"""segment-anything / GLaMM mask-decoder checkpoints -> the Multi-Task Decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from jax import numpy as jnp

from fifa_jax.convert import sam as sam_conv
from fifa_jax.convert.stream import ConversionError
from fifa_jax.models.pixel_decoder import PixelDecoder, PixelDecoderConfig
from test_two_way import CFG, GRID, hf_sam

TOL = 1e-4


@pytest.fixture(scope="module")
def hf():
  return hf_sam(seed=3)


@pytest.fixture(scope="module")
def glamm_pth(hf, tmp_path_factory):
  """A GLaMM-style file: SAM under model.grounding_encoder., plus LLM and encoder keys."""
  sd = {f"model.grounding_encoder.{k}": torch.from_numpy(np.ascontiguousarray(v))
        for k, v in sam_conv.hf_sam_to_segment_anything(hf.state_dict()).items()}
  sd["model.grounding_encoder.image_encoder.patch_embed.proj.weight"] = torch.randn(8, 3, 16, 16)
  sd["model.grounding_encoder.prompt_encoder.no_mask_embed.weight"] = torch.randn(1, CFG.dim)
  sd["model.layers.0.self_attn.q_proj.weight"] = torch.randn(4, 4)
  path = tmp_path_factory.mktemp("glamm") / "glamm.pth"
  torch.save(sd, path)
  return path


@pytest.mark.slow
def test_mask_decoder_matches_sam(hf, glamm_pth):
  cfg, model = sam_conv.load_pth(glamm_pth, pixel=True, heads=CFG.heads)
  assert (cfg.decoder.dim, cfg.decoder.depth, cfg.decoder.mlp_dim) == (CFG.dim, CFG.depth, CFG.mlp_dim)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, CFG.dim, GRID, GRID)).astype(np.float32)
  sparse = rng.normal(size=(2, 1, 2, CFG.dim)).astype(np.float32)
  with torch.no_grad():
    want, _ = hf.mask_decoder(
        image_embeddings=torch.from_numpy(image),
        image_positional_embeddings=hf.get_image_wide_positional_embeddings(),
        sparse_prompt_embeddings=torch.from_numpy(sparse),
        dense_prompt_embeddings=torch.zeros(1, CFG.dim, GRID, GRID), multimask_output=False)
  md = hf.mask_decoder
  # Attention is order-free over tokens: put SAM's single-mask token first, as FiFa's M.
  out_tokens = torch.cat([md.mask_tokens.weight[:1], md.iou_token.weight, md.mask_tokens.weight[1:]])
  tokens = np.concatenate([np.broadcast_to(out_tokens.detach().numpy(), (2, *out_tokens.shape)),
                           sparse[:, 0]], 1)
  image_tokens = jnp.asarray(image.transpose(0, 2, 3, 1).reshape(2, -1, CFG.dim))
  _, _, masks = model(image_tokens, (GRID, GRID), jnp.asarray(tokens))
  diff = np.abs(np.asarray(masks) - want[:, 0, 0].numpy()).max()
  print(f"GLaMM-format SAM decoder vs transformers SamMaskDecoder: max |mask logit diff| = {diff:.2e}")
  assert masks.shape == (2, 4 * GRID, 4 * GRID) and diff <= TOL


def test_task_queries_stay_fresh_and_errors(glamm_pth, tmp_path):
  cfg, model = sam_conv.load_pth(glamm_pth, heads=CFG.heads)  # no pixel decoder
  assert model.pixel_decoder is None
  _, again = sam_conv.load_pth(glamm_pth, heads=CFG.heads, seed=1)
  np.testing.assert_array_equal(  # loaded: identical whatever the seed
      np.asarray(model.decoder.transformer.layers[1].mlp.lin1.kernel[...]),
      np.asarray(again.decoder.transformer.layers[1].mlp.lin1.kernel[...]))
  assert not np.array_equal(np.asarray(model.decoder.det_embed[...]),  # fresh: seed-dependent
                            np.asarray(again.decoder.det_embed[...]))
  sd = torch.load(glamm_pth)
  sd["model.grounding_encoder.mask_decoder.transformer.layers.1.mlp.lin9.weight"] = torch.ones(2)
  torch.save(sd, tmp_path / "extra.pth")
  with pytest.raises(ConversionError, match=r"unexpected key 'mask_decoder\.transformer\.layers\.1\.mlp\.lin9"):
    sam_conv.load_pth(tmp_path / "extra.pth")
  with pytest.raises(ConversionError, match="PixelDecoderConfig.sam"):
    sam_conv.pixel_entries(nnx.eval_shape(lambda: PixelDecoder(PixelDecoderConfig.tiny(), rngs=nnx.Rngs(0))))
