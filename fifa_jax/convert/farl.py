"""FaRL (OpenAI-CLIP layout) <-> the fifa-jax Face Encoder (models/vit.py).

FaRL's `FaRL-Base-Patch16-LAIONFace20M-ep*.pth` is `{"state_dict": {...}}` with the
image tower under `visual.` in OpenAI CLIP's names (conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks.N.{attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}, ln_post, proj)
beside the text tower, which is skipped.  models/vit.py keeps those names, so a
key maps by name; matrices are transposed and conv1 is permuted to HWIO.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from fifa_jax.convert import stream
from fifa_jax.convert.stream import ConversionError, Entry
from fifa_jax.models.vit import ViTConfig, VisionTransformer

log = logging.getLogger("fifa_jax.convert")

PREFIX = "visual."


def entries(encoder: VisionTransformer, prefix: str = "") -> list[Entry]:
  def name(path, owner):
    if path[-2:-1] == ("in_proj",):  # nn.MultiheadAttention's fused qkv
      tail = "in_proj_weight" if path[-1] == "kernel" else "in_proj_bias"
      return prefix + stream.path_str((*path[:-2], tail)), (
          stream.LINEAR if path[-1] == "kernel" else None)
    key, perm = stream.torch_like(path, owner)
    return prefix + key, perm
  return stream.entries_for(encoder, name)


def split_visual(source: stream.Source) -> tuple[stream.Source, list[str]]:
  """Keys of the image tower with `visual.` (and DDP's `module.`) stripped; the rest skipped."""
  skipped = []

  def keep(key: str) -> str | None:
    k = key.removeprefix("module.")
    if k.startswith(PREFIX):
      return k[len(PREFIX):]
    skipped.append(key)
    return None
  return source.rename(keep), skipped


def infer_config(source: stream.Source, heads: int | None = None, **overrides) -> ViTConfig:
  """ViTConfig from shapes; heads are not visible in them: width // 64 as OpenAI's ViTs."""
  info = source.info
  for k in ("conv1.weight", "positional_embedding", "proj"):
    if k not in info:
      raise ConversionError(f"missing key {PREFIX + k!r}: not a CLIP/FaRL image tower")
  width, _, patch, _ = info["conv1.weight"].shape
  grid = int(round((info["positional_embedding"].shape[0] - 1) ** 0.5))
  layers = 1 + max((int(k.split(".")[2]) for k in info if k.startswith("transformer.resblocks.")),
                   default=-1)
  mlp = info.get("transformer.resblocks.0.mlp.c_fc.weight")
  kw = dict(image_size=grid * patch, patch_size=patch, width=width, layers=layers,
            heads=heads or max(1, width // 64), output_dim=info["proj"].shape[1],
            mlp_ratio=mlp.shape[0] // width if mlp else 4)
  return ViTConfig(**{**kw, **overrides})


def load_pth(path: str | Path, *, config: ViTConfig | None = None, heads: int | None = None,
             param_dtype: Any = None, dtype: Any = "float32", allow_pickle: bool = False,
             progress: bool = False, seed: int = 0) -> tuple[ViTConfig, VisionTransformer]:
  """A FaRL/OpenAI-CLIP checkpoint -> (config, encoder); `encoder(pixels [B, H, W, 3])`
  (CLIP-normalised) -> last hidden states [B, 1 + H*W/p^2, width].

  .pth/.pt/.bin (torch) or .safetensors; `param_dtype` None keeps the checkpoint's.
  """
  raw = stream.open_source(path, subkey="state_dict", allow_pickle=allow_pickle)
  try:
    source, skipped = split_visual(raw)
    if config is None:
      stored = source.info["conv1.weight"].dtype if "conv1.weight" in source else "float32"
      pdt = param_dtype or str(stored)
      config = infer_config(source, heads, dtype=str(stream.np_dtype(dtype)),
                            param_dtype=str(stream.np_dtype(pdt)))
    cfg = config
    with stream.progress_bar(len(source.keys()), "farl", progress) as bar:
      loaded = stream.load(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(seed)), entries, source,
                           progress=bar)
  finally:
    raw.close()
  if skipped:
    log.info("skipped %d tensors outside visual. (the text tower)", len(skipped))
  return config, loaded.model


def save_pth(encoder: VisionTransformer, path: str | Path, *, dtype: Any = None) -> Path:
  """The encoder as FaRL saves it: .pth `{"state_dict": {"visual.*": ...}}` or .safetensors."""
  path = Path(path)
  tensors = stream.export(encoder, entries(encoder, PREFIX), dtype=dtype)
  if path.suffix == ".safetensors":
    stream.write_safetensors(path.parent, tensors, name=path.stem, max_shard_bytes=2 ** 62)
    return path
  import torch  # noqa: PLC0415

  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save({"state_dict": {t.key: _to_torch(t.produce()) for t in tensors}}, path)
  return path


def _to_torch(a: np.ndarray):
  import ml_dtypes  # noqa: PLC0415
  import torch  # noqa: PLC0415

  a = np.require(a, requirements="W")  # torch refuses read-only (jax-backed) buffers
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def hf_clip_to_openai(state_dict: Mapping[str, Any], proj: Any = None) -> dict[str, np.ndarray]:
  """transformers CLIPVisionModel / CLIPModel vision keys -> OpenAI `visual.*` names.

  q/k/v are concatenated into in_proj; `proj` is CLIPModel's `visual_projection.weight`
  transposed, or given (CLIPVisionModel has none).
  """
  t = {k.removeprefix("vision_model."): stream.torch_to_numpy(v) if hasattr(v, "detach")
       else np.asarray(v) for k, v in state_dict.items()}
  out = {
      "conv1.weight": t["embeddings.patch_embedding.weight"],
      "class_embedding": t["embeddings.class_embedding"],
      "positional_embedding": t["embeddings.position_embedding.weight"],
  }
  for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
    out[f"{ours}.weight"], out[f"{ours}.bias"] = t[f"{theirs}.weight"], t[f"{theirs}.bias"]
  n = 1 + max(int(k.split(".")[2]) for k in t if k.startswith("encoder.layers."))
  for i in range(n):
    p, q = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
    for kind in ("weight", "bias"):
      out[q + f"attn.in_proj_{kind}"] = np.concatenate(
          [t[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"], 0)
      for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("mlp.c_fc", "mlp.fc1"),
                           ("mlp.c_proj", "mlp.fc2"), ("ln_1", "layer_norm1"),
                           ("ln_2", "layer_norm2")):
        out[q + f"{ours}.{kind}"] = t[p + f"{theirs}.{kind}"]
  if proj is None and "visual_projection.weight" in t:
    proj = t["visual_projection.weight"].T
  if proj is not None:
    out["proj"] = np.asarray(proj)
  return {PREFIX + k: v for k, v in out.items()}


def load_state_dict(encoder: VisionTransformer, state_dict: Mapping[str, Any]) -> VisionTransformer:
  """Copy an in-memory `visual.*` state dict into `encoder` in place (strict)."""
  source, skipped = split_visual(stream.dict_source(state_dict))
  if skipped:
    raise ConversionError(f"unexpected keys outside visual.: {skipped[:5]}")
  stream.assign(encoder, entries(encoder), source)
  return encoder
