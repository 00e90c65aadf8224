"""Face Encoder: FaRL ViT-B/16 in the OpenAI-CLIP layout (Figure 3, eq. 1).

Parameter names follow OpenAI CLIP's `VisionTransformer` (conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks[i].{ln_1, attn.in_proj,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_post, proj), which is the layout of
FaRL's released checkpoints, so conversion is a transpose per matrix, never a
permutation.  The fused qkv projection `attn.in_proj` is PyTorch's
`in_proj_weight`/`in_proj_bias` of nn.MultiheadAttention.

Input pixels are NHWC and already CLIP-normalised; outputs are the transformer's
hidden states before ln_post (HF CLIPVisionModel's `last_hidden_state`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax import mesh as mesh_lib
from fifa_jax.models.layers import LayerNorm, as_dtype, linear, quick_gelu


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int = 224  # the size positional_embedding was trained at
  patch_size: int = 16
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_ratio: int = 4
  output_dim: int = 512  # CLIP's image projection; FiFa uses the hidden states
  layer_norm_eps: float = 1e-5
  # Channels of stride-2 3x3 convolutions (ReLU) run before the patch embedding, which
  # then patchifies their output (Xiao et al. 2021, "Early convolutions help
  # transformers see better").  () = FaRL/CLIP's plain patchify.  The cpu preset sets
  # it: trained from scratch in minutes, a plain 16-px patchify never learns to see the
  # demo's local artifacts, while the stem does (docs/learning.md section 4).
  stem: tuple[int, ...] = ()
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def check_stem(self) -> None:
    if self.patch_size % 2 ** len(self.stem):
      raise ValueError(f"a stem of {len(self.stem)} stride-2 convolutions does not divide "
                       f"the patch size {self.patch_size}")

  @classmethod
  def farl_b16(cls, **kw) -> ViTConfig:
    """FaRL ViT-B/16 (the paper's Face Encoder)."""
    return cls(**kw)

  @classmethod
  def tiny(cls, **kw) -> ViTConfig:
    return cls(**{**dict(image_size=64, patch_size=16, width=64, layers=4, heads=4, output_dim=32),
                  **kw})


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bicubic interpolate (align_corners=False).

  Keys' cubic with A=-0.75 and clamped borders, as F.interpolate(mode="bicubic"),
  so a resized positional embedding matches HF's `interpolate_pos_encoding`.
  (jax.image.resize uses A=-0.5 and would not.)
  """
  a = -0.75

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  m = np.zeros((n_out, n_in), np.float64)
  for o in range(n_out):
    src = (o + 0.5) * n_in / n_out - 0.5
    i0 = int(np.floor(src))
    t = src - i0
    for j, wgt in zip(range(-1, 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
      m[o, min(max(i0 + j, 0), n_in - 1)] += wgt
  return m.astype(np.float32)


def resize_pos_embed(pos: jax.Array, grid_in: int, grid_out: tuple[int, int]) -> jax.Array:
  """[1 + g*g, D] -> [1 + gh*gw, D]: bicubic on the patch grid, class token kept."""
  if (grid_in, grid_in) == tuple(grid_out):
    return pos
  cls_pos, patch = pos[:1], pos[1:].reshape(grid_in, grid_in, -1)
  mh = jnp.asarray(_bicubic_matrix(grid_in, grid_out[0]))
  mw = jnp.asarray(_bicubic_matrix(grid_in, grid_out[1]))
  patch = jnp.einsum("oh,hwd,pw->opd", mh, patch.astype(jnp.float32), mw,
                     precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([cls_pos, patch.reshape(-1, pos.shape[-1]).astype(pos.dtype)], axis=0)


class Attention(nnx.Module):
  """nn.MultiheadAttention as CLIP uses it: fused in_proj, then out_proj."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.heads = cfg.heads
    self.in_proj = linear(cfg.width, 3 * cfg.width, ("vit_embed", "vit_heads"), **kw)
    self.out_proj = linear(cfg.width, cfg.width, ("vit_heads", "vit_embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    qkv = self.in_proj(x).reshape(b, n, 3, self.heads, d // self.heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return self.out_proj(out.reshape(b, n, d))


class Mlp(nnx.Module):

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    hidden = cfg.width * cfg.mlp_ratio
    self.c_fc = linear(cfg.width, hidden, ("vit_embed", "vit_mlp"), **kw)
    self.c_proj = linear(hidden, cfg.width, ("vit_mlp", "vit_embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.c_proj(quick_gelu(self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
  """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    self.ln_1 = LayerNorm(cfg.width, **ln)
    self.attn = Attention(cfg, rngs=rngs)
    self.ln_2 = LayerNorm(cfg.width, **ln)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.resblocks = nnx.List([ResidualAttentionBlock(cfg, rngs=rngs) for _ in range(cfg.layers)])


class VisionTransformer(nnx.Module):
  """`encoder(pixels [B, H, W, 3]) -> [B, 1 + H*W/p^2, width]` (before ln_post)."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.dtype = as_dtype(cfg.dtype)
    pdt = as_dtype(cfg.param_dtype)
    w, p = cfg.width, cfg.patch_size
    scale = w ** -0.5  # OpenAI's init for the embeddings and proj
    normal = lambda names: mesh_lib.logical(nnx.initializers.normal(scale), names)
    conv = dict(dtype=self.dtype, param_dtype=pdt, rngs=rngs)
    channels = (3, *cfg.stem)
    self.stem = nnx.List([
      nnx.Conv(cin, cout, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), **conv,
               kernel_init=mesh_lib.logical(nnx.initializers.lecun_normal(),
                                            (None, None, "conv_in", None)),
               bias_init=mesh_lib.logical(nnx.initializers.zeros_init(), (None,)))
      for cin, cout in zip(channels[:-1], channels[1:])])
    cfg.check_stem()
    p //= 2 ** len(cfg.stem)  # the patch embedding patchifies the stem's output
    self.conv1 = nnx.Conv(
      channels[-1], w, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
      param_dtype=pdt, rngs=rngs,
      kernel_init=mesh_lib.logical(nnx.initializers.lecun_normal(),
                                        ("patch", "patch", "conv_in", "vit_embed")))
    self.class_embedding = nnx.Param(normal(("vit_embed",))(rngs.params(), (w,), pdt))
    self.positional_embedding = nnx.Param(
      normal(("pos", "vit_embed"))(rngs.params(), (1 + cfg.grid ** 2, w), pdt))
    ln = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    self.ln_pre = LayerNorm(w, **ln)
    self.transformer = Transformer(cfg, rngs=rngs)
    self.ln_post = LayerNorm(w, **ln)
    self.proj = nnx.Param(normal(("vit_embed", None))(rngs.params(), (w, cfg.output_dim), pdt))

  def embed(self, pixels: jax.Array) -> jax.Array:
    """Patch + class token + (resized) positional embedding, then ln_pre."""
    b, h, w, _ = pixels.shape
    p = self.config.patch_size
    if h % p or w % p:
      raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
    x = pixels.astype(self.dtype)
    for conv in self.stem:
      x = jax.nn.relu(conv(x))
    x = self.conv1(x).reshape(b, (h // p) * (w // p), -1)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, x.shape[-1]))
    pos = resize_pos_embed(self.positional_embedding[...], self.config.grid, (h // p, w // p))
    return self.ln_pre(jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype))

  def hidden_states(self, pixels: jax.Array, layers: Sequence[int] | None = None) -> list[jax.Array]:
    """Hidden states as HF numbers them: 0 = after ln_pre, i = output of block i.

    `layers=None` gives all `cfg.layers + 1`; otherwise the chosen ones in the
    order asked, and blocks past the deepest chosen layer are not run.
    """
    n = self.config.layers
    want = list(range(n + 1)) if layers is None else [i % (n + 1) for i in layers]
    x = self.embed(pixels)
    states = [x]
    for block in self.transformer.resblocks[:max(want)]:
      x = block(x)
      states.append(x)
    return [states[i] for i in want]

  def __call__(self, pixels: jax.Array) -> jax.Array:
    return self.hidden_states(pixels, [self.config.layers])[0]

  def image_embedding(self, last_hidden: jax.Array) -> jax.Array:
    """CLIP's pooled image embedding: ln_post(class token) @ proj."""
    return self.ln_post(last_hidden[:, 0]) @ self.proj[...].astype(last_hidden.dtype)
