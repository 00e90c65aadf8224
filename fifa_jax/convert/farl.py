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
import re
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


# transformers' CLIPVisionModel -> OpenAI CLIP names (models/vit.py keeps OpenAI's).
_HF_TOP = {"embeddings.patch_embedding.weight": "conv1.weight",
           "embeddings.class_embedding": "class_embedding",
           "embeddings.position_embedding.weight": "positional_embedding",
           "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",
           "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias"}
_HF_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
             "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_HF_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$")


def hf_clip_source(hf: stream.Source) -> stream.Source:
  """A view of CLIPVisionModel keys (without `vision_model.`) under OpenAI names; q/k/v
  are concatenated into `in_proj` when read, one layer at a time."""
  plan: dict[str, list[str]] = {}  # OpenAI key -> HF keys, concatenated along axis 0
  for key in hf.keys():
    if key in _HF_TOP:
      plan[_HF_TOP[key]] = [key]
      continue
    m = _HF_LAYER_KEY.match(key)
    if not m:
      raise ConversionError(f"unexpected CLIP vision key {key!r}")
    i, module, leaf = m.groups()
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
      plan.setdefault(f"transformer.resblocks.{i}.attn.in_proj_{leaf}",
                      [f"encoder.layers.{i}.self_attn.{x}_proj.{leaf}" for x in "qkv"])
    elif module in _HF_LAYER:
      plan[f"transformer.resblocks.{i}.{_HF_LAYER[module]}.{leaf}"] = [key]
    else:
      raise ConversionError(f"unexpected CLIP vision key {key!r}")
  info = {}
  for key, parts in plan.items():
    missing = [p for p in parts if p not in hf]
    if missing:
      raise ConversionError(f"the CLIP tower lacks {missing[0]!r} (needed for {key!r})")
    first = hf.info[parts[0]]
    info[key] = stream.TensorInfo((sum(hf.info[p].shape[0] for p in parts), *first.shape[1:]),
                                  first.dtype)

  def read(key: str) -> np.ndarray:
    parts = plan[key]
    return hf.read(parts[0]) if len(parts) == 1 else np.concatenate([hf.read(p) for p in parts])
  return stream.Source(info, read, close=hf.close, metadata=hf.metadata)


def hf_clip_to_openai(state_dict: Mapping[str, Any], proj: Any = None) -> dict[str, np.ndarray]:
  """transformers CLIPVisionModel / CLIPModel vision keys -> OpenAI `visual.*` names, in memory.

  q/k/v are concatenated into in_proj; `proj` is CLIPModel's `visual_projection.weight`
  transposed, or given (CLIPVisionModel has none).
  """
  tower = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
  vision = {k.removeprefix("vision_model."): v for k, v in state_dict.items()
            if k.removeprefix("vision_model.").startswith(tower)}  # CLIPModel's text side is not
  view = hf_clip_source(stream.dict_source(vision))
  out = {k: view.read(k) for k in view.keys()}
  if proj is None and "visual_projection.weight" in state_dict:
    proj = stream.dict_source({"p": state_dict["visual_projection.weight"]}).read("p").T
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
