"""A LLaVA-1.5-style MLLM from the project's own modules: the learned aggregator's policy.

  pixels ─► CLIP ViT (models/vit.py, OpenAI layout) ─► hidden state of layer
            `vision_feature_layer` (-2, LLaVA's default), class token dropped
         ─► projector (LLaVA's mlp2x_gelu, models/projector.py) ─► spliced at the
            prompt's `<image>` tokens ─► LLaMA (+LoRA, models/llama.py) ─► logits

The prompt carries one `<image>` token per image feature (as transformers' LLaVA
processor expands it), so the k-th `<image>` of a row takes feature k.  With
`vision=None` the policy is text only (the CPU mode of `fifa agent train`): then it
is the LLaMA alone.  The generator (models/generate.py) drives it through the
LLaMA's `forward`/`embed`/`init_cache`, which the policy forwards.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM, LlmOutput
from fifa_jax.models.projector import Projector, ProjectorConfig
from fifa_jax.models.vit import ViTConfig, VisionTransformer


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
  llama: LlamaConfig
  vision: ViTConfig | None = None  # None: text only
  image_token_id: int = 32000  # llava-hf's `<image>`
  vision_feature_layer: int = -2  # HF numbering: 0 = after ln_pre, -1 = the last block
  keep_class_token: bool = False  # LLaVA's "default" strategy drops it; "full" keeps it

  def __post_init__(self):
    if self.vision is not None and not 0 <= self.image_token_id < self.llama.vocab_size:
      raise ValueError(f"image_token_id {self.image_token_id} is outside the vocabulary "
                       f"({self.llama.vocab_size})")

  @property
  def num_image_tokens(self) -> int:
    """How many `<image>` tokens a prompt carries per image (0 text only)."""
    if self.vision is None:
      return 0
    return self.vision.grid ** 2 + int(self.keep_class_token)

  @classmethod
  def tiny_text(cls, vocab_size: int, **llama) -> LlavaConfig:
    """The CPU policy of the toy task and the tests: a 2-layer LLaMA, text only."""
    kw = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=512)
    return cls(llama=LlamaConfig(**{**kw, **llama}))


class LlavaPolicy(nnx.Module):

  def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.llm = LlamaForCausalLM(config.llama, rngs=rngs)
    if config.vision is None:
      self.vit = self.projector = None
    else:
      v, d = config.vision, config.llama.hidden_size
      self.vit = VisionTransformer(v, rngs=rngs)
      self.projector = Projector(ProjectorConfig(v.width, d, axes=(None, None, "embed"),
                                                 dtype=config.llama.dtype,
                                                 param_dtype=config.llama.param_dtype), rngs=rngs)

  def image_features(self, pixels: jax.Array) -> jax.Array:
    """pixels [B, H, W, 3] (CLIP-normalised) -> [B, num_image_tokens, hidden]."""
    if self.vit is None:
      raise ValueError("this policy is text only (vision: null); it takes no pixels")
    h = self.vit.hidden_states(pixels, [self.config.vision_feature_layer])[0]
    return self.projector(h if self.config.keep_class_token else h[:, 1:])

  def embed_prompt(self, input_ids: jax.Array, pixels: jax.Array | None = None) -> jax.Array:
    """Token embeddings with the k-th `<image>` of each row replaced by image feature k."""
    x = self.llm.embed(input_ids)
    if pixels is None:
      return x
    feats = self.image_features(pixels).astype(x.dtype)
    is_image = input_ids == self.config.image_token_id
    k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, feats.shape[1] - 1)
    picked = jnp.take_along_axis(feats, k[..., None], axis=1)
    return jnp.where(is_image[..., None], picked, x)

  def __call__(self, input_ids: jax.Array, pixels: jax.Array | None = None,
               attention_mask: jax.Array | None = None) -> jax.Array:
    """Logits [B, T, V] (float32)."""
    return self.llm.forward(inputs_embeds=self.embed_prompt(input_ids, pixels),
                            attention_mask=attention_mask).logits

  # The generator's interface (models/generate.py), forwarded to the LLM.
  def forward(self, *args, **kw) -> LlmOutput:
    return self.llm.forward(*args, **kw)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.llm.embed(input_ids)

  def init_cache(self, batch: int, max_len: int, dtype=None):
    return self.llm.init_cache(batch, max_len, dtype)
