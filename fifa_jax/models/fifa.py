"""FiFa-MLLM: the composition of Section 4.1 (Figure 3).

  pixels ─► Face Encoder ─► I ─► image projector ─► I' ─┐
                │ 4 layers ─► Box Encoder ─► box projector ─► B' ─┤ spliced into the
  input_ids ─► LLM embeddings ────────────────────────────────────┘ prompt embeddings
  ─► LLM (+LoRA) ─► text logits;  hidden state predicting each [SEG] ─► seg projector ─► E
  I ─► decoder projector ─► I_in ─► Multi-Task Decoder: [D] ─► Det. head, [C] ─► Cls. head,
                                    [M, E+R] and [M, E+A] per [SEG] ─► Pixel Decoder ─► masks

Static shapes everywhere, so one jit covers every batch:
- the prompt's single `<image>` is expanded by the collate step to L_I copies
  (`tokens.expand_image_tokens`); the k-th copy in a row takes image feature k;
- the k-th `<bbox>` of a row takes the feature of box k (`boxes` [B, K, 4], padded);
- every [SEG] of the batch gets its mask: the batch carries a flat list of
  [SEG] slots (`SegSlots`: row, the position whose state predicts the [SEG],
  valid), packed by the data pipeline up to a capacity taken from the data,
  and the decoder runs 2 passes per slot, so its cost follows the number of
  [SEG]s, not batch x a per-sample cap.  The k-th slot of a row is the row's
  k-th [SEG], in training (`seg_slots` / the pipeline) and in generation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax import mesh as mesh_lib
from fifa_jax.models import generate as gen
from fifa_jax.models.box_encoder import BoxEncoder, BoxEncoderConfig
from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM
from fifa_jax.models.lora import LoraConfig
from fifa_jax.models.pixel_decoder import Head, PixelDecoder, PixelDecoderConfig
from fifa_jax.models.projector import Projector, ProjectorConfig
from fifa_jax.models.two_way import MultiTaskDecoder, TwoWayConfig
from fifa_jax.models.vit import ViTConfig, VisionTransformer


@dataclasses.dataclass(frozen=True)
class FiFaConfig:
  vit: ViTConfig
  box: BoxEncoderConfig
  llama: LlamaConfig
  decoder: TwoWayConfig
  pixel: PixelDecoderConfig
  # Ids of tokens.SPECIAL_TOKENS (tokens.special_token_ids(tokenizer) gives them).
  image_token_id: int
  bbox_token_id: int
  p_open_token_id: int
  p_close_token_id: int
  seg_token_id: int
  image_size: int = 224
  dtype: str = "float32"  # compute dtype of the projectors
  param_dtype: str = "float32"

  def __post_init__(self):
    if (self.box.vit_width, self.box.patch_size) != (self.vit.width, self.vit.patch_size):
      raise ValueError("box encoder width/patch must match the face encoder's")
    self.vit.check_stem()
    if max(self.box.layers) > self.vit.layers:
      raise ValueError(f"box encoder layers {self.box.layers} exceed the encoder's {self.vit.layers}")
    if self.pixel.dim != self.decoder.dim:
      raise ValueError("pixel decoder and multi-task decoder widths differ")
    ids = (self.image_token_id, self.bbox_token_id, self.p_open_token_id, self.p_close_token_id,
           self.seg_token_id)
    if max(ids) >= self.llama.vocab_size:
      raise ValueError(f"special token ids {ids} exceed the vocabulary ({self.llama.vocab_size})")

  @property
  def grid(self) -> tuple[int, int]:
    g = self.image_size // self.vit.patch_size
    return g, g

  @property
  def num_image_tokens(self) -> int:
    """L_I: how many copies of `<image>` the collate step writes."""
    return self.grid[0] * self.grid[1]

  @property
  def mask_size(self) -> tuple[int, int]:
    return 4 * self.grid[0], 4 * self.grid[1]

  @classmethod
  def paper(cls, **overrides) -> FiFaConfig:
    """FaRL ViT-B/16 + Vicuna-7B (vocab 32000 + the 5 special tokens, LoRA r128) + SAM decoder."""
    bf16 = dict(dtype="bfloat16", param_dtype="float32")
    kw = dict(
      vit=ViTConfig.farl_b16(**bf16), box=BoxEncoderConfig.paper(**bf16),
      llama=LlamaConfig.vicuna_7b(vocab_size=32005, lora=LoraConfig(rank=128)),
      decoder=TwoWayConfig.sam(**bf16), pixel=PixelDecoderConfig.faceptor(**bf16),
      # tokens.add_special_tokens appends SPECIAL_TOKENS in order after Vicuna's 32000.
      image_token_id=32000, bbox_token_id=32001, p_open_token_id=32002, p_close_token_id=32003,
      seg_token_id=32004, **bf16)
    return cls(**{**kw, **overrides})

  @classmethod
  def tiny(cls, **overrides) -> FiFaConfig:
    vit = ViTConfig.tiny()
    llama = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    kw = dict(vit=vit, box=BoxEncoderConfig.tiny(), llama=llama, decoder=TwoWayConfig.tiny(),
              pixel=PixelDecoderConfig.tiny(), image_size=vit.image_size,
              image_token_id=123, bbox_token_id=124, p_open_token_id=125, p_close_token_id=126,
              seg_token_id=127)
    return cls(**{**kw, **overrides})

  @classmethod
  def cpu(cls, **overrides) -> FiFaConfig:
    """Small enough to train on a CPU in minutes, large enough for masks to mean
    something: 128-px faces, an 8x8 token grid, 32x32 masks (upsampled to the
    image's size for evaluation).  The demo and the learning tests use it."""
    vit = ViTConfig(image_size=128, patch_size=16, width=128, layers=4, heads=4, output_dim=64,
                    stem=(32, 64, 64, 128))
    llama = LlamaConfig(vocab_size=128, hidden_size=192, intermediate_size=512, num_hidden_layers=3,
                        num_attention_heads=4, lora=LoraConfig(rank=8, alpha=16.0, dropout=0.0))
    kw = dict(vit=vit, box=BoxEncoderConfig(vit_width=128, layers=(1, 2, 3, 4), channels=32,
                                            output_size=4, out_dim=64),
              # Heads of 32 (16 in cross-attention): with heads of 16 (8), every [SEG]
              # of a record kept the same mask for hundreds of steps (docs/learning.md).
              llama=llama, decoder=TwoWayConfig(dim=64, heads=2, mlp_dim=128),
              # SAM's narrowing upscaler (dim -> dim/2 -> dim/4) and hypernetwork MLP: the
              # decoder runs twice per [SEG], so its 32x32 maps must stay cheap.
              pixel=PixelDecoderConfig(dim=64, mid_dim=32, out_dim=16, query_mlp_layers=2),
              image_size=128,
              image_token_id=123, bbox_token_id=124, p_open_token_id=125, p_close_token_id=126,
              seg_token_id=127)
    return cls(**{**kw, **overrides})


PRESETS = {"paper": FiFaConfig.paper, "cpu": FiFaConfig.cpu, "tiny": FiFaConfig.tiny}


class SegSlots(NamedTuple):
  """A flat list of [SEG]s over a batch, in row-major order (row 0's first, ...).

  Slot s reads the final hidden state at (rows[s], cols[s]): the position that
  predicts the [SEG] (as LISA/GLaMM, the state at i predicts token i+1).
  Padding slots have valid False (and point at (0, 0)).
  """
  rows: jax.Array  # [S] int32
  cols: jax.Array  # [S] int32
  valid: jax.Array  # [S] bool


class FiFaOutput(NamedTuple):
  logits: jax.Array  # [B, T, V] float32 text logits
  det_logits: jax.Array  # [B, det_classes]
  cls_logits: jax.Array  # [B, cls_classes]
  mask_logits: jax.Array  # [S, 2, Hm, Wm] per [SEG] slot; [:, 0] Region, [:, 1] Regional Artifact
  seg_valid: jax.Array  # [S] bool: slot holds a real [SEG]
  seg_rows: jax.Array  # [S] int32: the batch row of each slot


class FiFaGeneration(NamedTuple):
  tokens: jax.Array  # [B, N] generated ids
  lengths: jax.Array  # [B]
  finished: jax.Array  # [B]
  mask_logits: jax.Array  # [S, 2, Hm, Wm]: one pair per generated [SEG], row-major order
  seg_valid: jax.Array  # [S] bool (S is rounded up to a power of two; the rest is padding)
  seg_rows: jax.Array  # [S] int32: the row each mask belongs to


def seg_slots(predicts_seg: jax.Array, capacity: int) -> SegSlots:
  """The first `capacity` True positions of a [B, T] flag array, row-major, as SegSlots."""
  b, t = predicts_seg.shape
  flat = jnp.nonzero(predicts_seg.reshape(-1), size=capacity, fill_value=0)[0].astype(jnp.int32)
  valid = jnp.arange(capacity) < predicts_seg.sum()
  return SegSlots(rows=flat // t, cols=flat % t, valid=valid)


def predicts_seg(input_ids: jax.Array, seg_token_id: int,
                 attention_mask: jax.Array | None = None) -> jax.Array:
  """[B, T] bool: positions whose next token is a real [SEG] (teacher forcing)."""
  flags = jnp.pad(input_ids[:, 1:] == seg_token_id, ((0, 0), (0, 1)))
  if attention_mask is not None:
    flags &= jnp.pad(attention_mask[:, 1:].astype(bool), ((0, 0), (0, 1)))
  return flags


def _splice(embeds: jax.Array, is_slot: jax.Array, feats: jax.Array) -> jax.Array:
  """Replace the k-th flagged position of each row by feats[:, k] (k clipped to the last)."""
  k = jnp.clip(jnp.cumsum(is_slot, axis=1) - 1, 0, feats.shape[1] - 1)
  # Rows on their devices, features whole: the per-row gather then stays local.
  feats = mesh_lib.constrain(feats.astype(embeds.dtype), mesh_lib.ACTIVATIONS)
  picked = mesh_lib.constrain(jnp.take_along_axis(feats, k[..., None], axis=1),
                              mesh_lib.ACTIVATIONS)
  return jnp.where(is_slot[..., None], picked, mesh_lib.constrain(embeds, mesh_lib.ACTIVATIONS))


class FiFaMLLM(nnx.Module):

  def __init__(self, config: FiFaConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    d_llm, d_de = c.llama.hidden_size, c.decoder.dim
    proj = functools.partial(ProjectorConfig, dtype=c.dtype, param_dtype=c.param_dtype)
    self.vit = VisionTransformer(c.vit, rngs=rngs)  # Face Encoder
    self.box_encoder = BoxEncoder(c.box, rngs=rngs)
    self.llm = LlamaForCausalLM(c.llama, rngs=rngs)
    self.image_projector = Projector(proj(c.vit.width, d_llm, axes=("vit_embed", "mlp", "embed")),
                                     rngs=rngs)  # I -> I'
    self.box_projector = Projector(proj(c.box.out_dim, d_llm, axes=(None, "mlp", "embed")),
                                   rngs=rngs)  # B -> B'
    self.seg_projector = Projector(proj(d_llm, d_de, axes=("embed", "mlp", "decoder_embed")),
                                   rngs=rngs)  # [SEG] state -> E
    self.decoder_projector = Projector(
      proj(c.vit.width, d_de, axes=("vit_embed", "decoder_mlp", "decoder_embed")),
      rngs=rngs)  # I -> I_in
    self.decoder = MultiTaskDecoder(c.decoder, rngs=rngs)
    self.pixel_decoder = PixelDecoder(c.pixel, rngs=rngs)
    head = dict(rngs=rngs, dtype=c.pixel.dtype, param_dtype=c.pixel.param_dtype)
    self.det_head = Head(d_de, c.pixel.det_classes, **head)
    self.cls_head = Head(d_de, c.pixel.cls_classes, **head)

  # -- pieces -----------------------------------------------------------------

  def encode_image(self, pixels: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """pixels [B, H, W, 3] -> (I [B, L_I, width] patch tokens, the 4 Box Encoder layers)."""
    size = self.config.image_size
    if tuple(pixels.shape[1:3]) != (size, size):  # L_I and the decoder grid derive from it
      raise ValueError(f"pixels are {pixels.shape[1:3]}, the config expects {size}x{size}")
    want = [self.config.vit.layers, *self.config.box.layers]
    states = self.vit.hidden_states(pixels, want)
    return states[0][:, 1:], states[1:]

  def prompt_embeds(self, input_ids: jax.Array, image: jax.Array, box_layers: list[jax.Array],
                    boxes: jax.Array | None, image_hw: tuple[int, int]) -> jax.Array:
    """LLM input embeddings with `<image>`/`<bbox>` positions replaced by I' / B'."""
    c = self.config
    x = self.llm.embed(input_ids)
    x = _splice(x, input_ids == c.image_token_id, self.image_projector(image))
    if boxes is not None:
      b_feat = self.box_projector(self.box_encoder(box_layers, boxes, image_hw))
      x = _splice(x, input_ids == c.bbox_token_id, b_feat)
    return x

  def decode_masks(self, image: jax.Array, seg_hidden: jax.Array, rows: jax.Array) -> jax.Array:
    """I [B, L_I, width], [SEG] states [S, D_llm] of batch rows `rows` [S]
    -> mask logits [S, 2, Hm, Wm] (Region, Regional Artifact), float32."""
    grid = self.config.grid
    i_in = self.decoder_projector(image)[rows]  # each slot reads its own image's I_in
    concepts = self.seg_projector(seg_hidden)[:, None]  # Concept Embeddings E [S, 1, D]
    m_out, img_out = self.decoder.segment(i_in, grid, concepts)
    s, _, two, n, d = img_out.shape
    pix = self.pixel_decoder(img_out.reshape(s * two, n, d), grid)
    masks = self.pixel_decoder.mask_logits(pix, m_out.reshape(s * two, 1, d))
    return masks.reshape(s, two, *masks.shape[-2:]).astype(jnp.float32)

  def classify(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """I -> (Det. logits [B, 2], Cls. logits [B, n_cls]) from the D and C passes."""
    d_out, c_out = self.decoder.classify(self.decoder_projector(image), self.config.grid)
    return (self.det_head(d_out).astype(jnp.float32), self.cls_head(c_out).astype(jnp.float32))

  # -- training forward -------------------------------------------------------

  def __call__(self, input_ids: jax.Array, pixels: jax.Array, *, boxes: jax.Array | None = None,
               attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
               segs: SegSlots | None = None, seg_capacity: int | None = None,
               deterministic: bool = True) -> FiFaOutput:
    """Teacher-forced pass over a padded batch.

    input_ids [B, T] (image tokens already expanded), pixels [B, H, W, 3]
    (CLIP-normalised), boxes [B, K, 4] in pixels, attention_mask [B, T] (1 = real).
    `segs`: the batch's [SEG] slots (the pipeline packs them with the targets);
    without them they are found in input_ids, `seg_capacity` slots (default B*T).
    """
    c = self.config
    image, box_layers = self.encode_image(pixels)
    embeds = self.prompt_embeds(input_ids, image, box_layers, boxes, pixels.shape[1:3])
    out = self.llm.forward(inputs_embeds=embeds, attention_mask=attention_mask,
                           positions=positions, deterministic=deterministic)
    if segs is None:
      flags = predicts_seg(input_ids, c.seg_token_id, attention_mask)
      segs = seg_slots(flags, seg_capacity or flags.size)
    seg_hidden = out.hidden_states[segs.rows, segs.cols]
    det, cls = self.classify(image)
    masks = self.decode_masks(image, seg_hidden, segs.rows)
    return FiFaOutput(logits=out.logits, det_logits=det, cls_logits=cls, mask_logits=masks,
                      seg_valid=segs.valid, seg_rows=segs.rows)

  # -- inference --------------------------------------------------------------

  def generate(self, input_ids: jax.Array, pixels: jax.Array, *, boxes: jax.Array | None = None,
               attention_mask: jax.Array | None = None,
               config: gen.GenerationConfig = gen.GenerationConfig(),
               rng: jax.Array | None = None) -> FiFaGeneration:
    """Text tokens plus a (Region, Artifact) mask pair for every generated [SEG].

    Two compiled programs: the text (one per prompt shape), then the masks of
    however many [SEG]s were written (slots rounded up to a power of two, so a
    handful of shapes compile), never a fixed cap.
    """
    image, out = _generate_text(self, input_ids, pixels, boxes, attention_mask, config, rng)
    flags = np.asarray(out.token_mask(self.config.seg_token_id))
    n = int(flags.sum())
    capacity = 1 << max(n - 1, 0).bit_length()
    rows, cols = np.nonzero(flags)  # row-major: the k-th slot of a row is its k-th [SEG]
    pad = capacity - n
    segs = SegSlots(rows=jnp.asarray(np.pad(rows, (0, pad)), jnp.int32),
                    cols=jnp.asarray(np.pad(cols, (0, pad)), jnp.int32),
                    valid=jnp.asarray(np.arange(capacity) < n))
    masks = _decode_generated(self, image, out.hidden, segs)
    return FiFaGeneration(tokens=out.tokens, lengths=out.lengths, finished=out.finished,
                          mask_logits=masks, seg_valid=segs.valid, seg_rows=segs.rows)


@nnx.jit(static_argnums=(5,))
def _generate_text(model: FiFaMLLM, input_ids, pixels, boxes, attention_mask, config, rng):
  image, box_layers = model.encode_image(pixels)
  embeds = model.prompt_embeds(input_ids, image, box_layers, boxes, pixels.shape[1:3])
  out = gen.generate(model.llm, inputs_embeds=embeds, attention_mask=attention_mask,
                     config=config, rng=rng)
  return image, out


@nnx.jit
def _decode_generated(model: FiFaMLLM, image, hidden, segs: SegSlots):
  # hidden[:, n] is the state that predicted tokens[:, n]: for a [SEG], its Concept Embedding.
  return model.decode_masks(image, hidden[segs.rows, segs.cols], segs.rows)


def upsample_masks(mask_logits: jax.Array, size) -> jax.Array:
  """[..., Hm, Wm] -> [..., H, W] bilinear (as LISA's F.interpolate of low-res masks);
  the identity at equal size."""
  size = tuple(int(x) for x in size)
  return jax.image.resize(mask_logits, (*mask_logits.shape[:-2], *size), "bilinear")


COMPONENTS = ("vit", "box_encoder", "llm", "image_projector", "box_projector", "seg_projector",
              "decoder_projector", "decoder", "pixel_decoder", "det_head", "cls_head")


def param_counts(config: FiFaConfig) -> dict[str, int]:
  """Parameters per component, from shapes only (nnx.eval_shape allocates nothing).

  `llm` counts the base weights and `lora` the adapters separately; buffers
  (SAM's Fourier matrix) are not parameters.
  """
  model = nnx.eval_shape(lambda: FiFaMLLM(config, rngs=nnx.Rngs(0)))
  size = lambda state: sum(int(x.size) for x in jax.tree.leaves(state))
  counts = {}
  for name in COMPONENTS:
    sub = getattr(model, name)
    counts[name] = size(nnx.state(sub, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
  counts["lora"] = size(nnx.state(model, nnx.LoRAParam))
  counts["total"] = sum(counts.values())
  return counts
