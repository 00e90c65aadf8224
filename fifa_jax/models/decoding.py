"""The decoding layout of a FiFa-MLLM: the same function, laid out for reading.

Training wants scanned LLM layers (compile time independent of depth), fp32 master
weights and separate LoRA adapters.  Decoding reads every weight once per new token,
so it is bound by memory traffic, and each of those choices costs it: measured on an
H200 (bench/RESULTS.md, paper-size model, batch 32), copies of each layer's slice of
the stacked weights took 48 % of decode time, the adapters add two small matmuls per
adapted projection, and fp32 weights move twice the bytes of bf16 ones.

`decoding_layout(model)` returns a new model with unrolled layers, each adapter folded
into its kernel (W + scale * A B) and parameters in `param_dtype`; buffers keep their
declared dtype.  The input model is left as it was.  Given a mesh, the transform runs
as one jitted program whose outputs are sharded by the training's logical-axis rules,
so a sharded model becomes a sharded model without passing whole through any device.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from fifa_jax import mesh as mesh_lib
from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM

LAYERS = ("llm", "model", "layers")


def decoding_config(cfg: FiFaConfig, param_dtype: str | None = None) -> FiFaConfig:
  """`cfg` with unrolled, adapter-free LLM layers and parameters in `param_dtype`
  (default: each part's compute dtype)."""
  def part(c):
    return dataclasses.replace(c, param_dtype=param_dtype or c.dtype)

  llama = dataclasses.replace(part(cfg.llama), scan_layers=False, lora=None, remat=False)
  return dataclasses.replace(part(cfg), vit=part(cfg.vit), box=part(cfg.box), llama=llama,
                             decoder=part(cfg.decoder), pixel=part(cfg.pixel))


def decoding_layout(model: FiFaMLLM, param_dtype: str | None = None, *,
                    mesh: Mesh | None = None) -> FiFaMLLM:
  """A copy of `model` in the decoding layout (see the module docstring), sharded
  over `mesh` by the logical-axis rules when one is given."""
  cfg = model.config
  target = nnx.eval_shape(lambda: FiFaMLLM(decoding_config(cfg, param_dtype), rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(target)
  scale = cfg.llama.lora.scale if cfg.llama.lora is not None else 0.0

  def fill(source, path, abstract):
    keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
    layer = None
    if cfg.llama.scan_layers and keys[:3] == LAYERS and isinstance(keys[3], int):
      layer, keys = keys[3], keys[:3] + keys[4:]  # slice `layer` of the stacked leaf
    parent = _walk(source, keys[:-1], path)
    take = (lambda x: x) if layer is None else (lambda x: x[layer])
    value = take(parent[keys[-1]])
    if keys[-1] == "kernel" and "lora_a" in parent:
      a, b = take(parent["lora_a"]), take(parent["lora_b"])
      value = value.astype(jnp.float32) + scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
    if value.shape != abstract.shape:
      raise ValueError(f"{jax.tree_util.keystr(path)}: shape {value.shape} in the model, "
                       f"{abstract.shape} in the decoding layout")
    return jnp.asarray(value, abstract.dtype)

  def transform(source):
    return jax.tree_util.tree_map_with_path(lambda p, a: fill(source, p, a), nnx.to_pure_dict(state))

  source = nnx.to_pure_dict(nnx.state(model))
  if mesh is None:
    values = transform(source)
  else:
    placed = nnx.to_pure_dict(mesh_lib.state_shardings(state, mesh))
    values = jax.jit(transform, out_shardings=placed)(source)
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


def _walk(tree: dict, keys: tuple, path) -> dict:
  for k in keys:
    if k not in tree:
      raise KeyError(f"{jax.tree_util.keystr(path)}: the model has no {k!r} here")
    tree = tree[k]
  return tree
