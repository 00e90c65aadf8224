"""HF `LlamaForCausalLM` state dicts <-> fifa_jax `LlamaForCausalLM` (a minimal start).

The nnx model keeps HF's module names, so a key maps to a state path by splitting
on dots; linear weights are transposed (torch [out, in] vs nnx kernel [in, out]) and
`embed_tokens.weight` is nnx.Embed's `embedding`.  LoRA adapters are not touched:
merge them first (`models.lora.merge_lora`) to export a plain HF checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax.models.lora import BASE


def hf_key_to_path(key: str) -> tuple[tuple[str | int, ...], bool]:
  """'model.layers.0.self_attn.q_proj.weight' -> (path in the nnx state, transpose?)."""
  parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
  if parts[-1] != "weight":
    raise KeyError(f"unexpected LLaMA parameter {key!r}")
  parent = parts[-2]
  if parent == "embed_tokens":
    return tuple(parts[:-1]) + ("embedding",), False
  if isinstance(parent, str) and (parent.endswith("_proj") or parent == "lm_head"):
    return tuple(parts[:-1]) + ("kernel",), True
  return tuple(parts), False


def _to_numpy(x: Any) -> np.ndarray:
  if hasattr(x, "detach"):  # torch.Tensor; numpy has no bfloat16
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def load_hf_state_dict(model: nnx.Module, state_dict: Mapping[str, Any], *,
                       strict: bool = True) -> nnx.Module:
  """Copy HF-named weights (torch tensors or arrays) into `model` in place."""
  flat = dict(nnx.to_flat_state(nnx.state(model, BASE)))
  seen = set()
  for key, value in state_dict.items():
    if "rotary_emb" in key:
      continue
    if key == "lm_head.weight" and model.lm_head is None:
      continue  # tied: HF lists the shared embedding twice
    path, transpose = hf_key_to_path(key)
    if path not in flat:
      if strict:
        raise KeyError(f"{key!r} -> {path} has no place in the model")
      continue
    array = _to_numpy(value)
    array = array.T if transpose else array
    var = flat[path]
    if array.shape != var[...].shape:
      raise ValueError(f"{key}: shape {array.shape} != model {var[...].shape}")
    var[...] = jnp.asarray(array, var[...].dtype)
    seen.add(path)
  missing = set(flat) - seen
  if strict and missing:
    raise KeyError(f"weights missing from the state dict: {sorted(missing)[:5]}...")
  return model


def to_hf_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The base weights under HF names and layouts (numpy arrays)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, BASE)):
    array = np.asarray(var[...])
    name = ".".join(str(p) for p in path[:-1])
    if path[-1] == "kernel":
      array = array.T
    out[f"{name}.weight"] = array
  return out
