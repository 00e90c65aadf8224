"""LoRA adapters: zero at start, selectable by filter, mergeable, the only thing that trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM, vicuna_7b
from fifa_jax.models.lora import BASE, LORA, TARGETS, LoraConfig, LoraLinear, merge_lora

TINY = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
ALL = LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=TARGETS)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 7)), jnp.int32)


def pair(lora: LoraConfig = ALL):
  """A base model and a LoRA model sharing its base weights."""
  base = LlamaForCausalLM(LlamaConfig(**TINY), rngs=nnx.Rngs(0))
  tuned = LlamaForCausalLM(LlamaConfig(**TINY, lora=lora), rngs=nnx.Rngs(1))
  nnx.update(tuned, nnx.state(base))
  return base, tuned


def randomize_b(model, seed=2):
  for i, (_, b) in enumerate(nnx.to_flat_state(nnx.state(model, LORA))):
    if b[...].shape[0] == model.config.lora.rank:  # lora_b is [rank, out]
      b[...] = 0.05 * jax.random.normal(jax.random.key(seed + i), b[...].shape)


@pytest.mark.slow
def test_fresh_lora_equals_base():
  base, tuned = pair()
  np.testing.assert_array_equal(np.asarray(tuned(IDS)), np.asarray(base(IDS)))


def test_filters_select_adapters_only():
  _, tuned = pair(LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "down_proj")))
  lora_paths = [p for p, _ in nnx.to_flat_state(nnx.state(tuned, LORA))]
  assert len(lora_paths) == 2 * 2 * 2  # layers x targets x (A, B)
  assert {p[-2] for p in lora_paths} == {"q_proj", "down_proj"}
  assert {p[-1] for p in lora_paths} == {"lora_a", "lora_b"}
  base_paths = [p for p, _ in nnx.to_flat_state(nnx.state(tuned, BASE))]
  assert not any("lora" in str(p[-1]) for p in base_paths)
  assert len(base_paths) == len(nnx.to_flat_state(nnx.state(LlamaForCausalLM(
      LlamaConfig(**TINY), rngs=nnx.Rngs(0)), nnx.Param)))
  attn = tuned.model.layers[0].self_attn
  assert attn.q_proj.lora_a[...].shape == (32, 4) and attn.q_proj.lora_b[...].shape == (4, 32)
  assert attn.k_proj.lora is None and attn.q_proj.lora_a.get_metadata()["out_sharding"] == (
      "embed", "lora_rank")


@pytest.mark.slow
def test_vicuna_7b_lora_rank_128_parameter_count():
  lora = LoraConfig(rank=128, alpha=256.0, target_modules=TARGETS)
  abstract = nnx.eval_shape(lambda: LlamaForCausalLM(vicuna_7b(lora=lora), rngs=nnx.Rngs(0)))
  count = lambda f: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, f)))
  assert count(BASE) == 6_738_415_616
  d, f = 4096, 11008
  per_layer = 128 * (4 * (d + d) + 2 * (d + f) + (f + d))
  assert count(LORA) == 32 * per_layer == 319_815_680


def test_merged_equals_unmerged():
  base, tuned = pair()
  randomize_b(tuned)
  before = np.asarray(tuned(IDS))
  assert np.abs(before - np.asarray(base(IDS))).max() > 1e-3  # the adapters do something
  q = tuned.model.layers[1].self_attn.q_proj
  expected = q.kernel[...] + ALL.scale * q.lora_a[...] @ q.lora_b[...]
  merge_lora(tuned)
  np.testing.assert_allclose(np.asarray(q.kernel[...]), np.asarray(expected), atol=1e-6)
  assert float(jnp.abs(q.lora_b[...]).max()) == 0.0
  np.testing.assert_allclose(np.asarray(tuned(IDS)), before, atol=1e-5)
  # the merged base weights alone reproduce the tuned model
  nnx.update(base, nnx.state(tuned, BASE))
  np.testing.assert_allclose(np.asarray(base(IDS)), before, atol=1e-5)


@pytest.mark.slow
def test_gradients_and_updates_touch_lora_only():
  _, tuned = pair()
  frozen = jax.tree.map(np.asarray, nnx.state(tuned, BASE))

  def loss_fn(model):
    logits = model.forward(IDS[:, :-1], deterministic=False).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, IDS[:, 1:]).mean()

  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, LORA))(tuned)
  flat = nnx.to_flat_state(grads)
  assert flat and all(p[-1] in ("lora_a", "lora_b") for p, _ in flat)
  # B = 0 at start: A gets no gradient yet, B does.
  assert all(float(jnp.abs(g[...]).max()) > 0 for p, g in flat if p[-1] == "lora_b")

  opt = nnx.Optimizer(tuned, optax.adam(1e-2), wrt=LORA)
  step = nnx.jit(lambda m, o: o.update(m, nnx.grad(loss_fn, argnums=nnx.DiffState(0, LORA))(m)))
  first = loss_fn(tuned)
  for _ in range(3):
    step(tuned, opt)
  assert loss_fn(tuned) < first
  jax.tree.map(np.testing.assert_array_equal, frozen,
               jax.tree.map(np.asarray, nnx.state(tuned, BASE)))


def test_dropout_only_when_training_and_under_remat():
  lora = LoraConfig(rank=4, alpha=8.0, dropout=0.5, target_modules=("v_proj", "up_proj"))
  tuned = LlamaForCausalLM(LlamaConfig(**TINY, lora=lora, remat=True), rngs=nnx.Rngs(0))
  randomize_b(tuned)
  eval_out = np.asarray(tuned.forward(IDS).logits)
  np.testing.assert_array_equal(np.asarray(tuned.forward(IDS).logits), eval_out)
  train = nnx.jit(lambda m: m.forward(IDS, deterministic=False).logits)
  a, b = np.asarray(train(tuned)), np.asarray(train(tuned))
  assert np.abs(a - eval_out).max() > 1e-4 and np.abs(a - b).max() > 1e-6  # fresh masks per call


def test_config_checks_and_scale():
  assert LoraConfig(rank=128, alpha=256.0).scale == 2.0
  with pytest.raises(ValueError, match="unknown LoRA target"):
    LoraConfig(target_modules=("qkv",))
  layer = LoraLinear(8, 3, axes=("embed", "mlp"), lora=LoraConfig(rank=2, alpha=2.0),
                     rngs=nnx.Rngs(0))
  x = jnp.ones((1, 8))
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(x @ layer.kernel[...]), atol=1e-6)
