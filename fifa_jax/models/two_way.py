"""Multi-Task Decoder (Figure 3, eq. 4): SAM's two-way transformer over image tokens
and task queries.

Names follow segment-anything's `TwoWayTransformer` (layers[i].{self_attn, norm1,
cross_attn_token_to_image, norm2, mlp.{lin1, lin2}, norm3, norm4,
cross_attn_image_to_token}, final_attn_token_to_image, norm_final_attn; each
attention has q_proj/k_proj/v_proj/out_proj) and `PositionEmbeddingRandom`
(pe_layer.positional_encoding_gaussian_matrix), so SAM/LISA/GLaMM decoder weights
load by transposing matrices.

Task queries (Section 4.1/4.2): detection D, classification C and mask M are
learned; the semantic query is the Concept Embedding E from a [SEG] state plus
the learned Region R or Artifact A embedding, so one [SEG] gives two decoder
passes, [M, E+R] -> Region Mask and [M, E+A] -> Regional Artifact Mask.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax import mesh as mesh_lib
from fifa_jax.models.layers import LayerNorm, as_dtype, linear


class Buffer(nnx.Variable):
  """A saved, never-trained array (SAM registers its Fourier matrix as a buffer)."""


@dataclasses.dataclass(frozen=True)
class TwoWayConfig:
  depth: int = 2
  dim: int = 256  # D_de
  heads: int = 8
  mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  layer_norm_eps: float = 1e-5  # SAM's nn.LayerNorm default
  pe_scale: float = 1.0  # std of the random Fourier matrix
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def sam(cls, **kw) -> TwoWayConfig:
    """SAM's (and the paper's) mask decoder transformer."""
    return cls(**kw)

  @classmethod
  def tiny(cls, **kw) -> TwoWayConfig:
    return cls(**{**dict(dim=32, heads=4, mlp_dim=64), **kw})


class Attention(nnx.Module):
  """SAM attention: q/k/v projected to dim / downsample_rate, split into heads."""

  def __init__(self, cfg: TwoWayConfig, downsample_rate: int, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    inner = cfg.dim // downsample_rate
    if inner % cfg.heads:
      raise ValueError(f"{cfg.heads} heads do not divide the inner width {inner}")
    self.heads = cfg.heads
    self.q_proj = linear(cfg.dim, inner, ("decoder_embed", "decoder_mlp"), **kw)
    self.k_proj = linear(cfg.dim, inner, ("decoder_embed", "decoder_mlp"), **kw)
    self.v_proj = linear(cfg.dim, inner, ("decoder_embed", "decoder_mlp"), **kw)
    self.out_proj = linear(inner, cfg.dim, ("decoder_mlp", "decoder_embed"), **kw)

  def _split(self, x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-1], self.heads, x.shape[-1] // self.heads)

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    out = jax.nn.dot_product_attention(self._split(self.q_proj(q)), self._split(self.k_proj(k)),
                                       self._split(self.v_proj(v)))
    return self.out_proj(out.reshape(*out.shape[:-2], -1))


class MLPBlock(nnx.Module):

  def __init__(self, cfg: TwoWayConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.lin1 = linear(cfg.dim, cfg.mlp_dim, ("decoder_embed", "decoder_mlp"), **kw)
    self.lin2 = linear(cfg.mlp_dim, cfg.dim, ("decoder_mlp", "decoder_embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.lin2(jax.nn.relu(self.lin1(x)))


class TwoWayAttentionBlock(nnx.Module):
  """Token self-attention, tokens->image, MLP, image->tokens (post-LN)."""

  def __init__(self, cfg: TwoWayConfig, skip_first_layer_pe: bool, *, rngs: nnx.Rngs):
    ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    r = cfg.attention_downsample_rate
    self.skip_first_layer_pe = skip_first_layer_pe
    self.self_attn = Attention(cfg, 1, rngs=rngs)
    self.norm1 = LayerNorm(cfg.dim, **ln)
    self.cross_attn_token_to_image = Attention(cfg, r, rngs=rngs)
    self.norm2 = LayerNorm(cfg.dim, **ln)
    self.mlp = MLPBlock(cfg, rngs=rngs)
    self.norm3 = LayerNorm(cfg.dim, **ln)
    self.norm4 = LayerNorm(cfg.dim, **ln)
    self.cross_attn_image_to_token = Attention(cfg, r, rngs=rngs)

  def __call__(self, queries, keys, query_pe, key_pe):
    if self.skip_first_layer_pe:  # the first layer's queries *are* the prompt embeddings
      queries = self.self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self.self_attn(q, q, queries)
    queries = self.norm1(queries)
    k = keys + key_pe
    queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
    queries = self.norm3(queries + self.mlp(queries))
    q = queries + query_pe
    keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
    return queries, keys


class TwoWayTransformer(nnx.Module):
  """`(image [N, L, D], image_pe [N|1, L, D], tokens [N, Q, D]) -> (tokens', image')`."""

  def __init__(self, cfg: TwoWayConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([TwoWayAttentionBlock(cfg, i == 0, rngs=rngs) for i in range(cfg.depth)])
    self.final_attn_token_to_image = Attention(cfg, cfg.attention_downsample_rate, rngs=rngs)
    self.norm_final_attn = LayerNorm(cfg.dim, eps=cfg.layer_norm_eps,
                                     param_dtype=cfg.param_dtype, rngs=rngs)
    self.dtype = as_dtype(cfg.dtype)

  def __call__(self, image: jax.Array, image_pe: jax.Array, tokens: jax.Array):
    image, image_pe, tokens = (x.astype(self.dtype) for x in (image, image_pe, tokens))
    queries, keys = tokens, image
    for layer in self.layers:
      queries, keys = layer(queries, keys, tokens, image_pe)
    out = self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys)
    return self.norm_final_attn(queries + out), keys


class PositionEmbeddingRandom(nnx.Module):
  """SAM's dense positional encoding: random Fourier features of cell centres."""

  def __init__(self, dim: int, scale: float = 1.0, *, rngs: nnx.Rngs):
    self.positional_encoding_gaussian_matrix = Buffer(
      scale * jax.random.normal(rngs.params(), (2, dim // 2), jnp.float32))

  def encode(self, coords: jax.Array) -> jax.Array:
    """coords [..., 2] as (x, y) in [0, 1] -> [..., dim]."""
    c = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix[...]
    c = 2.0 * np.pi * c
    return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)

  def __call__(self, grid: tuple[int, int]) -> jax.Array:
    """[h*w, dim] for an h x w grid, row-major like the image tokens."""
    h, w = grid
    y, x = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    coords = np.stack([x, y], axis=-1).reshape(h * w, 2).astype(np.float32)
    return self.encode(jnp.asarray(coords))


class MultiTaskDecoder(nnx.Module):
  """Two-way transformer + the task queries D, C, M and the Region/Artifact offsets."""

  def __init__(self, cfg: TwoWayConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.transformer = TwoWayTransformer(cfg, rngs=rngs)
    self.pe_layer = PositionEmbeddingRandom(cfg.dim, cfg.pe_scale, rngs=rngs)
    init = mesh_lib.logical(nnx.initializers.normal(1.0), ("decoder_embed",))
    pdt = as_dtype(cfg.param_dtype)

    def embedding():  # nn.Embedding's N(0, 1), like SAM's output tokens
      return nnx.Param(init(rngs.params(), (cfg.dim,), pdt))

    self.det_embed = embedding()  # D
    self.cls_embed = embedding()  # C
    self.mask_embed = embedding()  # M
    self.region_embed = embedding()  # R (Section 4.2)
    self.artifact_embed = embedding()  # A

  def run(self, image: jax.Array, grid: tuple[int, int], tokens: jax.Array):
    """image [N, h*w, D], tokens [N, Q, D] -> (tokens' [N, Q, D], image' [N, h*w, D])."""
    return self.transformer(image, self.pe_layer(grid)[None], tokens)

  def classify(self, image: jax.Array, grid: tuple[int, int]):
    """Det. and Cls. passes (T_in = D, then T_in = C), batched: -> (D_out, C_out) [B, D]."""
    b, n, d = image.shape
    tokens = jnp.stack([self.det_embed[...], self.cls_embed[...]])[:, None]  # [2, 1, D]
    tokens = jnp.broadcast_to(tokens[None], (b, 2, 1, d)).reshape(b * 2, 1, d)
    image = jnp.broadcast_to(image[:, None], (b, 2, n, d)).reshape(b * 2, n, d)
    out, _ = self.run(image, grid, tokens)
    out = out.reshape(b, 2, d)
    return out[:, 0], out[:, 1]

  def segment(self, image: jax.Array, grid: tuple[int, int], concepts: jax.Array):
    """One pass per (concept, {Region, Artifact}): T_in = [M, E + R] or [M, E + A].

    image [B, h*w, D], concepts [B, S, D] ->
    (M_out [B, S, 2, D], image' [B, S, 2, h*w, D]); index 0 is the Region Mask query.
    """
    b, n, d = image.shape
    s = concepts.shape[1]
    offsets = jnp.stack([self.region_embed[...], self.artifact_embed[...]])  # [2, D]
    semantic = concepts[:, :, None, :] + offsets.astype(concepts.dtype)  # [B, S, 2, D]
    mask = jnp.broadcast_to(self.mask_embed[...].astype(concepts.dtype), semantic.shape)
    tokens = jnp.stack([mask, semantic], axis=3).reshape(b * s * 2, 2, d)
    # I_in is duplicated per pass (Section 4.1): each pass updates its own copy.
    image = jnp.broadcast_to(image[:, None, None], (b, s, 2, n, d)).reshape(b * s * 2, n, d)
    out, image_out = self.run(image, grid, tokens)
    return out[:, 0].reshape(b, s, 2, d), image_out.reshape(b, s, 2, n, d)
