"""SAM / LISA / GLaMM mask-decoder weights -> the Multi-Task Decoder (and Pixel Decoder).

Key names are segment-anything's (`mask_decoder.transformer.layers.N.self_attn.q_proj.weight`,
`...norm1`, `...mlp.lin1`, `mask_decoder.transformer.final_attn_token_to_image`,
`norm_final_attn`, `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`,
`mask_decoder.output_upscaling.{0,1,3}`, `mask_decoder.output_hypernetworks_mlps.K.layers.J`),
optionally under GLaMM's `model.grounding_encoder.` or LISA's `model.visual_model.`.

What maps:
- the two-way transformer and SAM's Fourier matrix, always;
- output_upscaling and hypernetwork MLP K (default 0, the single-mask token LISA and
  GLaMM use) into the Pixel Decoder only when its config is `PixelDecoderConfig.sam()`
  (Faceptor's default decoder keeps D_de channels, SAM goes D -> D/4 -> D/8).
What stays freshly initialised: FiFa's task queries D, C, M, R, A (no SAM
counterpart), the Det./Cls. heads, and the Faceptor pixel decoder.
Skipped (reported): image_encoder, the rest of prompt_encoder, iou_token,
mask_tokens, iou_prediction_head, the other hypernetwork MLPs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from fifa_jax.convert import stream
from fifa_jax.convert.stream import ConversionError, Entry
from fifa_jax.models.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fifa_jax.models.two_way import MultiTaskDecoder, TwoWayConfig

log = logging.getLogger("fifa_jax.convert")

PREFIXES = ("base_model.model.", "model.grounding_encoder.", "model.visual_model.",
            "grounding_encoder.", "visual_model.")
PE_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_UPSCALING = {"up1": "output_upscaling.0", "norm": "output_upscaling.1", "up2": "output_upscaling.3"}


def normalise_key(key: str) -> str:
  for p in PREFIXES:
    key = key.removeprefix(p)
  return key


def decoder_entries(decoder: MultiTaskDecoder, prefix: str = "mask_decoder.",
                    pe_key: str = PE_KEY, queries: bool = False) -> list[Entry]:
  """The transformer under `prefix`, the Fourier matrix at `pe_key`; task queries
  (det_embed, ...) only if `queries` (SAM has none: they stay fresh)."""
  def name(path, owner):
    if path[0] == "transformer":
      key, perm = stream.torch_like(path, owner)
      return prefix + key, perm
    if path[0] == "pe_layer":
      return pe_key, None
    return (prefix + stream.path_str(path), None) if queries else None
  return stream.entries_for(decoder, name)


def is_sam_pixel(cfg: PixelDecoderConfig) -> bool:
  return (cfg.mid_dim, cfg.out_dim, cfg.final_gelu, cfg.query_mlp_layers) == (
      cfg.dim // 4, cfg.dim // 8, True, 3)


def pixel_entries(pixel: PixelDecoder, prefix: str = "mask_decoder.",
                  hypernetwork: int = 0) -> list[Entry]:
  """SAM's output_upscaling + one hypernetwork MLP, for a `PixelDecoderConfig.sam()`."""
  if not is_sam_pixel(pixel.config):
    raise ConversionError("SAM's output upscaling maps only into PixelDecoderConfig.sam(); "
                          "this pixel decoder stays freshly initialised")

  def name(path, owner):
    key, perm = stream.torch_like(path, owner)
    head, rest = key.split(".", 1)
    if head == "query_mlp":
      return prefix + f"output_hypernetworks_mlps.{hypernetwork}.{rest}", perm
    return prefix + f"{_UPSCALING[head]}.{rest}", perm
  return stream.entries_for(pixel, name)


