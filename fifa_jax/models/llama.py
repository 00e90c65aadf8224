"""LLaMA / Vicuna in Flax NNX, in the Hugging Face weight layout.

Module paths follow transformers' `LlamaForCausalLM` (`model.embed_tokens`,
`model.layers[i].self_attn.q_proj`, ..., `lm_head`), so converting a checkpoint
is a renaming plus a transpose of each linear weight (nnx kernels are [in, out]).
RoPE is HF's rotate-half form, RMSNorm runs in fp32, attention goes through
`jax.nn.dot_product_attention`.  With the default `attention_implementation="auto"`
a GPU run in bf16/fp16 takes cuDNN's flash kernel (jax's own default, None, stays
on XLA's path there: measured on an H100 with jax 0.11.2); CPU, TPU and fp32 runs use
XLA.  "cudnn", "xla" or None force a choice.

Decoding uses a static-shape `KVCache`: `forward(..., cache=c)` writes the new
keys/values at `c.index` and attends to every slot written so far, so a jitted
step never recompiles as the sequence grows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from fifa_jax import mesh as _mesh
from fifa_jax.models.lora import LoraConfig, LoraLinear


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None  # None: = num_attention_heads (no GQA)
  head_dim: int | None = None  # None: hidden_size // num_attention_heads
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  dtype: str = "float32"  # compute
  param_dtype: str = "float32"
  remat: bool = False  # nnx.remat around each decoder layer
  # One decoder layer with stacked [L, ...] weights run by a scan: compile time no
  # longer grows with depth (32 unrolled 7B layers take minutes to compile).
  # Checkpoint keys stay per layer (model.layers.N.*) either way.
  scan_layers: bool = False
  attention_implementation: str | None = "auto"  # "auto", None/"xla" or "cudnn"
  lora: LoraConfig | None = None

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **overrides) -> LlamaConfig:
    """From a transformers `config.json` dict (v4 or v5 style); `overrides` win."""
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"only silu MLPs are supported, got hidden_act={d['hidden_act']}")
    if d.get("attention_bias") or d.get("mlp_bias"):
      raise ValueError("attention_bias / mlp_bias are not supported")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
      raise ValueError(f"only plain RoPE is supported, got {rope}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and k not in ("dtype", "lora")}
    if "rope_theta" not in kwargs and "rope_theta" in rope:
      kwargs["rope_theta"] = rope["rope_theta"]
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def vicuna_7b(cls, **overrides) -> LlamaConfig:
    """Vicuna-7B v1.1 (= LLaMA-7B shapes; vocab 32000 before FiFa's added tokens)."""
    kwargs = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                  rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
                  tie_word_embeddings=False, dtype="bfloat16", param_dtype="float32")
    kwargs.update(overrides)
    return cls(**kwargs)


def vicuna_7b(**overrides) -> LlamaConfig:
  return LlamaConfig.vicuna_7b(**overrides)


@struct.dataclass
class KVCache:
  """Keys/values [B, max_len, kv_heads, head_dim] per layer (a tuple; one stacked
  [L, ...] array with `scan_layers`), plus bookkeeping."""
  k: tuple[jax.Array, ...] | jax.Array
  v: tuple[jax.Array, ...] | jax.Array
  key_mask: jax.Array  # [B, max_len] bool: slot holds a real (non-pad) token
  index: jax.Array  # int32 scalar: slots written so far (same for every row)
  next_position: jax.Array  # [B] int32: RoPE position of each row's next real token

  @property
  def max_len(self) -> int:
    return self.key_mask.shape[1]


