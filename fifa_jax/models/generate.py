"""Batched KV-cache generation for a causal LM (greedy or sampled), one jit per shape.

Works with any model exposing the `LlamaForCausalLM` interface: `forward(ids |
inputs_embeds, attention_mask=, cache=)`, `embed(ids)` and `init_cache(b, len)`.
The prompt is a padded batch of ids or of embeddings (the multimodal model splices
image features into the embeddings); left padding is the usual layout, but any
padding works because pad slots stay masked in the cache.

Besides the tokens, every step keeps the final hidden state (after the last norm)
of the position whose logits produced the token: for a [SEG] token that is the
Concept Embedding the mask decoder needs (as in LISA/GLaMM).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  max_new_tokens: int = 256
  do_sample: bool = False  # False (or temperature 0): greedy
  temperature: float = 1.0
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1.0: off
  eos_token_ids: tuple[int, ...] = (2,)
  stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences that end a row
  pad_token_id: int = 0  # written after a row stops

  def __post_init__(self):
    object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
    object.__setattr__(self, "stop_sequences",
                       tuple(tuple(int(t) for t in s) for s in self.stop_sequences if len(s)))
    if self.max_new_tokens < 1:
      raise ValueError("max_new_tokens must be at least 1")


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [B, N] int32; pad_token_id after a row stops
  lengths: jax.Array  # [B] int32: tokens generated, the eos / stop sequence included
  hidden: jax.Array  # [B, N, D]: final hidden state of the position that predicted tokens[:, n]
  finished: jax.Array  # [B] bool: stopped by eos / stop sequence (not by max_new_tokens)

  def token_mask(self, token_id: int) -> jax.Array:
    """[B, N] bool: where `token_id` was generated (inside each row's length)."""
    valid = jnp.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]
    return (self.tokens == token_id) & valid


def generate(model: nnx.Module, input_ids: jax.Array | None = None, *,
             inputs_embeds: jax.Array | None = None, attention_mask: jax.Array | None = None,
             config: GenerationConfig = GenerationConfig(), rng: jax.Array | None = None
             ) -> GenerateOutput:
  """Generate up to `config.max_new_tokens` tokens after each prompt row.

  input_ids [B, T] or inputs_embeds [B, T, D]; attention_mask [B, T] (1 = real).
  `rng` seeds sampling (a fixed key gives the same tokens); greedy ignores it.
  """
  if (input_ids is None) == (inputs_embeds is None):
    raise ValueError("pass exactly one of input_ids and inputs_embeds")
  prompt = input_ids if input_ids is not None else inputs_embeds
  if attention_mask is None:
    attention_mask = jnp.ones(prompt.shape[:2], jnp.int32)
  rng = jax.random.key(0) if rng is None else rng
  graphdef, state = nnx.split(model)
  # Plain arrays, not Variables: every merge below then builds fresh Variables at its
  # own trace level, which nnx.scan (scanned LLM layers) requires inside the loop.
  return _generate(graphdef, nnx.to_pure_dict(state), input_ids, inputs_embeds,
                   jnp.asarray(attention_mask), rng, config)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _generate(graphdef, state, input_ids, inputs_embeds, attention_mask, rng, config):
  model = nnx.merge(graphdef, state)
  real = attention_mask.astype(bool)
  b, t = real.shape
  n_new = config.max_new_tokens
  out = model.forward(input_ids, inputs_embeds=inputs_embeds, attention_mask=real,
                      cache=model.init_cache(b, t + n_new))
  # The last real prompt position predicts the first token (any padding side).
  last = t - 1 - jnp.argmax(real[:, ::-1], axis=1)
  rows = jnp.arange(b)
  logits, hidden = out.logits[rows, last], out.hidden_states[rows, last]

  init = dict(
      step=jnp.zeros((), jnp.int32), cache=out.cache, logits=logits, hidden=hidden, rng=rng,
      tokens=jnp.full((b, n_new), config.pad_token_id, jnp.int32),
      hidden_out=jnp.zeros((b, n_new, hidden.shape[-1]), hidden.dtype),
      lengths=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool))

  def cond(s):
    return (s["step"] < n_new) & ~jnp.all(s["done"])

  def body(s):
    n = s["step"]
    rng, key = jax.random.split(s["rng"])
    token = jnp.where(s["done"], config.pad_token_id, select_token(s["logits"], key, config))
    tokens = s["tokens"].at[:, n].set(token)
    hidden_out = s["hidden_out"].at[:, n].set(
        jnp.where(s["done"][:, None], 0, s["hidden"]).astype(s["hidden_out"].dtype))
    lengths = s["lengths"] + (~s["done"]).astype(jnp.int32)
    done = s["done"] | (~s["done"] & _stops(tokens, token, n, config))
    step_model = nnx.merge(graphdef, state)
    nxt = step_model.forward(token[:, None], cache=s["cache"])
    return dict(step=n + 1, cache=nxt.cache, logits=nxt.logits[:, 0], hidden=nxt.hidden_states[:, 0],
                rng=rng, tokens=tokens, hidden_out=hidden_out, lengths=lengths, done=done)

  s = jax.lax.while_loop(cond, body, init)
  return GenerateOutput(tokens=s["tokens"], lengths=s["lengths"], hidden=s["hidden_out"],
                        finished=s["done"])


def _stops(tokens: jax.Array, token: jax.Array, n: jax.Array, config: GenerationConfig):
  """[B] bool: the token just written at column n ends its row."""
  stop = jnp.zeros(token.shape, bool)
  if config.eos_token_ids:
    stop |= jnp.isin(token, jnp.asarray(config.eos_token_ids, jnp.int32))
  for seq in config.stop_sequences:
    width = len(seq)
    if width > tokens.shape[1]:
      continue  # longer than anything that can be generated
    window = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(n + 1 - width, 0), width, axis=1)
    stop |= (n + 1 >= width) & jnp.all(window == jnp.asarray(seq, jnp.int32)[None], axis=1)
  return stop


def select_token(logits: jax.Array, key: jax.Array, config: GenerationConfig) -> jax.Array:
  """Next token per row from float logits [B, V]: greedy or temperature/top-k/top-p sampling."""
  logits = logits.astype(jnp.float32)
  if not config.do_sample or config.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / config.temperature
  return jax.random.categorical(key, filter_logits(logits, config.top_k, config.top_p),
                                axis=-1).astype(jnp.int32)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Set to -inf everything outside the top-k and outside the smallest top-p nucleus."""
  neg = jnp.finfo(logits.dtype).min
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # keep while the mass before a token is under top_p (the best token always stays)
    cutoff = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg, logits)
  return logits
