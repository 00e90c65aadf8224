"""The model kinds a fifa-jax model folder can hold, and loading any of them.

The folder format itself (fifa_jax.json + state/) and its reading and writing live
in `fifa_jax.checkpoint`; the names below stay for code written against this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flax import nnx

from fifa_jax.checkpoint import (FORMAT, MARKER, WEIGHTS, CheckpointError,  # noqa: F401
                                 config_from_dict, config_to_dict, read_meta)
from fifa_jax.checkpoint import is_model_folder as is_checkpoint  # noqa: F401
from fifa_jax.checkpoint import restore_model as restore  # noqa: F401
from fifa_jax.checkpoint import save_model as save  # noqa: F401


def kinds() -> dict[str, tuple[type, Any]]:
  """kind -> (config class, make(config)); imported lazily (models pull in jax)."""
  from fifa_jax.convert.sam import SamDecoder, SamDecoderConfig  # noqa: PLC0415
  from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM  # noqa: PLC0415
  from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415
  from fifa_jax.models.llava import LlavaConfig, LlavaPolicy  # noqa: PLC0415
  from fifa_jax.models.vit import ViTConfig, VisionTransformer  # noqa: PLC0415

  return {"llama": (LlamaConfig, lambda c: LlamaForCausalLM(c, rngs=nnx.Rngs(0))),
          "vit": (ViTConfig, lambda c: VisionTransformer(c, rngs=nnx.Rngs(0))),
          "sam": (SamDecoderConfig, lambda c: SamDecoder(c, rngs=nnx.Rngs(0))),
          "fifa": (FiFaConfig, lambda c: FiFaMLLM(c, rngs=nnx.Rngs(0))),
          "llava": (LlavaConfig, lambda c: LlavaPolicy(c, rngs=nnx.Rngs(0)))}


def load(path: str | Path, kind: str | None = None) -> tuple[str, Any, nnx.Module]:
  """Any fifa-jax model folder -> (kind, config, model)."""
  meta = read_meta(path)
  table = kinds()
  if meta["kind"] not in table:
    raise CheckpointError(f"{path}: unknown kind {meta['kind']!r}")
  cls, make = table[meta["kind"]]
  config, model = restore(path, make, cls, kind=kind)
  return meta["kind"], config, model