def infer_config(source: stream.Source, heads: int = 8, **overrides) -> TwoWayConfig:
  """TwoWayConfig from shapes (heads are not in them: SAM's 8 by default)."""
  info = source.info
  p = "mask_decoder.transformer.layers.0."
  if p + "self_attn.q_proj.weight" not in info:
    raise ConversionError(f"missing key {p + 'self_attn.q_proj.weight'!r}: not a SAM mask decoder")
  dim = info[p + "self_attn.q_proj.weight"].shape[1]
  inner = info[p + "cross_attn_token_to_image.q_proj.weight"].shape[0]
  depth = 1 + max(int(k.split(".")[3]) for k in info
                  if k.startswith("mask_decoder.transformer.layers."))
  kw = dict(depth=depth, dim=dim, heads=heads, mlp_dim=info[p + "mlp.lin1.weight"].shape[0],
            attention_downsample_rate=dim // inner)
  return TwoWayConfig(**{**kw, **overrides})


@dataclasses.dataclass(frozen=True)
class SamDecoderConfig:
  decoder: TwoWayConfig
  pixel: PixelDecoderConfig | None = None  # PixelDecoderConfig.sam(dim) to load upscaling
  hypernetwork: int = 0  # which of SAM's mask-token MLPs becomes the query MLP


class SamDecoder(nnx.Module):
  """SAM's mask decoder weights as fifa-jax modules: `decoder` (+ `pixel_decoder`).

  `model(image [N, h*w, D], grid, tokens [N, Q, D])` -> (tokens', image', mask
  logits of token 0 [N, 4h, 4w] or None without a pixel decoder).
  """

  def __init__(self, config: SamDecoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.decoder = MultiTaskDecoder(config.decoder, rngs=rngs)
    self.pixel_decoder = None if config.pixel is None else PixelDecoder(config.pixel, rngs=rngs)

  def __call__(self, image: jax.Array, grid: tuple[int, int], tokens: jax.Array):
    q, k = self.decoder.run(image, grid, tokens)
    if self.pixel_decoder is None:
      return q, k, None
    masks = self.pixel_decoder.mask_logits(self.pixel_decoder(k, grid), q[:, :1])[:, 0]
    return q, k, masks


def entries(model: SamDecoder) -> list[Entry]:
  out = stream.prefixed(decoder_entries(model.decoder), "", ("decoder",))
  if model.pixel_decoder is not None:
    out += stream.prefixed(pixel_entries(model.pixel_decoder, hypernetwork=model.config.hypernetwork),
                           "", ("pixel_decoder",))
  return out


def _ignore(key: str) -> bool:
  """Unused keys inside the transformer are errors (a misnamed layer); the rest is SAM
  machinery FiFa does not use."""
  return not key.startswith("mask_decoder.transformer.")


def split_sam(source: stream.Source) -> tuple[stream.Source, list[str]]:
  skipped = []

  def keep(key: str) -> str | None:
    k = normalise_key(key)
    if k.startswith("mask_decoder.") or k == PE_KEY:
      return k
    skipped.append(key)
    return None
  return source.rename(keep), skipped


def load_pth(path: str | Path, *, config: SamDecoderConfig | None = None, pixel: bool = False,
             hypernetwork: int = 0, heads: int = 8, param_dtype: Any = None,
             dtype: Any = "float32", allow_pickle: bool = False, progress: bool = False,
             seed: int = 0) -> tuple[SamDecoderConfig, SamDecoder]:
  """A segment-anything / LISA / GLaMM checkpoint (.pth, .bin, .safetensors) ->
  (config, SamDecoder).  `pixel` also loads SAM's upscaling into a sam() Pixel Decoder."""
  raw = stream.open_source(path, subkey="state_dict", allow_pickle=allow_pickle)
  try:
    source, skipped = split_sam(raw)
    if config is None:
      stored = next(iter(source.info.values())).dtype if source.info else "float32"
      kw = dict(dtype=str(stream.np_dtype(dtype)),
                param_dtype=str(stream.np_dtype(param_dtype or str(stored))))
      dec = infer_config(source, heads, **kw)
      config = SamDecoderConfig(dec, PixelDecoderConfig.sam(dec.dim, **kw) if pixel else None,
                                hypernetwork)
    cfg = config
    with stream.progress_bar(len(source.keys()), "sam", progress) as bar:
      loaded = stream.load(lambda: SamDecoder(cfg, rngs=nnx.Rngs(seed)), entries, source,
                           ignore=_ignore, progress=bar)
  finally:
    raw.close()
  unused = skipped + loaded.ignored
  log.info("SAM: skipped %d tensors; fresh: %s", len(unused),
           sorted({stream.path_str(p[:2]) for p in loaded.fresh}))
  return config, loaded.model


# In order: HF's MLPs are proj_in, layers.0, proj_out = segment-anything's layers.0, 1, 2,
# so layers.0 moves to layers.1 before proj_in takes its place.
_HF_RENAMES = [
    (r"^shared_image_embedding\.positional_embedding$", PE_KEY),
    (r"\.layer_norm(\d)\.", r".norm\1."),
    (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    (r"\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.", r".\1.layers.1."),
    (r"\.proj_in\.", ".layers.0."),
    (r"\.proj_out\.", ".layers.2."),
]


def hf_sam_to_segment_anything(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """transformers SamModel keys -> segment-anything names (mask decoder and PE only)."""
  out = {}
  for k, v in state_dict.items():
    if not (k.startswith("mask_decoder.") or k.startswith("shared_image_embedding.")):
      continue
    for pat, rep in _HF_RENAMES:
      k = re.sub(pat, rep, k)
    out[k] = stream.torch_to_numpy(v) if hasattr(v, "detach") else np.asarray(v)
  return out


def load_state_dict(model: SamDecoder, state_dict: Mapping[str, Any]) -> SamDecoder:
  """Copy an in-memory segment-anything state dict into `model` in place."""
  source, _ = split_sam(stream.dict_source(state_dict))
  stream.assign(model, entries(model), source, ignore=_ignore)
  return model
