"""llava-hf checkpoints (LlavaForConditionalGeneration) -> the learned aggregator's policy.

A llava-hf folder holds config.json and safetensors in one of two spellings:

  transformers < 4.52 (the Hub's llava-hf/*)   transformers >= 4.52
  vision_tower.vision_model.<CLIP>             model.vision_tower.<CLIP>
  multi_modal_projector.linear_{1,2}           model.multi_modal_projector.linear_{1,2}
  language_model.model.<LLaMA>                 model.language_model.<LLaMA>
  language_model.lm_head                       lm_head

(save_pretrained in 5.x writes the left column back.)  The CLIP tower is HF's
CLIPVisionModel; models/vit.py keeps OpenAI's names (FaRL's), so farl.hf_clip_source
renames it and fuses q/k/v into `in_proj` on read.  CLIP's `visual_projection` is
not part of a LLaVA and the policy's `proj` stays at its initial value (unused).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from fifa_jax.convert import farl, stream
from fifa_jax.convert import llama as llama_conv
from fifa_jax.convert.stream import ConversionError
from fifa_jax.models.llama import LlamaConfig
from fifa_jax.models.llava import LlavaConfig, LlavaPolicy
from fifa_jax.models.vit import ViTConfig

_PARTS = (  # (regex on the checkpoint's key, the part, the key inside that part)
  (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.*)$"), "vision"),
  (re.compile(r"^(?:model\.)?multi_modal_projector\.(.*)$"), "projector"),
  (re.compile(r"^(?:model\.language_model\.|language_model\.model\.)(.*)$"), "llm_model"),
  (re.compile(r"^(?:language_model\.)?(lm_head\..*)$"), "llm"),
)

def split_parts(source: stream.Source) -> tuple[stream.Source, stream.Source, stream.Source]:
  """(CLIP tower, projector, LLaMA) views with the part prefixes stripped."""
  views = []
  for part in ("vision", "projector", "llm"):
    def keep(key: str, part=part) -> str | None:
      for pattern, name in _PARTS:
        m = pattern.match(key)
        if m:
          if name == "llm_model":
            return "model." + m.group(1) if part == "llm" else None
          return m.group(1) if name == part else None
      return None
    views.append(source.rename(keep))
  unknown = [k for k in source.keys() if not any(p.match(k) for p, _ in _PARTS)]
  if unknown:
    raise ConversionError(f"not a LLaVA checkpoint: unexpected keys such as {unknown[:3]}")
  return tuple(views)


def config_from_hf(d: dict[str, Any], *, text_only: bool = False, dtype: str = "float32",
                   param_dtype: str = "float32") -> LlavaConfig:
  """A LlavaConfig from llava-hf's config.json."""
  if d.get("model_type") not in (None, "llava"):
    raise ConversionError(f"config.json: model_type {d.get('model_type')!r}, expected 'llava'")
  text = d.get("text_config") or {}
  if text.get("model_type", "llama") != "llama":
    raise ConversionError(f"config.json: the language model is {text['model_type']!r}; "
                          "only LLaMA/Vicuna LLaVAs are supported")
  llama = LlamaConfig.from_hf_dict(text, dtype=dtype, param_dtype=param_dtype)
  strategy = d.get("vision_feature_select_strategy", "default")
  if strategy not in ("default", "full"):
    raise ConversionError(f"config.json: vision_feature_select_strategy {strategy!r}")
  layer = d.get("vision_feature_layer", -2)
  if not isinstance(layer, int):
    raise ConversionError(f"config.json: vision_feature_layer {layer!r}: one layer is supported")
  if d.get("projector_hidden_act", "gelu") != "gelu" or not d.get("multimodal_projector_bias", True):
    raise ConversionError("config.json: only LLaVA's mlp2x_gelu projector (with biases) is supported")
  vision = None
  if not text_only:
    v = d.get("vision_config") or {}
    if v.get("hidden_act", "quick_gelu") != "quick_gelu":
      raise ConversionError(f"config.json: vision hidden_act {v['hidden_act']!r}; CLIP's quick_gelu "
                            "is supported")
    width = v.get("hidden_size", 1024)
    vision = ViTConfig(image_size=v.get("image_size", 336), patch_size=v.get("patch_size", 14),
                       width=width, layers=v.get("num_hidden_layers", 24),
                       heads=v.get("num_attention_heads", 16),
                       mlp_ratio=v.get("intermediate_size", 4 * width) // width,
                       output_dim=v.get("projection_dim", 768),
                       layer_norm_eps=v.get("layer_norm_eps", 1e-5), dtype=dtype,
                       param_dtype=param_dtype)
  return LlavaConfig(llama=llama, vision=vision, image_token_id=d.get("image_token_index", 32000),
                     vision_feature_layer=layer, keep_class_token=strategy == "full")


