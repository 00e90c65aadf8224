"""LLaMA parity with transformers' PyTorch LlamaForCausalLM on random weights (fp32)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from fifa_jax import mesh as mesh_lib
from fifa_jax.convert.llama import load_hf_state_dict, to_hf_state_dict
from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM, vicuna_7b

TOL = 1e-4

CONFIGS = {
    "mha": dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0),
    # grouped-query attention with head_dim * heads != hidden_size
    "gqa": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=6, num_key_value_heads=2, head_dim=16, rope_theta=500.0),
    "tied": dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True),
}


def hf_model(name: str, seed: int = 0) -> transformers.LlamaForCausalLM:
  torch.manual_seed(seed)
  kw = dict(CONFIGS[name])
  theta = kw.pop("rope_theta", 10000.0)
  cfg = transformers.LlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta},
                                 rms_norm_eps=1e-6, initializer_range=0.1,
                                 attn_implementation="eager")
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # norms at 1 would hide a missing norm weight
    for n, p in model.named_parameters():
      if "norm" in n:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


def jax_twin(hf, **overrides) -> LlamaForCausalLM:
  cfg = LlamaConfig.from_hf_dict(hf.config.to_dict(), **overrides)
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(1))
  return load_hf_state_dict(model, hf.state_dict())


def hf_logits(hf, ids, mask=None, positions=None):
  with torch.no_grad():
    out = hf(input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long),
             attention_mask=None if mask is None else torch.as_tensor(np.asarray(mask)),
             position_ids=None if positions is None else torch.as_tensor(np.asarray(positions)))
  return out.logits.numpy()


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def left_padded(rng, vocab, lengths, width):
  ids = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    ids[i, width - n:] = rng.integers(1, vocab, n)
    mask[i, width - n:] = 1
  return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name):
  hf = hf_model(name)
  model = jax_twin(hf)
  ids = np.random.default_rng(0).integers(0, hf.config.vocab_size, (2, 11)).astype(np.int32)
  ours = model(jnp.asarray(ids))
  assert ours.dtype == jnp.float32 and ours.shape == (2, 11, hf.config.vocab_size)
  diff = max_diff(ours, hf_logits(hf, ids))
  print(f"{name}: max |logits diff| = {diff:.2e}")
  assert diff <= TOL
  out = model.forward(jnp.asarray(ids))
  assert out.hidden_states.shape == (2, 11, hf.config.hidden_size) and out.cache is None
  np.testing.assert_allclose(model.forward(inputs_embeds=model.embed(jnp.asarray(ids))).logits, ours,
                             atol=1e-6)


def test_state_dict_round_trip():
  hf = hf_model("gqa")
  back = to_hf_state_dict(jax_twin(hf))
  for key, value in hf.state_dict().items():
    np.testing.assert_array_equal(back[key], value.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_matches_transformers_and_unpadded(side):
  hf = hf_model("gqa")
  model = jax_twin(hf)
  rng = np.random.default_rng(1)
  lengths, width = [9, 5, 1], 9
  ids, mask = left_padded(rng, hf.config.vocab_size, lengths, width)
  if side == "right":
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
    for i, n in enumerate(lengths):  # keep token order, padding at the end
      ids[i, :n] = ids[i, :n][::-1]
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  ours = np.asarray(model.forward(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
  theirs = hf_logits(hf, ids, mask, positions)
  real = mask.astype(bool)
  diff = max_diff(ours[real], theirs[real])
  print(f"{side} padding: max |diff| = {diff:.2e}")
  assert diff <= TOL and np.isfinite(ours).all()
  for i, n in enumerate(lengths):  # padding changes nothing for the real tokens
    alone = np.asarray(model(jnp.asarray(ids[i][real[i]][None])))[0]
    assert max_diff(ours[i][real[i]], alone) <= TOL


def hf_cached_decode(hf, ids, mask, steps_ids):
  """HF prefill then one token per step, with left padding handled by mask + positions."""
  mask_t = torch.as_tensor(mask)
  pos = torch.clamp(mask_t.cumsum(1) - 1, min=0)
  with torch.no_grad():
    out = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=mask_t,
             position_ids=pos, use_cache=True)
    logits, past, next_pos = [out.logits.numpy()], out.past_key_values, pos[:, -1:] + 1
    for tok in steps_ids.T:
      mask_t = torch.cat([mask_t, torch.ones_like(mask_t[:, :1])], 1)
      out = hf(input_ids=torch.as_tensor(tok[:, None], dtype=torch.long), attention_mask=mask_t,
               position_ids=next_pos, past_key_values=past, use_cache=True)
      logits.append(out.logits.numpy())
      past, next_pos = out.past_key_values, next_pos + 1
  return np.concatenate(logits, 1)


@pytest.mark.slow
def test_kv_cache_matches_transformers_and_uncached():
  hf = hf_model("gqa")
  model = jax_twin(hf)
  rng = np.random.default_rng(2)
  ids, mask = left_padded(rng, hf.config.vocab_size, [6, 3], 6)
  steps = rng.integers(1, hf.config.vocab_size, (2, 4)).astype(np.int32)
  theirs = hf_cached_decode(hf, ids, mask, steps)

  step = nnx.jit(lambda m, tok, c: m.forward(tok, cache=c))
  cache = model.init_cache(2, 16)
  out = model.forward(jnp.asarray(ids), attention_mask=jnp.asarray(mask), cache=cache)
  logits, cache = [out.logits], out.cache
  for tok in steps.T:
    out = step(model, jnp.asarray(tok[:, None]), cache)
    logits.append(out.logits)
    cache = out.cache
  ours = np.asarray(jnp.concatenate(logits, 1))
  assert int(cache.index) == 10 and cache.next_position.tolist() == [10, 7]

  full_mask = np.concatenate([mask, np.ones_like(steps)], 1).astype(bool)
  diff = max_diff(ours[full_mask], theirs[full_mask])
  print(f"cached decode vs HF cached: max |diff| = {diff:.2e}")
  assert diff <= TOL
  uncached = np.asarray(model.forward(jnp.asarray(np.concatenate([ids, steps], 1)),
                                      attention_mask=jnp.asarray(full_mask)).logits)
  diff = max_diff(ours[full_mask], uncached[full_mask])
  print(f"cached vs uncached: max |diff| = {diff:.2e}")
  assert diff <= TOL


@pytest.mark.slow
def test_bf16_compute_is_close_to_fp32():
  hf = hf_model("mha")
  model = jax_twin(hf)
  bf16 = jax_twin(hf, dtype="bfloat16")
  ids = jnp.asarray(np.random.default_rng(3).integers(0, 97, (2, 8)), jnp.int32)
  ref = np.asarray(model(ids))
  low = bf16.forward(ids)
  assert low.logits.dtype == jnp.float32 and low.hidden_states.dtype == jnp.bfloat16
  assert bf16.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
  diff = max_diff(low.logits, ref)
  print(f"bf16 vs fp32: max |diff| = {diff:.3f} (logit scale {np.abs(ref).max():.2f})")
  assert diff <= 0.05 * np.abs(ref).max()
  # cached bf16 decoding agrees with the bf16 forward
  cache = bf16.init_cache(2, 8)
  assert cache.k[0].dtype == jnp.bfloat16
  first = bf16.forward(ids[:, :5], cache=cache)
  second = bf16.forward(ids[:, 5:], cache=first.cache)
  np.testing.assert_allclose(np.asarray(jnp.concatenate([first.logits, second.logits], 1)),
                             np.asarray(low.logits), atol=0.05 * np.abs(ref).max())


@pytest.mark.slow
def test_remat_jit_and_sharded_forward_agree():
  hf = hf_model("mha")
  model = jax_twin(hf)
  ids = jnp.asarray(np.random.default_rng(4).integers(0, 97, (8, 6)), jnp.int32)
  ref = np.asarray(model(ids))
  remat = jax_twin(hf, remat=True)
  loss = nnx.jit(nnx.grad(lambda m: m(ids).mean()))
  grads = loss(remat)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(remat, ids)), ref, atol=TOL)
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  mesh_lib.shard_model(model, mesh)
  assert tuple(model.model.layers[0].self_attn.q_proj.kernel[...].sharding.spec) == ("fsdp", "tensor")
  with jax.set_mesh(mesh):
    sharded = nnx.jit(lambda m, x: m(x))(model, jax.device_put(ids, mesh_lib.batch_sharding(mesh, 2)))
  np.testing.assert_allclose(np.asarray(sharded), ref, atol=TOL)


def test_from_hf_dict_reads_v4_and_v5_configs():
  v4 = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
            max_position_embeddings=2048, torch_dtype="float16", rope_scaling=None)
  assert LlamaConfig.from_hf_dict(v4, dtype="bfloat16") == vicuna_7b()
  hf = hf_model("gqa").config.to_dict()
  cfg = LlamaConfig.from_hf_dict(hf)
  assert (cfg.rope_theta, cfg.head_dim, cfg.num_key_value_heads) == (500.0, 16, 2)
  with pytest.raises(ValueError, match="RoPE"):
    LlamaConfig.from_hf_dict({**v4, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})


def test_vicuna_7b_abstract_init_has_llama_7b_parameter_count():
  cfg = vicuna_7b()  # vocab 32000, as LLaMA-7B / Vicuna-7B v1.1
  abstract = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert sum(int(np.prod(x.shape)) for x in leaves) == 6_738_415_616
  shardings = mesh_lib.state_shardings(nnx.state(abstract), mesh_lib.make_mesh(fsdp=4, tensor=2))
  spec = shardings["model"]["layers"][0]["mlp"]["down_proj"]["kernel"].get_value().spec
  assert tuple(spec) == ("tensor", "fsdp")


def test_config_is_hashable_and_validates():
  cfg = dataclasses.replace(vicuna_7b(), num_hidden_layers=2)
  assert hash(cfg) == hash(dataclasses.replace(cfg))
  with pytest.raises(ValueError, match="multiple"):
    LlamaConfig(num_attention_heads=6, num_key_value_heads=4)


def test_auto_attention_takes_cudnn_only_on_gpu_in_half_precision(monkeypatch):
  from fifa_jax.models import llama as L

  cfg = L.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1)
  assert cfg.attention_implementation == "auto"
  assert L.attention_implementation(cfg) is None  # CPU
  monkeypatch.setattr(L.jax, "default_backend", lambda: "gpu")
  assert L.attention_implementation(dataclasses.replace(cfg, dtype="bfloat16")) == "cudnn"
  assert L.attention_implementation(cfg) is None  # fp32: cuDNN's flash kernel needs half precision
  assert L.attention_implementation(dataclasses.replace(cfg, attention_implementation="xla")) == "xla"


@pytest.mark.slow
@pytest.mark.parametrize("t,chunks", [(16, 2), (16, 4), (15, 2), (8, 1)])
def test_chunked_causal_attention_equals_dense(t, chunks):
  """The XLA path skips blocks above the diagonal; it must equal dense causal attention
  with key padding, with grouped-query heads, for any chunking (odd T falls back to 1)."""
  from fifa_jax.models.llama import causal_attention
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((3, t, 6, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((3, t, 2, 16)), jnp.float32) for _ in range(2))
  key_mask = np.ones((3, t), bool)
  key_mask[1, :5] = False  # left padding
  key_mask[2, t - 3:] = False  # right padding
  key_mask = jnp.asarray(key_mask)
  real = key_mask[:, :, None, None]  # padding queries see no key; their output is unused

  def ours(q):
    return jnp.where(real, causal_attention(q, k, v, key_mask, chunks=chunks), 0.0)

  def dense(q):
    return jnp.where(real, jax.nn.dot_product_attention(
        q, k, v, mask=key_mask[:, None, None, :], is_causal=True, implementation="xla"), 0.0)

  assert max_diff(ours(q), dense(q)) < 1e-5
  gq, gr = (jax.grad(lambda q, f=f: (f(q) ** 2).sum())(q) for f in (ours, dense))
  assert max_diff(gq, gr) < 1e-4


@pytest.mark.slow
def test_scanned_layers_match_transformers_and_convert_by_layer_keys(tmp_path):
  """scan_layers stacks the decoder layers [L, ...] and scans them; the logits, cached
  decoding and gradients equal the unrolled model's, and checkpoints keep HF's
  per-layer keys in both directions (merged LoRA and PEFT adapters included)."""
  from fifa_jax.convert import peft
  from fifa_jax.models.lora import LoraConfig, lora_layers

  hf = hf_model("gqa")
  lora = LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj", "down_proj"))
  flat_model = jax_twin(hf, lora=lora)
  scanned = jax_twin(hf, lora=lora, scan_layers=True)
  layers = hf.config.num_hidden_layers
  assert scanned.model.layers.self_attn.q_proj.kernel[...].shape[0] == layers
  names = scanned.model.layers.mlp.up_proj.kernel.get_metadata()["out_sharding"]
  assert names == ("layers", "embed", "mlp")
  # The same adapters in both: layer i of the stack = unrolled layer i.
  rng = np.random.default_rng(0)
  for (path, stacked) in lora_layers(scanned):
    a = rng.normal(size=stacked.lora_a[...].shape).astype(np.float32) * 0.1
    b = rng.normal(size=stacked.lora_b[...].shape).astype(np.float32) * 0.1
    stacked.lora_a[...], stacked.lora_b[...] = jnp.asarray(a), jnp.asarray(b)
    sub = path[2:]  # (self_attn|mlp, proj)
    for i in range(layers):
      m = flat_model.model.layers[i]
      for p in sub:
        m = getattr(m, p)
      m.lora_a[...], m.lora_b[...] = jnp.asarray(a[i]), jnp.asarray(b[i])

  # Base weights export to exactly HF's tensors, key by key.
  theirs = {k: v.numpy() for k, v in hf.state_dict().items() if "rotary" not in k}
  ours = to_hf_state_dict(scanned)
  assert sorted(ours) == sorted(theirs)
  for k in theirs:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
  # Merged LoRA and PEFT adapters: the same files as the unrolled model's.
  merged_s, merged_f = to_hf_state_dict(scanned, merge_lora=True), to_hf_state_dict(flat_model, merge_lora=True)
  for k in merged_f:
    np.testing.assert_allclose(merged_s[k], merged_f[k], rtol=0, atol=1e-6, err_msg=k)
  # PEFT adapters: per-layer keys, the same tensors as the unrolled model's.
  peft.save_adapter(scanned, tmp_path / "scanned")
  peft.save_adapter(flat_model, tmp_path / "flat")
  from safetensors.numpy import load_file
  ad_s, ad_f = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("scanned", "flat"))
  assert sorted(ad_s) == sorted(ad_f) and any(".layers.1." in k for k in ad_s)
  for k in ad_f:
    np.testing.assert_array_equal(ad_s[k], ad_f[k], err_msg=k)

  rng = np.random.default_rng(3)
  ids, mask = left_padded(rng, hf.config.vocab_size, [9, 6], 10)
  a = flat_model.forward(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
  b = scanned.forward(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
  assert max_diff(a, b) < 1e-5
  # Cached decoding through the scanned stack equals the uncached forward.
  cache = scanned.init_cache(2, 12)
  assert cache.k.shape[0] == layers
  out = scanned.forward(jnp.asarray(ids[:, :7]), attention_mask=jnp.asarray(mask[:, :7]), cache=cache)
  out = scanned.forward(jnp.asarray(ids[:, 7:]), attention_mask=jnp.asarray(mask[:, 7:]), cache=out.cache)
  assert max_diff(out.logits, b[:, 7:]) < 1e-5

  # Gradients w.r.t. the adapters, with remat on, equal the unrolled model's (jitted).
  def grads(model):
    gd, lo, rest = nnx.split(model, nnx.LoRAParam, ...)
    def loss(lo, rest):  # pure dicts in and out, as the train step does
      return (nnx.merge(gd, lo, rest).forward(jnp.asarray(ids)).logits ** 2).mean()
    return jax.jit(jax.grad(loss))(nnx.to_pure_dict(lo), nnx.to_pure_dict(rest))
  remat = dataclasses.replace(scanned.config, remat=True)
  scanned.config = remat
  gs, gf = grads(scanned), grads(flat_model)
  q_s = np.asarray(gs["model"]["layers"]["self_attn"]["q_proj"]["lora_b"])
  for i in range(layers):
    q_f = np.asarray(gf["model"]["layers"][i]["self_attn"]["q_proj"]["lora_b"])
    np.testing.assert_allclose(q_s[i], q_f, rtol=1e-4, atol=1e-6)
