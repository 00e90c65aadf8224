"""Pixel Decoder (Figure 3, eq. 5) and the Det./Cls. output heads.

As Faceptor's map interpreter (the paper's stated reference): two 2x2 stride-2
transposed convolutions with a channel LayerNorm (eps 1e-6, SAM/ConvNeXt's
LayerNorm2d; Faceptor's `Norm2d` is the same op) and GELU between them, keeping
D_de channels, so P [N, 4h, 4w, D_de] is dotted directly with M_out.  The SAM
variant (channels D/4 then D/8, GELU after both, and a 3-layer ReLU hypernetwork
MLP on M_out) is the same module with other settings; the parity test uses it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fifa_jax.models.layers import Deconv, LayerNorm, as_dtype, gelu, linear


@dataclasses.dataclass(frozen=True)
class PixelDecoderConfig:
  dim: int = 256  # D_de
  mid_dim: int | None = None  # channels after the first deconv (None: dim)
  out_dim: int | None = None  # channels of P (None: dim)
  final_gelu: bool = False  # SAM applies GELU after the second deconv too
  query_mlp_layers: int = 0  # SAM's hypernetwork MLP on M_out; 0: dot with M_out itself
  layer_norm_eps: float = 1e-6
  det_classes: int = 2  # real / fake
  cls_classes: int = 5  # real + DFFD's four families (identity swap, expression
  #                       manipulation, attribute manipulation, entire synthesis)
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def faceptor(cls, **kw) -> PixelDecoderConfig:
    """The paper's Pixel Decoder."""
    return cls(**kw)

  @classmethod
  def sam(cls, dim: int = 256, **kw) -> PixelDecoderConfig:
    """SAM's output upscaling + hypernetwork, for parity with SAM/LISA weights."""
    return cls(**{**dict(dim=dim, mid_dim=dim // 4, out_dim=dim // 8, final_gelu=True,
                         query_mlp_layers=3), **kw})

  @classmethod
  def tiny(cls, **kw) -> PixelDecoderConfig:
    return cls(**{**dict(dim=32), **kw})


class Mlp(nnx.Module):
  """layers[0..n-1] with ReLU between (SAM's MLP with segment-anything names)."""

  def __init__(self, dims: list[int], *, rngs: nnx.Rngs, act=jax.nn.relu, **kw):
    self.act = act
    self.layers = nnx.List([
      linear(a, b, ("decoder_embed", "decoder_mlp"), rngs=rngs, **kw)
      for a, b in zip(dims[:-1], dims[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = self.act(x)
    return x


class PixelDecoder(nnx.Module):
  """`decoder(image' [N, h*w, D], (h, w)) -> P [N, 4h, 4w, C]`; masks = P . M_out."""

  def __init__(self, cfg: PixelDecoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    mid, out = cfg.mid_dim or cfg.dim, cfg.out_dim or cfg.dim
    self.up1 = Deconv(cfg.dim, mid, **kw)
    self.norm = LayerNorm(mid, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    self.up2 = Deconv(mid, out, **kw)
    if cfg.query_mlp_layers:
      dims = [cfg.dim] * cfg.query_mlp_layers + [out]
      self.query_mlp = Mlp(dims, **kw)
    elif out != cfg.dim:
      raise ValueError(f"P has {out} channels but M_out has {cfg.dim}: set query_mlp_layers")

  def __call__(self, image: jax.Array, grid: tuple[int, int]) -> jax.Array:
    n, _, d = image.shape
    x = image.astype(as_dtype(self.config.dtype)).reshape(n, grid[0], grid[1], d)
    x = self.up2(gelu(self.norm(self.up1(x))))
    return gelu(x) if self.config.final_gelu else x

  def mask_logits(self, pixels: jax.Array, queries: jax.Array) -> jax.Array:
    """P [N, H, W, C] . queries [N, Q, D] -> [N, Q, H, W]."""
    if self.config.query_mlp_layers:
      queries = self.query_mlp(queries)
    return jnp.einsum("nhwc,nqc->nqhw", pixels, queries.astype(pixels.dtype))


class Head(nnx.Module):
  """Det./Cls. output head: Linear, GELU, Linear on the D or C query output."""

  def __init__(self, dim: int, classes: int, *, rngs: nnx.Rngs, dtype: str = "float32",
               param_dtype: str = "float32"):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.fc1 = linear(dim, dim, ("decoder_embed", "decoder_mlp"), **kw)
    self.fc2 = linear(dim, classes, ("decoder_mlp", None), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(gelu(self.fc1(x)))
