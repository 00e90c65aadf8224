"""Face Encoder parity with transformers' CLIPVisionModel (quick_gelu) on random weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fifa_jax.convert import farl  # noqa: E402
from fifa_jax.models.vit import ViTConfig, VisionTransformer  # noqa: E402

CFG = ViTConfig.tiny()


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  hf_cfg = transformers.CLIPVisionConfig(
    hidden_size=CFG.width, intermediate_size=CFG.width * CFG.mlp_ratio,
    num_hidden_layers=CFG.layers, num_attention_heads=CFG.heads, image_size=CFG.image_size,
    patch_size=CFG.patch_size, hidden_act="quick_gelu", layer_norm_eps=CFG.layer_norm_eps,
    attn_implementation="eager")
  hf = transformers.CLIPVisionModel(hf_cfg).eval()
  with torch.no_grad():  # HF initialises LayerNorms to identity; perturb them to test the mapping
    for name, p in hf.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  ours = VisionTransformer(CFG, rngs=nnx.Rngs(0))
  # HF names -> OpenAI/FaRL names (q/k/v fused) -> ours, through the FaRL converter
  farl.load_state_dict(ours, farl.hf_clip_to_openai(hf.state_dict(), proj=ours.proj[...]))
  return hf, ours


def _hf_states(hf, pixels: np.ndarray, interpolate: bool):
  with torch.no_grad():
    out = hf(torch.from_numpy(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True,
             interpolate_pos_encoding=interpolate)
  return out, [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_hidden_states_match_hf(pair, size):
  hf, ours = pair
  pixels = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
  out, ref = _hf_states(hf, pixels, interpolate=size != (CFG.image_size,) * 2)
  states = ours.hidden_states(jnp.asarray(pixels))
  assert len(states) == len(ref) == CFG.layers + 1
  n = 1 + size[0] * size[1] // CFG.patch_size ** 2
  for got, want in zip(states, ref):
    assert got.shape == want.shape == (2, n, CFG.width)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
  last = ours(jnp.asarray(pixels))
  np.testing.assert_allclose(np.asarray(last), out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  pooled = ours.ln_post(last[:, 0])
  np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_chosen_layers_and_bf16(pair):
  _, ours = pair
  pixels = jnp.asarray(np.random.default_rng(2).normal(size=(1, 64, 64, 3)), jnp.float32)
  every = ours.hidden_states(pixels)
  picked = ours.hidden_states(pixels, [1, 3, -1])
  for got, want in zip(picked, (every[1], every[3], every[-1])):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # bf16 compute with fp32 params: same graph, coarse agreement.
  low = VisionTransformer(ViTConfig.tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
  nnx.update(low, nnx.state(ours))
  out = low(pixels)
  assert out.dtype == jnp.bfloat16
  assert low.positional_embedding[...].dtype == jnp.float32
  err = np.abs(np.asarray(out, np.float32) - np.asarray(every[-1]))
  assert err.max() < 0.1 * np.abs(np.asarray(every[-1])).max()


def test_params_carry_logical_axes():
  model = nnx.eval_shape(lambda: VisionTransformer(CFG, rngs=nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.shape.__len__(), path
