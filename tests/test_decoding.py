"""The decoding layout computes the training layout's function: unrolled layers,
adapters folded into their kernels, weights in the compute dtype."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fifa_jax.models import fifa
from fifa_jax.models.decoding import decoding_config, decoding_layout
from fifa_jax.models.generate import GenerationConfig

B = 2


def _trained_like(scan: bool) -> fifa.FiFaMLLM:
  """Tiny model whose adapters are not zero (as after training)."""
  cfg = fifa.FiFaConfig.tiny()
  cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, scan_layers=scan,
                                                           initializer_range=0.2))
  model = fifa.FiFaMLLM(cfg, rngs=nnx.Rngs(0))
  for i, (path, var) in enumerate(nnx.state(model, nnx.LoRAParam).flat_state()):
    if path[-1] == "lora_b":
      var[...] = 0.3 * jax.random.normal(jax.random.key(i), var.shape)
  return model


def _inputs(cfg):
  rng = np.random.default_rng(0)
  ids = np.concatenate([np.full((B, 1), 1), np.full((B, cfg.num_image_tokens), cfg.image_token_id),
                        rng.integers(3, 100, (B, 6))], 1)
  pixels = rng.normal(size=(B, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
  return jnp.asarray(ids, jnp.int32), jnp.asarray(pixels)


@pytest.mark.parametrize("scan", [pytest.param(True, marks=pytest.mark.slow), False])
def test_same_function_in_float32(scan):
  model = _trained_like(scan)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  dec = decoding_layout(model)
  assert isinstance(dec.llm.model.layers, nnx.List) and dec.llm.config.lora is None
  assert not nnx.state(dec, nnx.LoRAParam)  # no adapter left to run
  ids, pixels = _inputs(model.config)
  ref, out = model(ids, pixels), dec(ids, pixels)
  np.testing.assert_allclose(out.logits, ref.logits, atol=2e-5)
  np.testing.assert_allclose(out.mask_logits, ref.mask_logits, atol=2e-4)
  if not scan:  # (generating with scanned layers compiles for 25 s; the logits above suffice)
    cfg = GenerationConfig(max_new_tokens=10, eos_token_ids=())
    a, b = model.generate(ids, pixels, config=cfg), dec.generate(ids, pixels, config=cfg)
    np.testing.assert_array_equal(a.tokens, b.tokens)
  # the training model is untouched: same layout, same values
  assert model.llm.config.scan_layers == scan and model.llm.config.lora is not None
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def test_bfloat16_weights_keep_buffers_and_track_float32():
  model = _trained_like(scan=True)
  dec = decoding_layout(model, "bfloat16")
  params = jax.tree.leaves(nnx.state(dec, nnx.Param))
  assert {x.dtype for x in params} == {jnp.dtype(jnp.bfloat16)}
  assert dec.decoder.pe_layer.positional_encoding_gaussian_matrix[...].dtype == jnp.float32
  ids, pixels = _inputs(model.config)
  ref, out = model(ids, pixels).logits, dec(ids, pixels).logits
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


def test_config_defaults_to_each_parts_compute_dtype():
  paper = decoding_config(fifa.FiFaConfig.paper())
  assert paper.llama.param_dtype == paper.vit.param_dtype == "bfloat16"
  assert not paper.llama.scan_layers and paper.llama.lora is None and not paper.llama.remat
  assert decoding_config(fifa.FiFaConfig.tiny()).llama.param_dtype == "float32"