def entries(model: LlavaPolicy) -> list[stream.Entry]:
  out = stream.prefixed(llama_conv.entries(model.llm, lora=False), "llm.", ("llm",))
  if model.vit is not None:
    vit = [e for e in farl.entries(model.vit) if e.key not in ("proj",)]
    out += stream.prefixed(vit, "vision.", ("vit",))
    proj = stream.entries_for(model.projector, stream.torch_like)  # fc1/fc2 <- linear_1/linear_2
    proj = [dataclasses.replace(e, key=e.key.replace("fc", "linear_", 1)) for e in proj]
    out += stream.prefixed(proj, "projector.", ("projector",))
  return out


def _combined(vision: stream.Source | None, projector: stream.Source,
              llm: stream.Source) -> stream.Source:
  sources = [("llm.", llm)] + ([("vision.", vision), ("projector.", projector)] if vision else [])
  views = [s.rename(lambda k, p=p: p + k) for p, s in sources]
  return stream.chain(*views)


def load(path: str | Path, *, text_only: bool = False, param_dtype: str | None = None,
         dtype: str = "float32", progress: bool = False,
         seed: int = 0) -> tuple[LlavaConfig, LlavaPolicy]:
  """A llava-hf folder -> (config, policy); `text_only` keeps the LLaMA alone."""
  path = Path(path)
  cfg_file = (path if path.is_dir() else path.parent) / "config.json"
  if not cfg_file.exists():
    raise ConversionError(f"{path}: no config.json beside the weights (a llava-hf folder has one)")
  try:
    hf_cfg = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{cfg_file}: not valid JSON ({e})") from None
  config_from_hf(hf_cfg, text_only=text_only)  # a config we cannot build fails before any read
  raw = stream.open_source(path)
  try:
    vision, projector, llm = split_parts(raw)
    if param_dtype is None:
      param_dtype = str(llm.info["model.embed_tokens.weight"].dtype) \
          if "model.embed_tokens.weight" in llm.info else "float32"
    cfg = config_from_hf(hf_cfg, text_only=text_only, dtype=dtype, param_dtype=param_dtype)
    source = _combined(None if text_only else farl.hf_clip_source(vision), projector, llm)
    with stream.progress_bar(len(source.keys()), "llava", progress) as bar:
      loaded = stream.load(lambda: LlavaPolicy(cfg, rngs=nnx.Rngs(seed)), entries, source,
                           ignore=lambda k: cfg.llama.tie_word_embeddings and k == "llm.lm_head.weight",
                           progress=bar)
  finally:
    raw.close()
  return cfg, loaded.model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "chat_template.json")


def copy_tokenizer(src: str | Path, out: str | Path) -> list[str]:
  """Copy a llava-hf folder's tokenizer files beside the converted policy."""
  import shutil  # noqa: PLC0415

  src = Path(src) if Path(src).is_dir() else Path(src).parent
  copied = []
  for name in TOKENIZER_FILES:
    if (src / name).is_file():
      shutil.copy2(src / name, Path(out) / name)
      copied.append(name)
  return copied
