"""HF LLaMA / Vicuna (and the LLM inside GLaMM / LISA checkpoints) <-> fifa_jax.

The nnx model keeps HF's module names, so a key maps to a state path by splitting
on dots; linear weights are transposed (torch [out, in] vs kernel [in, out]) and
`embed_tokens.weight` is nnx.Embed's `embedding`.  LoRA adapters use PEFT's saved
names: `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r].

GLaMM / LISA checkpoints hold the LLM under `model.` (or `base_model.model.model.`
when saved through PEFT, with `.base_layer` in the names) beside the vision tower,
SAM and projectors: those other parts are skipped and reported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from fifa_jax.convert import stream
from fifa_jax.convert.stream import ConversionError, Entry
from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM
from fifa_jax.models.lora import BASE, LoraConfig, LoraLinear, lora_layers

log = logging.getLogger("fifa_jax.convert")

_LLM_KEY = re.compile(r"^(model\.(embed_tokens|layers|norm)\.|lm_head\.)")


def entries(model: LlamaForCausalLM, *, lora: bool = True) -> list[Entry]:
  """HF names of the base weights, plus PEFT names of the LoRA adapters if `lora`."""
  def name(path, owner):
    if path[-1] in ("lora_a", "lora_b"):
      if not lora:
        return None
      return stream.path_str(path[:-1]) + (".lora_A.weight" if path[-1] == "lora_a"
                                           else ".lora_B.weight"), stream.LINEAR
    return stream.torch_like(path, owner)
  return [dataclasses.replace(e, key=key, index=i)
          for e in stream.entries_for(model, name) for key, i in _layer_keys(model, e.key)]


def _layer_keys(model: LlamaForCausalLM, key: str) -> list[tuple[str, int | None]]:
  """[(key, None)], or with scanned layers, model.layers.* -> HF's model.layers.i.* for
  each slice i of the stacked leaf."""
  stacked = "model.layers."
  if not (model.config.scan_layers and key.startswith(stacked)):
    return [(key, None)]
  return [(key.replace(stacked, f"model.layers.{i}.", 1), i)
          for i in range(model.config.num_hidden_layers)]


def hf_key_to_path(key: str) -> tuple[tuple[str | int, ...], bool]:
  """'model.layers.0.self_attn.q_proj.weight' -> (path in the nnx state, transpose?)."""
  parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
  if parts[-1] != "weight":
    raise KeyError(f"unexpected LLaMA parameter {key!r}")
  parent = parts[-2]
  if parent == "embed_tokens":
    return tuple(parts[:-1]) + ("embedding",), False
  if isinstance(parent, str) and (parent.endswith("_proj") or parent == "lm_head"):
    return tuple(parts[:-1]) + ("kernel",), True
  return tuple(parts), False


def normalise_key(key: str) -> str:
  """GLaMM/LISA/PEFT spellings -> plain HF (+ PEFT adapter) names."""
  key = key.removeprefix("base_model.model.")
  key = key.replace(".base_layer.", ".")
  return re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.weight", key)


def _ignore(key: str) -> bool:
  return "rotary_emb" in key  # old checkpoints store inv_freq; it is recomputed


def _tied_extra(cfg: LlamaConfig):
  return lambda key: _ignore(key) or (cfg.tie_word_embeddings and key == "lm_head.weight")


def split_llm(source: stream.Source) -> tuple[stream.Source, list[str]]:
  """Normalised LLM keys, and the other parts of an MLLM checkpoint (skipped)."""
  skipped = []

  def keep(key: str) -> str | None:
    k = normalise_key(key)
    if _LLM_KEY.match(k):
      return k
    skipped.append(key)
    return None
  return source.rename(keep), skipped


VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def resize_vocab(source: stream.Source, vocab_size: int) -> tuple[stream.Source, dict[str, list[int]]]:
  """Grow the embedding and lm_head rows to `vocab_size` (Vicuna's 32000 -> FiFa's 32005).

  New rows are the mean of the checkpoint's rows, as transformers'
  `resize_token_embeddings(mean_resizing=...)` starts them: a new token then begins
  as an average token instead of a random direction.  Returns the view and
  {key: [old rows, new rows]} for what was grown.  A checkpoint with more rows than
  `vocab_size` is an error (its added tokens would be cut off).
  """
  grown = {}
  for key in VOCAB_KEYS:
    if key not in source:
      continue
    rows, dim = source.info[key].shape
    if rows > vocab_size:
      raise ConversionError(f"{key!r} has {rows} rows but the model's vocabulary is {vocab_size}: "
                            f"the checkpoint has more tokens than the config (set the LLM's "
                            f"vocab_size to at least {rows})")
    if rows < vocab_size:
      grown[key] = [rows, vocab_size]
  if not grown:
    return source, {}

  def read(key: str) -> np.ndarray:
    a = source.read(key)
    if key not in grown:
      return a
    mean = a.astype(np.float32).mean(axis=0, keepdims=True).astype(a.dtype)
    return np.concatenate([a, np.repeat(mean, vocab_size - a.shape[0], axis=0)])

  info = {k: (stream.TensorInfo((vocab_size, i.shape[1]), i.dtype) if k in grown else i)
          for k, i in source.info.items()}
  return stream.Source(info, read, source.groups, close=source.close,
                       metadata=source.metadata), grown


def summarise(keys: list[str], depth: int = 2) -> dict[str, int]:
  """{'model.vision_tower': 391, ...}: how many keys per leading component."""
  return dict(Counter(".".join(normalise_key(k).split(".")[:depth]) for k in keys))


# -- configs --------------------------------------------------------------------

def infer_config(source: stream.Source, num_attention_heads: int | None = None,
                 **overrides) -> LlamaConfig:
  """A config from tensor shapes when no config.json comes with the weights.

  Heads are not visible in shapes: by default hidden_size // 128 (every LLaMA size).
  """
  info = source.info
  if "model.embed_tokens.weight" not in info:
    raise ConversionError("no config.json and no 'model.embed_tokens.weight' to infer one from")
  vocab, hidden = info["model.embed_tokens.weight"].shape
  layers = 1 + max(int(k.split(".")[2]) for k in info if k.startswith("model.layers."))
  heads = num_attention_heads or max(1, hidden // 128)
  q_out = info["model.layers.0.self_attn.q_proj.weight"].shape[0]
  head_dim = q_out // heads
  kv = info["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
  inter = info["model.layers.0.mlp.gate_proj.weight"].shape[0]
  kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
            head_dim=head_dim, tie_word_embeddings="lm_head.weight" not in info)
  return LlamaConfig(**{**kw, **overrides})


def hf_config_dict(cfg: LlamaConfig, dtype: Any) -> dict[str, Any]:
  """A transformers `config.json` (read by v4 and v5) for `cfg`."""
  dt = str(stream.np_dtype(dtype))
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
      "num_attention_heads": cfg.num_attention_heads,
      "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
      "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_scaling": None, "max_position_embeddings": cfg.max_position_embeddings,
      "tie_word_embeddings": cfg.tie_word_embeddings, "initializer_range": cfg.initializer_range,
      "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
      "torch_dtype": dt, "dtype": dt,
  }


# -- import ---------------------------------------------------------------------

def _has_lora(source: stream.Source) -> list[str]:
  return [k for k in source.keys() if ".lora_A." in k or ".lora_B." in k]


def load_source(source: stream.Source, cfg: LlamaConfig, *, progress: bool = False,
                seed: int = 0) -> stream.Loaded:
  """Fill a model with `cfg` from normalised HF keys (adapters too when present)."""
  lora_keys = _has_lora(source)
  if lora_keys and cfg.lora is None:
    raise ConversionError(
        f"the checkpoint carries LoRA adapters (e.g. {lora_keys[0]!r}); pass lora=LoraConfig(...) "
        "with their rank and alpha, or merge them before converting")
  make = lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(seed))  # noqa: E731
  n = len(source.keys())
  with stream.progress_bar(n, "llama", progress) as bar:
    # Adapters absent from the checkpoint start as LoraLinear does (A random, B zero).
    return stream.load(make, lambda m: entries(m, lora=bool(lora_keys)), source,
                       ignore=_tied_extra(cfg), progress=bar)


def _source_dtype(source: stream.Source) -> str:
  key = "model.embed_tokens.weight"
  return str(source.info[key].dtype if key in source.info else np.dtype("float32"))


def load(path: str | Path, *, param_dtype: Any = None, dtype: Any = "float32",
         lora: LoraConfig | None = None, config: LlamaConfig | None = None,
         allow_pickle: bool = False, progress: bool = False,
         **overrides) -> tuple[LlamaConfig, LlamaForCausalLM, list[str]]:
  """`load_hf` plus the keys of other MLLM parts that were skipped."""
  path = Path(path)
  raw = stream.open_source(path, allow_pickle=allow_pickle)
  try:
    source, skipped = split_llm(raw)
    if config is None:
      cfg_file = (path if path.is_dir() else path.parent) / "config.json"
      kw = dict(overrides, lora=lora, dtype=str(stream.np_dtype(dtype)),
                param_dtype=str(stream.np_dtype(param_dtype or _source_dtype(source))))
      if cfg_file.exists():
        cfg = LlamaConfig.from_hf_dict(json.loads(cfg_file.read_text()), **kw)
      else:
        cfg = infer_config(source, **kw)
    else:
      cfg = config
    model = load_source(source, cfg, progress=progress).model
  finally:
    raw.close()
  if skipped:
    log.warning("skipped %d non-LLM tensors: %s", len(skipped), summarise(skipped))
  return cfg, model, skipped


def load_hf(path: str | Path, **kw) -> tuple[LlamaConfig, LlamaForCausalLM]:
  """An HF LLaMA/Vicuna folder (safetensors or .bin, sharded or not) or a GLaMM/LISA
  checkpoint -> (config, model); `model(ids [B, T] int32)` -> logits [B, T, V].

  `param_dtype` None keeps the checkpoint's dtype; `dtype` is the compute dtype;
  `lora` adds adapters (loaded when the checkpoint has PEFT-named ones, else fresh).
  """
  cfg, model, _ = load(path, **kw)
  return cfg, model


def load_hf_state_dict(model: nnx.Module, state_dict: Mapping[str, Any], *,
                       strict: bool = True) -> nnx.Module:
  """Copy an in-memory HF state dict (torch tensors or arrays) into `model` in place."""
  source, skipped = split_llm(stream.dict_source(state_dict))
  if strict and skipped:
    raise ConversionError(f"unexpected keys {skipped[:5]}")
  ents = entries(model, lora=bool(_has_lora(source)))
  if not strict:
    ents = [e for e in ents if e.key in source]
  stream.assign(model, ents, source, ignore=_tied_extra(model.config) if strict else lambda k: True)
  return model


# -- export ---------------------------------------------------------------------

def _merged(model: LlamaForCausalLM, tensors: list[stream.OutTensor]) -> list[stream.OutTensor]:
  """Base kernels with their adapter folded in (as lora.merge_lora), model untouched."""
  layers = {key: (m, i) for p, m in lora_layers(model)
            for key, i in _layer_keys(model, stream.path_str(p) + ".weight")}
  out = []
  for t in tensors:
    layer, i = layers.get(t.key, (None, None))
    if layer is None:
      out.append(t)
      continue

    def produce(layer: LoraLinear = layer, i=i, t=t) -> np.ndarray:
      k, a, b = layer.kernel[...], layer.lora_a[...], layer.lora_b[...]
      if i is not None:
        k, a, b = k[i], a[i], b[i]
      delta = a @ b * layer.lora.scale
      return np.ascontiguousarray(np.asarray(k + delta.astype(k.dtype)).T, t.dtype)
    out.append(stream.OutTensor(t.key, t.shape, t.dtype, produce))
  return out


def hf_tensors(model: LlamaForCausalLM, *, dtype: Any = None,
               merge_lora: bool = False) -> list[stream.OutTensor]:
  tensors = stream.export(model, entries(model, lora=False), dtype=dtype)
  return _merged(model, tensors) if merge_lora else tensors


def save_hf(model: LlamaForCausalLM, path: str | Path, *, dtype: Any = None,
            merge_lora: bool = False, max_shard_bytes: int = 5 * 2 ** 30,
            extra_config: Mapping[str, Any] | None = None, progress: bool = False) -> Path:
  """Write an HF folder (config.json + safetensors, sharded with an index past
  `max_shard_bytes`) that `LlamaForCausalLM.from_pretrained` loads.

  Adapters are left out unless `merge_lora` (then W + alpha/r A B is written);
  `fifa_jax.convert.peft.save_adapter` writes them in PEFT's format.
  """
  path = Path(path)
  if lora_layers(model) and not merge_lora:
    log.warning("LoRA adapters are not in the HF export; use merge_lora=True or peft.save_adapter")
  tensors = hf_tensors(model, dtype=dtype, merge_lora=merge_lora)
  out_dtype = tensors[0].dtype if tensors else np.dtype("float32")
  with stream.progress_bar(len(tensors), "llama -> hf", progress) as bar:
    stream.write_safetensors(path, tensors, max_shard_bytes=max_shard_bytes, progress=bar)
  cfg = {**hf_config_dict(model.config, out_dtype), **(extra_config or {})}
  (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
  return path


def to_hf_state_dict(model: nnx.Module, *, merge_lora: bool = False) -> dict[str, np.ndarray]:
  """The base weights under HF names and layouts (numpy arrays, in memory)."""
  return {t.key: t.produce() for t in hf_tensors(model, merge_lora=merge_lora)}


__all__ = ["BASE", "entries", "hf_config_dict", "hf_key_to_path", "infer_config", "load",
           "load_hf", "load_hf_state_dict", "normalise_key", "save_hf", "split_llm",
           "to_hf_state_dict"]
