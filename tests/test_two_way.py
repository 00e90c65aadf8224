"""Multi-Task Decoder and Pixel Decoder parity with transformers' SAM mask decoder."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fifa_jax.convert import sam as sam_conv  # noqa: E402
from fifa_jax.convert import stream  # noqa: E402
from fifa_jax.models.pixel_decoder import PixelDecoder, PixelDecoderConfig  # noqa: E402
from fifa_jax.models.two_way import TwoWayConfig  # noqa: E402

CFG = TwoWayConfig.tiny()
GRID = 4  # image tokens per side


def hf_sam(seed: int = 0):
  """A tiny random transformers SamModel with non-trivial decoder weights."""
  torch.manual_seed(seed)
  d = CFG.dim
  cfg = transformers.SamConfig(
    vision_config=dict(hidden_size=16, output_channels=d, num_hidden_layers=1,
                       num_attention_heads=2, image_size=GRID * 16, patch_size=16,
                       global_attn_indexes=[0], num_pos_feats=d // 2, window_size=2),
    prompt_encoder_config=dict(hidden_size=d, image_size=GRID * 16, patch_size=16),
    mask_decoder_config=dict(hidden_size=d, mlp_dim=CFG.mlp_dim, num_attention_heads=CFG.heads,
                             layer_norm_eps=CFG.layer_norm_eps))
  cfg._attn_implementation = "eager"
  model = transformers.SamModel(cfg).eval()
  with torch.no_grad():  # HF's init (tiny weights, identity norms) would hide mapping errors
    for name, p in model.mask_decoder.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
      elif p.dim() == 1:
        p.copy_(0.1 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / (p.numel() / p.shape[0]) ** 0.5)
  return model


@pytest.fixture(scope="module")
def sam():
  return hf_sam()


@pytest.fixture(scope="module")
def ours(sam):
  """HF names -> segment-anything names -> ours, through the SAM converter."""
  sd = sam_conv.hf_sam_to_segment_anything(sam.state_dict())
  model = sam_conv.SamDecoder(sam_conv.SamDecoderConfig(CFG, PixelDecoderConfig.sam(CFG.dim)),
                              rngs=nnx.Rngs(0))
  sam_conv.load_state_dict(model, sd)
  return model.decoder, model.pixel_decoder, sd


def _inputs(b=2, n_sparse=3, seed=1):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(b, CFG.dim, GRID, GRID)).astype(np.float32)
  sparse = rng.normal(size=(b, 1, n_sparse, CFG.dim)).astype(np.float32)
  return image, sparse


def _tokens_nhwc(image):  # [B, C, h, w] -> [B, h*w, C], row-major like ours
  return jnp.asarray(image.transpose(0, 2, 3, 1).reshape(image.shape[0], -1, image.shape[1]))


def test_positional_encoding_matches_hf(sam, ours):
  dec, _, _ = ours
  with torch.no_grad():
    want = sam.get_image_wide_positional_embeddings()[0].numpy()  # [C, h, w]
  got = np.asarray(dec.pe_layer((GRID, GRID)))
  np.testing.assert_allclose(got, want.transpose(1, 2, 0).reshape(-1, CFG.dim), atol=1e-5, rtol=0)


def test_two_way_transformer_matches_hf(sam, ours):
  dec, _, _ = ours
  image, tokens = _inputs()
  with torch.no_grad():
    pe = sam.get_image_wide_positional_embeddings().repeat(2, 1, 1, 1)
    q_ref, k_ref = sam.mask_decoder.transformer(
      point_embeddings=torch.from_numpy(tokens), image_embeddings=torch.from_numpy(image),
      image_positional_embeddings=pe, attention_similarity=None)
  q, k = dec.run(_tokens_nhwc(image), (GRID, GRID), jnp.asarray(tokens[:, 0]))
  print("two-way max abs diff: tokens %.1e, image %.1e" % (
    np.abs(np.asarray(q) - q_ref[:, 0].numpy()).max(), np.abs(np.asarray(k) - k_ref[:, 0].numpy()).max()))
  np.testing.assert_allclose(np.asarray(q), q_ref[:, 0].numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(k), k_ref[:, 0].numpy(), atol=1e-4, rtol=0)


def test_mask_prediction_matches_hf(sam, ours):
  """Upscaled image tokens . (hypernetwork of) each mask-token output == SAM's masks."""
  dec, pix, md = ours
  image, sparse = _inputs(seed=2)
  with torch.no_grad():
    pe = sam.get_image_wide_positional_embeddings()
    masks_ref, _ = sam.mask_decoder(
      image_embeddings=torch.from_numpy(image), image_positional_embeddings=pe,
      sparse_prompt_embeddings=torch.from_numpy(sparse),
      dense_prompt_embeddings=torch.zeros(1, CFG.dim, GRID, GRID), multimask_output=True)
  n_masks = md["mask_decoder.mask_tokens.weight"].shape[0]
  out_tokens = np.concatenate([md["mask_decoder.iou_token.weight"],
                               md["mask_decoder.mask_tokens.weight"]], 0)
  tokens = jnp.concatenate([jnp.broadcast_to(jnp.asarray(out_tokens), (2, *out_tokens.shape)),
                            jnp.asarray(sparse[:, 0])], axis=1)
  q, k = dec.run(_tokens_nhwc(image), (GRID, GRID), tokens)
  p = pix(k, (GRID, GRID))
  assert p.shape == (2, 4 * GRID, 4 * GRID, CFG.dim // 8)
  for i in range(1, n_masks):  # multimask output = mask tokens 1..3
    source, _ = sam_conv.split_sam(stream.dict_source(md))
    stream.assign(pix, sam_conv.pixel_entries(pix, hypernetwork=i), source, ignore=lambda k: True)
    got = pix.mask_logits(p, q[:, 1 + i:2 + i])[:, 0]
    print("mask %d max abs diff %.1e (max |logit| %.3g)" % (
      i, np.abs(np.asarray(got) - masks_ref[:, 0, i - 1].numpy()).max(), np.abs(got).max()))
    np.testing.assert_allclose(np.asarray(got), masks_ref[:, 0, i - 1].numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_segment_and_classify_are_the_documented_passes(ours):
  dec, _, _ = ours
  rng = np.random.default_rng(3)
  image = jnp.asarray(rng.normal(size=(2, GRID * GRID, CFG.dim)), jnp.float32)
  concepts = jnp.asarray(rng.normal(size=(2, 3, CFG.dim)), jnp.float32)
  m_out, img_out = dec.segment(image, (GRID, GRID), concepts)
  assert m_out.shape == (2, 3, 2, CFG.dim) and img_out.shape == (2, 3, 2, GRID * GRID, CFG.dim)
  tok = jnp.stack([dec.mask_embed[...], concepts[1, 2] + dec.artifact_embed[...]])[None]
  q, k = dec.run(image[1:2], (GRID, GRID), tok)
  np.testing.assert_allclose(np.asarray(m_out[1, 2, 1]), np.asarray(q[0, 0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(img_out[1, 2, 1]), np.asarray(k[0]), atol=1e-5)
  d_out, c_out = dec.classify(image, (GRID, GRID))
  q, _ = dec.run(image, (GRID, GRID), jnp.broadcast_to(dec.cls_embed[...], (2, 1, CFG.dim)))
  np.testing.assert_allclose(np.asarray(c_out), np.asarray(q[:, 0]), atol=1e-5)
  assert float(jnp.abs(d_out - c_out).max()) > 1e-3


def test_faceptor_pixel_decoder_shapes_and_bf16():
  pix = PixelDecoder(PixelDecoderConfig.tiny(), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(4)
  image = jnp.asarray(rng.normal(size=(3, 2 * 5, 32)), jnp.float32)  # a 2x5 grid
  p = pix(image, (2, 5))
  assert p.shape == (3, 8, 20, 32)
  m = pix.mask_logits(p, jnp.asarray(rng.normal(size=(3, 1, 32)), jnp.float32))
  assert m.shape == (3, 1, 8, 20)
  low = PixelDecoder(PixelDecoderConfig.tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert low(image, (2, 5)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="query_mlp_layers"):
    PixelDecoder(PixelDecoderConfig.tiny(out_dim=8), rngs=nnx.Rngs(0))
