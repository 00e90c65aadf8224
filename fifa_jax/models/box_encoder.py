"""Box Encoder (Figure 3, eq. 2): a box prompt -> one token B in R^{D_B}.

Four Face Encoder layers become a ViTDet-style simple feature pyramid (strides
p/4, p/2, p, 2p for patch size p: two deconvs / one deconv / identity / max-pool),
RoIAlign pools every level, and the levels are aggregated as in GLaMM's region
encoder (a 3x3 conv per level, summed, ReLU, flatten, linear) plus an MLP
embedding of the normalised box coordinates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fifa_jax import mesh as mesh_lib
from fifa_jax.models.layers import Deconv, LayerNorm, as_dtype, gelu, linear, torch_default


def _axis_weights(start: jax.Array, length: jax.Array, n_out: int, size: int,
                  sampling_ratio: int, max_samples: int) -> jax.Array:
  """Averaged bilinear weights [..., n_out, size] along one axis of RoIAlign.

  Bilinear sampling, the out-of-range rule and the per-bin average all factor
  into a row part and a column part, so RoIAlign is Wy @ F @ Wx^T: two dense
  contractions instead of gathers (static shapes, MXU-friendly, exact).
  """
  bin_size = length / n_out
  if sampling_ratio > 0:
    grid = jnp.full(start.shape, sampling_ratio, jnp.int32)
  else:  # adaptive, capped at the static number of sample slots
    grid = jnp.clip(jnp.ceil(bin_size).astype(jnp.int32), 0, max_samples)
  g = jnp.maximum(grid, 1).astype(start.dtype)[..., None, None]
  p = jnp.arange(n_out, dtype=start.dtype)[:, None]
  i = jnp.arange(max_samples, dtype=start.dtype)[None, :]
  c = start[..., None, None] + p * bin_size[..., None, None] + (i + 0.5) * bin_size[..., None, None] / g
  used = (i < grid[..., None, None]) & (c >= -1.0) & (c <= size)  # zero outside [-1, size]
  c = jnp.maximum(c, 0.0)
  low = jnp.floor(c).astype(jnp.int32)
  edge = low >= size - 1
  low = jnp.where(edge, size - 1, low)
  high = jnp.where(edge, size - 1, low + 1)
  frac = jnp.where(edge, 0.0, c - low)
  w = (jax.nn.one_hot(low, size, dtype=start.dtype) * (1.0 - frac)[..., None]
       + jax.nn.one_hot(high, size, dtype=start.dtype) * frac[..., None])
  return (w * used[..., None]).sum(-2) / g


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int | tuple[int, int],
              spatial_scale: float, sampling_ratio: int = -1, aligned: bool = True,
              max_samples: int | None = None) -> jax.Array:
  """RoIAlign with Mask R-CNN / torchvision.ops.roi_align semantics.

  features [B, H, W, C]; boxes [B, K, 4] as (x1, y1, x2, y2) in image pixels;
  returns [B, K, oh, ow, C].  `sampling_ratio <= 0` samples ceil(roi/bin) points
  per bin (adaptive); because shapes are static the count is capped at
  `max_samples` (default: enough for any box inside the feature map; a bigger
  box gets `max_samples` evenly spaced points instead).
  """
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  _, h, w, _ = features.shape
  boxes = boxes.astype(jnp.float32) * spatial_scale - (0.5 if aligned else 0.0)
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  rw, rh = x2 - x1, y2 - y1
  if not aligned:  # legacy behaviour: force malformed RoIs to be 1x1
    rw, rh = jnp.maximum(rw, 1.0), jnp.maximum(rh, 1.0)
  sy = sx = sampling_ratio
  if sampling_ratio <= 0:
    sy = max_samples or max(1, math.ceil(h / oh))
    sx = max_samples or max(1, math.ceil(w / ow))
  wy = _axis_weights(y1, rh, oh, h, sampling_ratio, sy)  # [B, K, oh, H]
  wx = _axis_weights(x1, rw, ow, w, sampling_ratio, sx)  # [B, K, ow, W]
  dt = features.dtype
  rows = jnp.einsum("bkph,bhwc->bkpwc", wy.astype(dt), features)
  return jnp.einsum("bkqw,bkpwc->bkpqc", wx.astype(dt), rows)


@dataclasses.dataclass(frozen=True)
class BoxEncoderConfig:
  vit_width: int = 768
  patch_size: int = 16
  layers: tuple[int, ...] = (3, 6, 9, 12)  # -> strides p/4, p/2, p, 2p
  channels: int = 256  # pyramid width
  output_size: int = 7  # RoIAlign bins per side
  sampling_ratio: int = 2  # fixed, as GLaMM's RoIAlign (static cost)
  out_dim: int = 1024  # D_B
  layer_norm_eps: float = 1e-6  # ViTDet's LayerNorm2d
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def strides(self) -> tuple[float, ...]:
    p = self.patch_size
    return (p / 4, p / 2, p, 2 * p)

  @classmethod
  def paper(cls, **kw) -> BoxEncoderConfig:
    return cls(**kw)

  @classmethod
  def tiny(cls, **kw) -> BoxEncoderConfig:
    return cls(**{**dict(vit_width=64, layers=(1, 2, 3, 4), channels=16, output_size=3,
                         out_dim=32), **kw})


class PyramidLevel(nnx.Module):
  """One level of ViTDet's simple pyramid: rescale, then 1x1 conv + LayerNorm."""

  def __init__(self, cfg: BoxEncoderConfig, level: int, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    d, half = cfg.vit_width, cfg.vit_width // 2
    self.level = level
    if level == 0:  # stride p/4: deconv, LN, GELU, deconv
      self.up1 = Deconv(d, half, **kw)
      self.norm_up = LayerNorm(half, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
      self.up2 = Deconv(half, half // 2, **kw)
      d = half // 2
    elif level == 1:  # stride p/2
      self.up1 = Deconv(d, half, **kw)
      d = half
    self.lateral = linear(d, cfg.channels, ("conv_in", "conv_out"), **kw)
    self.norm = LayerNorm(cfg.channels, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype,
                          rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.level == 0:
      x = self.up2(gelu(self.norm_up(self.up1(x))))
    elif self.level == 1:
      x = self.up1(x)
    elif self.level == 3:  # stride 2p
      x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return self.norm(self.lateral(x))


class BoxEncoder(nnx.Module):
  """`encoder(states, boxes, image_hw) -> [B, K, D_B]`.

  `states`: the 4 chosen Face Encoder hidden states [B, 1 + gh*gw, width]
  (class token first); `boxes` [B, K, 4] in image pixels (x1, y1, x2, y2).
  """

  def __init__(self, cfg: BoxEncoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.levels = nnx.List([PyramidLevel(cfg, i, rngs=rngs) for i in range(4)])
    conv_init = mesh_lib.logical(torch_default, (None, None, "conv_in", "conv_out"))
    self.level_convs = nnx.List([
      nnx.Conv(cfg.channels, cfg.channels, (3, 3), padding="SAME", kernel_init=conv_init,
               bias_init=mesh_lib.logical(nnx.initializers.zeros_init(), ("conv_out",)),
               rngs=rngs, dtype=as_dtype(cfg.dtype), param_dtype=as_dtype(cfg.param_dtype))
      for _ in range(4)])
    self.flatten = linear(cfg.output_size ** 2 * cfg.channels, cfg.out_dim,
                          ("conv_out", "decoder_embed"), **kw)
    # Where the box is matters as much as what is inside it (GLaMM's pos_embedd).
    self.pos1 = linear(4, 256, (None, "decoder_mlp"), **kw)
    self.pos_norm1 = LayerNorm(256, eps=1e-5, param_dtype=cfg.param_dtype, rngs=rngs)
    self.pos2 = linear(256, cfg.out_dim, ("decoder_mlp", "decoder_embed"), **kw)
    self.pos_norm2 = LayerNorm(cfg.out_dim, eps=1e-5, param_dtype=cfg.param_dtype, rngs=rngs)

  def __call__(self, states: Sequence[jax.Array], boxes: jax.Array,
               image_hw: tuple[int, int]) -> jax.Array:
    cfg = self.config
    b, k, _ = boxes.shape
    gh, gw = image_hw[0] // cfg.patch_size, image_hw[1] // cfg.patch_size
    dt = as_dtype(cfg.dtype)
    pooled = 0.0
    for level, conv, x, stride in zip(self.levels, self.level_convs, states, cfg.strides):
      fmap = level(x[:, 1:].reshape(b, gh, gw, -1).astype(dt))
      roi = roi_align(fmap, boxes, cfg.output_size, 1.0 / stride, cfg.sampling_ratio)
      roi = roi.reshape(b * k, cfg.output_size, cfg.output_size, cfg.channels)
      pooled = pooled + conv(roi)
    feat = self.flatten(jax.nn.relu(pooled).reshape(b, k, -1))
    scale = jnp.asarray([image_hw[1], image_hw[0], image_hw[1], image_hw[0]], jnp.float32)
    pos = jax.nn.relu(self.pos1((boxes / scale).astype(dt)))
    pos = jax.nn.relu(self.pos2(self.pos_norm1(pos)))
    return feat + self.pos_norm2(pos)