class LlmOutput(NamedTuple):
  logits: jax.Array  # [B, T, V] float32
  hidden_states: jax.Array  # [B, T, D] after model.norm
  cache: KVCache | None


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",), eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float):
  """HF rotate-half tables for int positions [B, T] -> cos, sin [B, T, 1, head_dim] fp32."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


def attention_implementation(cfg: LlamaConfig) -> str | None:
  """What `jax.nn.dot_product_attention` is told; "auto" resolves at trace time."""
  impl = cfg.attention_implementation
  if impl != "auto":
    return impl
  fast = jnp.dtype(cfg.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if fast and jax.default_backend() == "gpu" else None


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
                     chunks: int = 2) -> jax.Array:
  """Causal attention on XLA's path, skipping the blocks above the diagonal.

  q [B, T, N, H], k/v [B, T, K, H] (K divides N), key_mask [B, T] bool or None.
  Query chunk i attends only to keys [0, (i+1) T/chunks): with 2 chunks a quarter
  of the score and value matmuls (and their gradients) is never computed.  Logits
  and softmax are float32 as in `jax.nn.dot_product_attention`.
  """
  b, t, n, h = q.shape
  kv = k.shape[2]
  if t % chunks:
    chunks = 1
  q = q.reshape(b, t, kv, n // kv, h) * jnp.asarray(h ** -0.5, q.dtype)
  step = t // chunks
  outs = []
  for i in range(chunks):
    lo, hi = i * step, (i + 1) * step
    logits = jnp.einsum("btkgh,bskh->bkgts", q[:, lo:hi], k[:, :hi],
                        preferred_element_type=jnp.float32)
    allowed = jnp.arange(hi)[None, :] <= jnp.arange(lo, hi)[:, None]  # [t, s]
    allowed = allowed[None, None, None]
    if key_mask is not None:
      allowed = allowed & key_mask[:, None, None, None, :hi]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    outs.append(jnp.einsum("bkgts,bskh->btkgh", probs, v[:, :hi]))
  out = outs[0] if chunks == 1 else jnp.concatenate(outs, axis=1)
  return out.reshape(b, t, n, h)


class LlamaAttention(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    proj = _projection_factory(cfg, rngs)
    self.q_proj = proj("q_proj", d, n * h, ("embed", "heads"))
    self.k_proj = proj("k_proj", d, k * h, ("embed", "kv_heads"))
    self.v_proj = proj("v_proj", d, k * h, ("embed", "kv_heads"))
    self.o_proj = proj("o_proj", n * h, d, ("heads", "embed"))

  def __call__(self, x, cos, sin, mask, cache_k, cache_v, index, *, is_causal, deterministic):
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q_proj(x, deterministic=deterministic).reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
    k = self.k_proj(x, deterministic=deterministic).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
    v = self.v_proj(x, deterministic=deterministic).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache_k is not None:
      cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
      cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
      k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
    impl = attention_implementation(cfg)
    if is_causal and impl in (None, "xla"):
      out = causal_attention(q, k, v, None if mask is None else mask[:, 0, 0, :])
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                         implementation=impl)
    out = self.o_proj(out.reshape(b, t, -1), deterministic=deterministic)
    return out, cache_k, cache_v


class LlamaMLP(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    proj = _projection_factory(cfg, rngs)
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = proj("gate_proj", d, f, ("embed", "mlp"))
    self.up_proj = proj("up_proj", d, f, ("embed", "mlp"))
    self.down_proj = proj("down_proj", f, d, ("mlp", "embed"))

  def __call__(self, x, *, deterministic: bool = True):
    gate = self.gate_proj(x, deterministic=deterministic)
    up = self.up_proj(x, deterministic=deterministic)
    return self.down_proj(jax.nn.silu(gate) * up, deterministic=deterministic)


class LlamaDecoderLayer(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pdt)
    self.self_attn = LlamaAttention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pdt)
    self.mlp = LlamaMLP(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, mask, cache_k, cache_v, index, *, is_causal, deterministic):
    h, cache_k, cache_v = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_k, cache_v,
                                         index, is_causal=is_causal, deterministic=deterministic)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x), deterministic=deterministic)
    return x, cache_k, cache_v


class LlamaModel(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=_mesh.logical(nnx.initializers.normal(cfg.initializer_range),
                                             ("vocab", "embed")),
        rngs=rngs)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_hidden_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked(rngs):
        return LlamaDecoderLayer(cfg, rngs=rngs)
      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List([LlamaDecoderLayer(cfg, rngs=rngs)
                              for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype))


class LlamaForCausalLM(nnx.Module):
  """`model(ids)` -> float32 logits; `forward(...)` -> `LlmOutput` (logits, hidden, cache)."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.model = LlamaModel(config, rngs=rngs)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = LoraLinear(config.hidden_size, config.vocab_size, axes=("embed", "vocab"),
                                dtype=jnp.dtype(config.dtype),
                                param_dtype=jnp.dtype(config.param_dtype),
                                kernel_init=nnx.initializers.normal(config.initializer_range),
                                rngs=rngs)

  def __call__(self, input_ids: jax.Array) -> jax.Array:
    return self.forward(input_ids).logits

  def embed(self, input_ids: jax.Array) -> jax.Array:
    # FSDP gathers a weight on use: the table's width comes whole (vocab stays split
    # over "tensor"), so the looked-up rows are sharded by batch like every other
    # activation.  Looking up from the width-sharded table left them sharded by width,
    # which XLA could only fix by replicating them (an "involuntary full rematerialization").
    table = _mesh.constrain(self.model.embed_tokens.embedding[...], ("vocab", None))
    x = jnp.take(table.astype(jnp.dtype(self.config.dtype)), input_ids, axis=0)
    return _mesh.constrain(x, _mesh.ACTIVATIONS)

  def logits(self, hidden: jax.Array) -> jax.Array:
    if self.lm_head is None:
      return self.model.embed_tokens.attend(hidden).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
    shape = (batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    if cfg.scan_layers:  # one stacked array per k / v, scanned with the layers
      k = v = jnp.zeros((cfg.num_hidden_layers, *shape), dtype)
    else:
      k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
      v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
    return KVCache(k=k, v=v,
                   key_mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
                   next_position=jnp.zeros((batch,), jnp.int32))

  def forward(self, input_ids: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None,
              positions: jax.Array | None = None, attention_mask: jax.Array | None = None,
              cache: KVCache | None = None, deterministic: bool = True) -> LlmOutput:
    """Run the decoder on ids [B, T] or embeddings [B, T, D].

    attention_mask [B, T] is 1 for real tokens (left or right padding); positions
    default to the count of real tokens before each one (continuing from the cache).
    With a cache, the T new entries go to slots [index, index + T).
    """
    cfg = self.config
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(jnp.dtype(cfg.dtype))
    b, t, _ = x.shape
    real = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if positions is None:
      start = 0 if cache is None else cache.next_position[:, None]
      positions = jnp.maximum(start + jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1, 0)
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)

    if cache is None:
      # Causal via is_causal (cuDNN's fast path); key padding as a [B,1,1,T] mask.
      mask = None if attention_mask is None else real[:, None, None, :]
      if mask is not None and attention_implementation(cfg) == "cudnn":
        mask = jnp.broadcast_to(mask, (b, 1, t, t))  # cuDNN wants a full [T, S] bias
      is_causal, index = True, None
      new_key_mask = None
    else:
      index = cache.index
      new_key_mask = jax.lax.dynamic_update_slice(cache.key_mask, real, (0, index))
      slots = jnp.arange(cache.max_len)
      query_slots = index + jnp.arange(t)
      causal = slots[None, :] <= query_slots[:, None]  # [T, S]
      mask = causal[None, None] & new_key_mask[:, None, None, :]
      is_causal = False

    def run_layer(layer, x, cos, sin, mask, k, v, index):
      return layer(x, cos, sin, mask, k, v, index, is_causal=is_causal, deterministic=deterministic)

    remat = nnx.remat if cfg.remat else (lambda f: f)
    if cfg.scan_layers and cache is None:
      def stack_body(layer, x):
        return run_layer(layer, x, cos, sin, mask, None, None, index)[0]
      x = nnx.scan(remat(stack_body), in_axes=(0, nnx.Carry), out_axes=nnx.Carry)(
          self.model.layers, x)
    elif cfg.scan_layers:
      def cached_body(layer, x, k, v):
        return run_layer(layer, x, cos, sin, mask, k, v, index)
      x, new_k, new_v = nnx.scan(remat(cached_body), in_axes=(0, nnx.Carry, 0, 0),
                                 out_axes=(nnx.Carry, 0, 0))(self.model.layers, x, cache.k, cache.v)
    else:
      run_layer = remat(run_layer)
      new_k, new_v = [], []
      for i, layer in enumerate(self.model.layers):
        k, v = (None, None) if cache is None else (cache.k[i], cache.v[i])
        x, k, v = run_layer(layer, x, cos, sin, mask, k, v, index)
        new_k.append(k)
        new_v.append(v)
      new_k, new_v = tuple(new_k), tuple(new_v)
    hidden = self.model.norm(x)

    if cache is not None:
      cache = KVCache(k=new_k, v=new_v, key_mask=new_key_mask, index=index + t,
                      next_position=cache.next_position + real.sum(axis=1, dtype=jnp.int32))
    return LlmOutput(logits=self.logits(hidden), hidden_states=hidden, cache=cache)


def _projection_factory(cfg: LlamaConfig, rngs: nnx.Rngs):
  def make(name: str, din: int, dout: int, axes: tuple[str, str]) -> LoraLinear:
    lora = cfg.lora if cfg.lora is not None and cfg.lora.applies_to(name) else None
    return LoraLinear(din, dout, axes=axes, lora=lora, dtype=jnp.dtype(cfg.dtype),
                      param_dtype=jnp.dtype(cfg.param_dtype),
                      kernel_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs)
  return make
